"""Importing Keras inside a backend, with its environment set first.

TensorFlow fixes its thread pools at its first op and refuses changes afterwards, and Keras writes
``~/.keras`` on first use (the server's home may not be writable), so both are settled here, before
anything else touches TensorFlow. Every madlib_dl module gets Keras through :func:`keras`.

PostgreSQL's JIT (llvmjit, which loads the system's LLVM with RTLD_GLOBAL) and TensorFlow (which
carries its own LLVM) crash a backend with SIGSEGV when both load, in either order (measured on
PostgreSQL 15 + TF 2.21), and a crashed backend makes the postmaster restart every session. Loading
llvmjit first and TensorFlow with RTLD_DEEPBIND (its own LLVM symbols bind to its own copy) works in
both directions, JIT queries and training alike; so inside a server llvmjit is loaded before TF. A
worker session (opened by the driver with JIT off, running only the driver's statements) never loads
llvmjit at all, and starts TensorFlow without the optional modules Keras would import for nothing.
"""

from __future__ import annotations

import contextlib
import os
import stat
import sys
import tempfile

from madlib_dl.errors import NotSupported, UnsafeEnvironment

_threads: int | None = None


def _environment() -> None:
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ chatter out of the server log
    if "KERAS_HOME" not in os.environ:  # one the server's administrator set is theirs to keep private
        home = os.path.join(tempfile.gettempdir(), f"madlib_dl-keras-{os.getuid()}")
        private_directory(home)
        os.environ["KERAS_HOME"] = home


def private_directory(path: str) -> None:
    """Create ``path`` as a directory only this OS user can use (mode 0700), or check that the one there
    is exactly that: a directory, not a symbolic link, owned by this user, closed to everyone else.
    Keras reads its configuration (keras.json: float type, image layout...) from KERAS_HOME, and the path
    is predictable (under /tmp), so another local user could plant one there, or a link to elsewhere.
    In a sticky /tmp, a directory this user owns cannot be renamed or replaced by others afterwards."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError as error:
        raise UnsafeEnvironment(f"KERAS_HOME: cannot create {path}: {error.strerror}",
                                hint="Set KERAS_HOME in the server's environment to a private directory.") from None
    try:  # O_NOFOLLOW: a symbolic link (planted or not) is refused, never followed
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as error:
        found = "a symbolic link" if os.path.islink(path) else f"not a directory ({error.strerror})"
        raise _unsafe(path, found) from None
    try:
        info = os.fstat(fd)
    finally:
        os.close(fd)
    if info.st_uid != os.getuid():
        raise _unsafe(path, f"owned by uid {info.st_uid}, not by the server's OS user (uid {os.getuid()})")
    if stat.S_IMODE(info.st_mode) & 0o077:
        raise _unsafe(path, f"open to other users (mode {stat.S_IMODE(info.st_mode):04o}, expected 0700)")


def _unsafe(path: str, found: str) -> UnsafeEnvironment:
    return UnsafeEnvironment(
        f"KERAS_HOME: {path} is {found}; Keras would read its configuration from it, so madlib_dl will not use it",
        hint=f"The server's administrator: remove {path} (madlib_dl creates it again, private), or set KERAS_HOME "
             "in the server's environment to a directory only the server's OS user can use.")


def _llvmjit_loaded() -> bool:
    try:
        with open("/proc/self/maps") as maps:
            return "llvmjit" in maps.read()
    except OSError:
        return False


def _load_postgres_jit_first() -> None:
    """Inside a backend whose server has JIT: run one tiny JIT-compiled query, so llvmjit is loaded
    before TensorFlow. The settings it changes are transaction-local and put back at once."""
    try:
        import plpy
    except ImportError:
        return  # a client process: no PostgreSQL JIT here
    if _llvmjit_loaded():
        return
    old = plpy.execute("SELECT current_setting('jit') AS jit, current_setting('jit_above_cost') AS cost")[0]
    plpy.execute("SELECT set_config('jit', 'on', true), set_config('jit_above_cost', '0', true)")
    try:
        if plpy.execute("SELECT pg_jit_available() AS available")[0]["available"]:
            plpy.execute("SELECT count(*) FROM generate_series(1, 2) g WHERE g > 0")
    finally:
        plan = plpy.prepare("SELECT set_config('jit', $1, true), set_config('jit_above_cost', $2, true)",
                            ["text", "text"])
        plpy.execute(plan, [old["jit"], old["cost"]])


def _in_server_with_jit_off() -> bool:
    try:
        import plpy
    except ImportError:
        return False
    return plpy.execute("SELECT current_setting('jit') = 'off' AS off")[0]["off"]


# Imported by Keras only for its scikit-learn wrappers (keras.wrappers), which training never uses:
# hidden while a worker imports TensorFlow, they cost ~0.3 s and ~60 MiB per worker (measured).
WORKER_SKIPPED_MODULES = ("sklearn",)


def _import_tensorflow(worker_session: bool) -> None:
    _environment()
    lean = worker_session and _in_server_with_jit_off()
    if not lean:
        _load_postgres_jit_first()
    hidden = [m for m in WORKER_SKIPPED_MODULES if m not in sys.modules] if lean else []
    for name in hidden:
        sys.modules[name] = None  # makes ``import sklearn`` raise ImportError, which Keras handles
    flags = sys.getdlopenflags()
    sys.setdlopenflags(flags | os.RTLD_DEEPBIND)
    try:
        import tensorflow  # noqa: F401
    finally:
        sys.setdlopenflags(flags)
        for name in hidden:
            sys.modules.pop(name, None)


@contextlib.contextmanager
def _start_up_lines_hidden():
    """TensorFlow's start-up lines on stderr (absl's "All log messages before absl::InitializeLog()" and the
    oneDNN INFO line, twice per process) ignore TF_CPP_MIN_LOG_LEVEL since TensorFlow moved to absl logging,
    and land in the server log once per worker: stderr goes to /dev/null while TensorFlow loads. An import
    error still raises; TF_CPP_MIN_LOG_LEVEL=0 in the environment shows the lines."""
    if os.environ.get("TF_CPP_MIN_LOG_LEVEL") == "0":
        yield
        return
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def keras(threads: int | None = None, worker_session: bool = False):
    """The keras module, configured. ``threads`` sets TensorFlow's intra- and inter-op pools; it takes
    effect only before this backend's first TensorFlow op, so a different count later is an error.
    ``worker_session``: this backend is a worker session the driver opened; with its JIT off, TensorFlow
    starts without loading llvmjit first (the session never runs a JIT query)."""
    global _threads
    if "tensorflow" not in sys.modules:
        with _start_up_lines_hidden():
            _import_tensorflow(worker_session)
            import keras  # noqa: F401
    import keras as keras_module
    import tensorflow as tf

    if threads and threads != _threads:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(threads)
        except RuntimeError:
            raise NotSupported(
                f"TensorFlow already runs with {_threads or 'its default number of'} threads in this session; "
                f"{threads} threads can only be set before its first operation (use a new session)") from None
        _threads = threads
    return keras_module


def tensorflow():
    keras()
    import tensorflow as tf

    return tf


def started() -> bool:
    """Whether TensorFlow is already loaded in this process (its device and thread choices are fixed)."""
    return "tensorflow" in sys.modules


def limit_gpu_memory(memory_limit_mib: int) -> None:
    """Cap this process's share of its (one visible) GPU; must run before TensorFlow's first GPU op."""
    tf = tensorflow()
    for gpu in tf.config.list_physical_devices("GPU"):
        tf.config.set_logical_device_configuration(
            gpu, [tf.config.LogicalDeviceConfiguration(memory_limit=int(memory_limit_mib))])
