"""madlib_dl's settings: custom GUCs under ``madlib_dl.`` that users change with SET, ALTER DATABASE or
postgresql.conf, no restart needed. This module is their one definition: a backend's first madlib_dl
call registers them (:func:`register`, through the C library) with these ranges and defaults, so SHOW
prints them and SET refuses a bad value. Values are also checked when a function reads them (a client
tool's connection, where nothing is registered), so a bad value gives an error naming the setting. The
DBA caps (``superuser_only``, madlib_dl.max_*) are superuser-only settings; the settings they cap are
clamped to them when read."""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass
from typing import Callable

from madlib_dl.errors import InvalidArgument

GIB = 1 << 30
DECIMAL = re.compile(r"\s*[+-]?(0|[1-9][0-9]*)\s*")


def machine_segments() -> int:
    """Default number of virtual segments: one per CPU this server may use, but at most one per
    2 GiB of memory (each training worker holds TensorFlow and its segment's data)."""
    cpus = cpu_count()
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return max(1, min(cpus, memory // (2 * GIB)))


@dataclass(frozen=True)
class Setting:
    name: str
    default: Callable[[], int]
    minimum: int
    maximum: int
    meaning: str
    # A DBA's cap: superuser-only (PGC_SUSET), so that no plain role can set or raise it. Its name starts
    # with madlib_dl.max_ and it is listed, with the same range and default, in src/madlib_dl.c's CAPS,
    # which decides the context (a plain role may call the C function that registers settings).
    superuser_only: bool = False
    # The cap this setting is clamped to when read (read() returns the smaller); SHOW shows what was set.
    cap: "Setting | None" = None


NUM_SEGMENTS = Setting("madlib_dl.num_segments", machine_segments, 1, 1024,
                       "virtual segments a packed table is spread over with distribution_rules 'all_segments'")
SHUFFLE_SEED = Setting("madlib_dl.shuffle_seed", lambda: 0, -(2**63), 2**63 - 1,
                       "seed of the training preprocessor's shuffle (same seed and data: same packed table)")

FIT_SEED = Setting("madlib_dl.fit_seed", lambda: 0, -(2**63), 2**63 - 1,
                   "seed of fit_multiple's and fit's schedule, initial weights and Keras shuffling")
WORKER_THREADS = Setting("madlib_dl.worker_threads", lambda: 0, 0, 1024,
                         "TensorFlow threads per training worker; 0: chosen per run from the models and the "
                         "server's CPUs (training.parallelism)")
TRAINING_WORKERS = Setting("madlib_dl.training_workers", lambda: 0, 0, 1024,
                           "background workers a training run uses (each serves one or more segments); 0: chosen "
                           "per run from the models, the segments and the server's CPUs (training.parallelism)")


def memory_default_mib() -> int:
    """Half of the machine's memory: the rest is left to PostgreSQL, TensorFlow itself and other work."""
    return max(1, os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (2 << 20))


def machine_memory_mib() -> int:
    return max(1, min(2**31 - 1, os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1 << 20)))


# DBA caps (superuser_only): what a role's settings may spend of the server's shared resources.
MAX_MEMORY_BUDGET_MB = Setting("madlib_dl.max_memory_budget_mb", machine_memory_mib, 1, 2**31 - 1,
                               "the DBA's cap on madlib_dl.memory_budget_mb (MiB); default: the machine's memory",
                               superuser_only=True)
MAX_WORKER_IDLE_TIMEOUT = Setting("madlib_dl.max_worker_idle_timeout", lambda: 600, 0, 86400,
                                  "the DBA's cap on madlib_dl.worker_idle_timeout (seconds)", superuser_only=True)
MAX_RECORDER_IDLE_TIMEOUT = Setting("madlib_dl.max_recorder_idle_timeout", lambda: 86400, 1, 7 * 86400,
                                    "seconds a training run's progress recorder waits for its next snapshot before "
                                    "it ends, giving its background worker slot back (progress and checkpoints stop)",
                                    superuser_only=True)

MEMORY_BUDGET_MB = Setting("madlib_dl.memory_budget_mb", memory_default_mib, 1, 2**31 - 1,
                           "MiB that a training run's cached data and models (or a buffer being packed) may take "
                           "on this machine (at most madlib_dl.max_memory_budget_mb)", cap=MAX_MEMORY_BUDGET_MB)


def max_model_memory_default_mib() -> int:
    """A quarter of the machine's memory: one model being built must leave room for the rest."""
    return max(1, os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (4 << 20))


# A DBA cap of its own (no user setting under it): what building one model may take in a backend (about 3x
# its weights), checked from the architecture's JSON before Keras allocates anything (keras_runtime.arch_size).
MAX_MODEL_MEMORY_MB = Setting("madlib_dl.max_model_memory_mb", max_model_memory_default_mib, 1, 2**31 - 1,
                              "MiB that building one model may take in a backend (about 3 times its weights): "
                              "load_keras_model, predict and training runs refuse larger architectures",
                              superuser_only=True)

WORKER_IDLE_TIMEOUT = Setting("madlib_dl.worker_idle_timeout", lambda: 60, 0, 86400,
                              "seconds a session's background workers wait for its next call after a run (0: they "
                              "end with each call; at most madlib_dl.max_worker_idle_timeout)",
                              cap=MAX_WORKER_IDLE_TIMEOUT)

# The DBA's cap (superuser-only once settings have DBA caps); src/madlib_dl.c reads it at each launch
# (DEFAULT_WORKERS_PER_ROLE there when unregistered) and counts the role's workers across its sessions.
MAX_WORKERS_PER_ROLE = Setting("madlib_dl.max_workers_per_role", lambda: 6, 1, 1024,
                               "background workers (training workers and progress recorders) one role may have at "
                               "once, across all its sessions; a launch beyond it asks an idle worker of the role "
                               "to give way, else gets none", superuser_only=True)

# A BYTEA value and a libpq message hold at most 1 GiB: a larger model state travels in pieces.
NODE_CALL_MB = Setting("madlib_dl.node_call_mb", lambda: 512, 1, 768,
                       "MiB of model state one call to a Citus worker node carries; a larger state (weights and "
                       "optimizer state) travels to and from the node in pieces of this size")

CHECKPOINT_EVERY = Setting("madlib_dl.checkpoint_every", lambda: 0, 0, 1_000_000,
                           "a training run saves a checkpoint every this many iterations (automl: model iterations; "
                           "0: by time only)")
CHECKPOINT_MINUTES = Setting("madlib_dl.checkpoint_minutes", lambda: 10, 0, 10080,
                             "a training run saves a checkpoint at the end of an iteration this many minutes after "
                             "it began or last saved (0: by count only)")

ALL = (NUM_SEGMENTS, SHUFFLE_SEED, FIT_SEED, WORKER_THREADS, TRAINING_WORKERS, MEMORY_BUDGET_MB, WORKER_IDLE_TIMEOUT, NODE_CALL_MB, CHECKPOINT_EVERY,
       CHECKPOINT_MINUTES, MAX_MODEL_MEMORY_MB, MAX_WORKERS_PER_ROLE, MAX_MEMORY_BUDGET_MB, MAX_WORKER_IDLE_TIMEOUT,
       MAX_RECORDER_IDLE_TIMEOUT)
CAPS = tuple(setting for setting in ALL if setting.superuser_only)  # each in src/madlib_dl.c's CAPS too


@dataclass(frozen=True)
class Choice:
    name: str
    choices: tuple[str, ...]  # the first is the default
    meaning: str


EXECUTOR = Choice("madlib_dl.executor", ("auto", "workers", "in_process"),
                  "how training and evaluation run: 'auto' (background workers, else in this session with a "
                  "NOTICE), 'workers' (background workers or an error), 'in_process' (this session, one segment "
                  "at a time)")

PROGRESS = Choice("madlib_dl.progress", ("on", "off"),
                  "'on': a training run's progress is visible from other sessions in fit_progress (one more "
                  "background worker records it); 'off': it is not")

TRAINING_METRICS = Choice("madlib_dl.training_metrics", ("running", "evaluate", "running_only"),
                          "where a training run's training loss and metrics come from: 'running' (each iteration's "
                          "hops' running means, as Keras' fit reports an epoch; the final iteration's from an "
                          "evaluation of the final model on the training table, as MADlib's), 'evaluate' (MADlib's: "
                          "an evaluation on the training table at every metrics iteration), 'running_only' (running "
                          "means only: no pass over the training table besides training)")

PACKED_TABLE_PLACEMENT = Choice(
    "madlib_dl.packed_table_placement", ("auto", "local", "citus_nodes"),
    "where the preprocessors put a packed table: 'auto' ('citus_nodes' on a Citus coordinator with worker "
    "nodes, else 'local'), 'local' (a table of this server), 'citus_nodes' (a Citus distributed table, one "
    "shard per segment over the worker nodes, a validation table's segments on its training table's nodes)")

CHOICES = (EXECUTOR, PROGRESS, TRAINING_METRICS, PACKED_TABLE_PLACEMENT)


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def parse_int(setting: Setting, text: str | None) -> int:
    """The setting's value from its text; unset or empty means the default."""
    if text is None or not text.strip():
        return setting.default()
    # Plain decimal only: what PostgreSQL's integer settings and the C check of the 64-bit ones read
    # alike (Python's int() would also take '1_000', and PostgreSQL reads '010' as octal).
    value = int(text) if DECIMAL.fullmatch(text) else None
    if value is None or not setting.minimum <= value <= setting.maximum:
        raise InvalidArgument(f"setting {setting.name}: expected an integer from {setting.minimum} to "
                              f"{setting.maximum}, got {text!r} (RESET {setting.name} for the default)")
    return value


def read(db, setting: Setting) -> int:
    """The setting's value in force: what the session set, clamped to the DBA's cap if it has one
    (silently: an error that a capped value causes names the cap, see capped_note)."""
    rows = db.execute("SELECT current_setting($1, true) AS value", [setting.name], ["text"])
    value = parse_int(setting, rows[0]["value"])
    return value if setting.cap is None else min(value, read(db, setting.cap))


def capped_note(db, setting: Setting) -> str:
    """' (capped at N by madlib_dl.max_...: a superuser's setting)' when the cap lowers what the session
    set, else ''; for messages that name the value read()."""
    if setting.cap is None:
        return ""
    cap = read(db, setting.cap)
    if parse_int(setting, read_text(db, setting.name)) <= cap:
        return ""
    return f" (capped at {cap} by {setting.cap.name}, a superuser's setting)"


@contextlib.contextmanager
def naming_the_cap(db, setting: Setting):
    """An InvalidArgument raised inside (about ``setting``'s value) says so when the DBA's cap lowered
    what the session set: raising the setting would not help."""
    try:
        yield
    except InvalidArgument as error:
        note = capped_note(db, setting)
        if not note:
            raise
        hint = (f"{setting.cap.name} is a superuser's setting (ALTER ROLE or ALTER DATABASE ... SET "
                f"{setting.cap.name})" + (f"; otherwise: {error.hint}" if error.hint else ""))
        raise InvalidArgument(f"{error}{note}", hint=hint) from None


def read_text(db, name: str) -> str | None:
    """A setting's text; None when unset or empty."""
    rows = db.execute("SELECT current_setting($1, true) AS value", [name], ["text"])
    value = rows[0]["value"]
    return value if value and value.strip() else None


def read_choice(db, setting: Choice) -> str:
    value = read_text(db, setting.name)
    if value is None:
        return setting.choices[0]
    if value.strip().lower() not in setting.choices:
        raise InvalidArgument(f"setting {setting.name}: expected one of {', '.join(setting.choices)}, got {value!r} "
                              f"(RESET {setting.name} for the default)")
    return value.strip().lower()


INT32 = (-(2**31), 2**31 - 1)


def register(db, schema: str) -> None:
    """Register every setting in this backend as a real custom setting (once per backend: the C
    function skips a name it has), then reserve the prefix, so that a misspelt madlib_dl.* name is an
    error instead of a new placeholder."""
    schema = db.quote_ident(schema)
    define = (f"SELECT {schema}.internal_define_setting($1, $2, $3, $4, $5, $6, $7)",
              ["text", "text", "text", "int8", "int8", "text[]", "text"])
    # Any C function loads the library, whose _PG_init installs the hook that quiets the errors below.
    db.execute(f"SELECT {schema}.internal_client_connected()")
    # A value SET before this backend registered the settings was kept as a placeholder; registering
    # would drop a bad one with only a WARNING and run with the default instead: refuse it as reading it
    # would (the same error, naming the setting), until it is fixed or RESET.
    for setting in ALL:
        parse_int(setting, read_text(db, setting.name))
    for choice in CHOICES:
        read_choice(db, choice)
    # The C function makes the DBA caps (madlib_dl.max_*, its CAPS) superuser-only whatever it is passed:
    # a cap's value that a plain role SET before this call is then dropped, with PostgreSQL's WARNING.
    for setting in ALL:
        kind = "integer" if INT32[0] <= setting.minimum and setting.maximum <= INT32[1] else "bigint"
        db.execute(define[0], [setting.name, kind, str(setting.default()), setting.minimum, setting.maximum, [],
                               setting.meaning], define[1])
    for choice in CHOICES:
        db.execute(define[0], [choice.name, "enum", choice.choices[0], 0, 0, list(choice.choices), choice.meaning],
                   define[1])
    db.execute(f"SELECT {schema}.internal_reserve_settings()")
