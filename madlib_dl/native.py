"""The C library's plain entry points (src/madlib_dl.c), called in this backend's process through ctypes.

They are not SQL functions: no SQL caller can reach them, and only code running in madlib_dl's own
Python (plpython3u is untrusted: no plain role writes Python) can. That is what makes them safe as
credentials: arming a launch (the launcher starts a worker only for the token armed last), a worker's
token (internal_worker_serve serves only inside a madlib_dl background worker, and only the token its
launcher put in bgw_extra), and a value handed over as a memory file's range (internal_take_file reads
only what was armed, under its token, once). None of them can raise a PostgreSQL error (which would unwind
through Python's frames); each reads or writes a few bytes of the library's memory.

PostgreSQL loads an extension's library with RTLD_GLOBAL, so its symbols are found in the process's
global scope once it is loaded: in a session, at its first madlib_dl call (session.begin registers the
settings through it); in a worker, before anything else runs.
"""

from __future__ import annotations

import ctypes
import functools

from madlib_dl.errors import MadlibDLError

# madlib_dl_launch_refusal's answers: why this backend starts no worker.
REFUSALS = {
    1: "it was called inside a security-restricted operation (an index expression or materialized view run by "
       "ANALYZE, VACUUM, REINDEX, CREATE INDEX or REFRESH MATERIALIZED VIEW), whose restrictions a background "
       "worker would not have",
    2: "it was called inside a SECURITY DEFINER function (or another change of the current user that the "
       "session cannot undo), whose identity a background worker would not have",
    3: "it was called by autovacuum",
    4: "it was called inside a madlib_dl background worker",
    5: "it was called with a security context that a background worker would not have",
}
REFUSAL_HINT = "background workers start only for a call made directly in a session (not from index expressions, " \
               "materialized views, SECURITY DEFINER functions or autovacuum)"


class LibraryMissing(MadlibDLError):
    sqlstate = "58P01"  # undefined_file


@functools.lru_cache(maxsize=1)
def _library():
    library = ctypes.CDLL(None)  # the process's global scope (dlopen(NULL))
    try:
        library.madlib_dl_arm_launch.argtypes = [ctypes.c_char_p]
        library.madlib_dl_arm_launch.restype = ctypes.c_int
        library.madlib_dl_launch_refusal.argtypes = []
        library.madlib_dl_launch_refusal.restype = ctypes.c_int
        library.madlib_dl_caller.argtypes = [ctypes.POINTER(ctypes.c_uint32), ctypes.POINTER(ctypes.c_uint32),
                                             ctypes.POINTER(ctypes.c_int)]
        library.madlib_dl_caller.restype = None
        library.madlib_dl_worker_token.argtypes = []
        library.madlib_dl_worker_token.restype = ctypes.c_char_p
        library.madlib_dl_take_give_way_request.argtypes = []
        library.madlib_dl_take_give_way_request.restype = ctypes.c_int
    except AttributeError:
        raise LibraryMissing("the C library madlib_dl is not loaded in this backend, or is an older version",
                             hint="Run ALTER EXTENSION madlib_dl UPDATE, then reconnect.") from None
    return library


def arm_launch(token: str) -> None:
    """Allow the launcher one launch, of exactly this token."""
    if _library().madlib_dl_arm_launch(token.encode()) != 0:
        raise MadlibDLError(f"token: expected at most 115 bytes, got {len(token.encode())}")


def launch_refusal() -> str | None:
    """Why this backend may start no background worker (its caller's identity is one a worker could not
    keep), or None."""
    code = _library().madlib_dl_launch_refusal()
    return REFUSALS.get(code, f"the launcher refuses ({code})") if code else None


def caller() -> tuple[int, int, int]:
    """(session user, current user, security context) of this backend, as PostgreSQL itself holds them."""
    session, current, context = ctypes.c_uint32(), ctypes.c_uint32(), ctypes.c_int()
    _library().madlib_dl_caller(ctypes.byref(session), ctypes.byref(current), ctypes.byref(context))
    return session.value, current.value, context.value


def cancel_pending() -> bool:
    """Whether a cancel, statement timeout or terminate waits for this backend's next interrupt check,
    read without running one. On a Citus coordinator whose transaction has used the worker nodes, the
    error an SPI call raises for it was seen to escape past every Python handler (most likely Citus's
    abort of PL/Python's subtransaction raises it again): code that holds other processes or connections
    lets them go first."""
    process = ctypes.CDLL(None)
    return any(ctypes.c_int.in_dll(process, flag).value for flag in ("QueryCancelPending", "ProcDiePending"))


def worker_token() -> str | None:
    """The token this background worker was started with; None outside a madlib_dl background worker."""
    token = _library().madlib_dl_worker_token()
    return None if token is None else token.decode()


def take_give_way_request() -> bool:
    """Whether another session's launch asked this worker to give its slot up since the last look."""
    return bool(_library().madlib_dl_take_give_way_request())


_file_entries = None


def _file_handoff():
    """The entry points of a value handed over as a range of a memory file (internal_take_file); None
    while the library loaded in this process has none (not loaded yet, or an older build: the caller
    then hands the bytes over)."""
    global _file_entries
    if _file_entries is None:
        library = ctypes.CDLL(None)
        try:
            arm, forget = library.madlib_dl_hand_over_file, library.madlib_dl_forget_file
        except AttributeError:
            return None
        arm.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
        arm.restype = ctypes.c_int
        forget.argtypes = []
        forget.restype = None
        _file_entries = arm, forget
    return _file_entries


def file_handoff_available() -> bool:
    return _file_handoff() is not None


def hand_over_file(token: str, fd: int, start: int, size: int) -> None:
    """Let the next internal_take_file(token) of this backend read ``size`` bytes of the memory file ``fd``
    from ``start`` (once); what was armed before is forgotten."""
    if _file_handoff()[0](token.encode(), fd, start, size) != 0:
        raise MadlibDLError(f"internal: a value of {size} bytes at {start} of file {fd} cannot be handed over")


def forget_file() -> None:
    _file_handoff()[1]()
