"""What a driver asks of a segment's backend, and what it gets back: one dataclass per request, the one
definition of its arguments for the driver, the channel and the segment runtime alike.

On the channel a request is its class name and fields as a JSON header; fields holding bytes (model
weights, optimizer state) travel as raw blobs beside it. Only the classes listed in ``TYPES`` can be
decoded, and each field is checked against its annotation's kind, so a message can never make the
receiver build anything else.

A run's constants (its tables and every model's architecture and compile and fit parameters) are
registered once per backend with :class:`BeginRun`; hops then name models by ``mst_key``.
"""

from __future__ import annotations

import dataclasses
import mmap
import typing
from dataclasses import dataclass, field

from madlib_dl.preprocess import joined

BLOB_TYPES = (bytes, bytearray, memoryview, mmap.mmap)  # mmap: the channel's shared blobs


@dataclass(frozen=True)
class ObjectTable:
    """A table of custom functions (custom_functions.py) as the caller's session resolved it: by name,
    valid only while the name still means this relation (OID). Every backend checks it before use."""
    schema: str
    name: str
    oid: int
    text: str = ""  # as the caller typed it, for messages

    def sql(self, db) -> str:
        return f"{db.quote_ident(self.schema)}.{db.quote_ident(self.name)}"

    def __str__(self) -> str:
        return self.text or f"{self.schema}.{self.name}"


@dataclass(frozen=True)
class ModelConstants:
    model_arch: str
    compile_params: str
    fit_params: str | None = None
    object_table: ObjectTable | None = None  # where the custom functions its compile_params name are

    def __post_init__(self):
        if isinstance(self.object_table, dict):  # as decoded from a message
            object.__setattr__(self, "object_table", ObjectTable(**self.object_table))
        if self.object_table is not None and not isinstance(self.object_table, ObjectTable):
            raise TypeError("object_table: expected an ObjectTable")


@dataclass(frozen=True)
class TableRef:
    """A packed table as a backend reads it: by the schema and name the caller's session resolved, and
    only while that name still means the relation (OID) the caller resolved."""
    schema: str
    name: str
    dependent: str
    independent: str
    oid: int
    distributed: bool = False  # a Citus distributed table: its rows come through this server (server._pulled)
    keyed: bool = True         # False: no __dist_key__ column (MADlib's layout on PostgreSQL): one segment, 0
    # Every dependent and independent variable's column (multi-io); empty: just ``dependent``/``independent``
    dependents: tuple = ()
    independents: tuple = ()

    def __post_init__(self):
        for name, first in (("dependents", self.dependent), ("independents", self.independent)):
            columns = tuple(getattr(self, name)) or (first,)  # a message gives lists
            if not all(isinstance(c, str) for c in columns) or columns[0] != first:
                raise TypeError(f"{name}: expected column names, {first!r} first")
            object.__setattr__(self, name, columns)

    @property
    def segment_sql(self) -> str:
        """The SQL expression giving a row's segment."""
        return "__dist_key__" if self.keyed else "0"

    def data_sql(self, quote_ident) -> tuple[str, str, str, str]:
        """The aggregates' data arguments for a row of this table: labels, features, and their shapes."""
        y, ys = joined.data_sql(quote_ident, self.dependents)
        x, xs = joined.data_sql(quote_ident, self.independents)
        return y, x, ys, xs


@dataclass(frozen=True)
class Start:
    """Set up a fresh worker before TensorFlow starts: which GPU, how many threads. Not whose privileges:
    a worker is the caller's current role from its start (src/madlib_dl.c), never from a message."""
    threads: int | None
    cuda_visible_devices: str | None
    memory_limit_mib: int | None
    worker_session: bool = True      # a backend the driver started (JIT off): see tf_setup.keras
    host_share: int | None = None    # threads None: this host's CPUs divided among this many of the run's sessions


@dataclass(frozen=True)
class BeginRun:
    run_id: str
    schema: str                                  # the extension's schema
    tables: dict = field(default_factory=dict)   # name ('train', 'validation', 'test') -> TableRef
    models: dict = field(default_factory=dict)   # mst_key -> ModelConstants


@dataclass(frozen=True)
class CountRows:
    """Buffers and examples per segment of a table, as this backend sees it (committed data only for a
    worker), read with a short lock timeout."""
    table: TableRef


@dataclass(frozen=True)
class InitialWeights:
    model_arch: str
    seed: int


@dataclass(frozen=True)
class Fit:
    """One hop: train model ``mst_key`` on ``segment`` of the run's table ``table``."""
    run_id: str
    table: str
    segment: int
    mst_key: int
    seed: int                      # seeds the hop's shuffling and random layers
    expected_images: int
    use_caching: bool
    read_table: bool               # False: the examples are cached here already
    is_final_call: bool            # the run's last call on this segment drops its cache
    weights: bytes = b""           # MADlib's format
    optimizer_state: bytes | None = None  # None: a fresh optimizer
    kind: str = "train"
    overwrite_state: bool = False  # the hop may write its result over the state it was sent (the driver
                                   # has no other use for it): no new buffers for a large state
    constants: ModelConstants | None = None  # a model begun after BeginRun (AutoML): registered here first


@dataclass(frozen=True)
class Evaluate:
    run_id: str
    table: str
    segment: int
    kind: str                      # which cache entry the examples belong to ('train', 'validation', 'test')
    mst_key: int
    expected_images: int
    use_caching: bool
    read_table: bool
    is_final_call: bool
    weights: bytes = b""
    constants: ModelConstants | None = None


@dataclass(frozen=True)
class Record:
    """Write a run's progress snapshot (training.progress) in this backend's own transaction; ``final``:
    the run is over, remove its rows. ``role``: the OID of the run's role (its current user), whose rows
    these are; the recorder acts as that role and writes nothing else."""
    schema: str
    role: int
    run_id: str
    run_values: dict = field(default_factory=dict)  # internal_progress_runs' columns
    model_rows: list = field(default_factory=list)  # internal_progress_models' columns, one dict per model
    final: bool = False


@dataclass(frozen=True)
class CheckpointModel:
    """One model's state at the end of ``iteration``, for the checkpoint ``run_key`` of ``role``
    (training.checkpoints)."""
    schema: str
    role: int
    run_key: str
    iteration: int
    mst_key: int
    last_segment: int | None
    metrics: str                       # the model's metric series, as JSON
    weights: bytes = b""
    optimizer_state: bytes | None = None


@dataclass(frozen=True)
class CheckpointDone:
    """Every model of ``iteration`` is written: the checkpoint now stands at it (older states go).
    ``kept``: models that did not change since the checkpoint of iteration ``kept_from``, whose rows
    move on to this one instead of being written again."""
    schema: str
    role: int
    run_key: str
    iteration: int
    function: str
    output_table: str | None
    metrics_iters: list = field(default_factory=list)
    state: str | None = None          # JSON: the rest of the run's state (training.checkpoints)
    kept: list = field(default_factory=list)
    kept_from: int | None = None


@dataclass(frozen=True)
class Release:
    """Drop a run's data and models (None: whatever is held)."""
    run_id: str | None


@dataclass(frozen=True)
class Stop:
    """End this worker."""


@dataclass(frozen=True)
class Reply:
    row: dict                           # small values (hop_result's columns, a pid, counts)
    weights: bytes | None = None
    optimizer_state: bytes | None = None


TYPES = {cls.__name__: cls for cls in (Start, BeginRun, CountRows, InitialWeights, Fit, Evaluate, Record,
                                       CheckpointModel, CheckpointDone, Release, Stop, Reply)}
# Fields holding dataclasses: a mapping of them (sent as [key, fields] pairs: JSON objects would turn
# integer keys into text) or one of them.
_MAPPINGS = {"tables": TableRef, "models": ModelConstants}
_SINGLE = {"table": TableRef, "constants": ModelConstants}


class BadRequest(Exception):
    pass


def encode(request) -> tuple[dict, list]:
    """Header and blobs of a request or reply."""
    fields, blobs, names = {}, [], []
    for f in dataclasses.fields(request):
        value = getattr(request, f.name)
        if isinstance(value, BLOB_TYPES):
            names.append(f.name)
            blobs.append(value)
        elif f.name in _MAPPINGS:
            fields[f.name] = [[k, dataclasses.asdict(v)] for k, v in value.items()]
        elif dataclasses.is_dataclass(value):
            fields[f.name] = dataclasses.asdict(value)
        else:
            fields[f.name] = value
    return {"type": type(request).__name__, "fields": fields, "blobs": names}, blobs


def decode(header: dict, blobs: list):
    """The request or reply a message holds; BadRequest for anything that is not one."""
    cls = TYPES.get(header.get("type")) if isinstance(header, dict) else None
    if cls is None:
        raise BadRequest("not a madlib_dl segment request")
    names, fields = header.get("blobs", []), header.get("fields", {})
    if not isinstance(fields, dict) or not isinstance(names, list) or len(names) != len(blobs):
        raise BadRequest(f"a malformed {cls.__name__} message")
    hints = typing.get_type_hints(cls)
    values = {}
    for name, value in list(fields.items()) + list(zip(names, blobs)):
        if name not in hints:
            raise BadRequest(f"{cls.__name__} has no field {name!r}")
        values[name] = _typed(cls.__name__, name, hints[name], value)
    try:
        return cls(**values)
    except TypeError as error:
        raise BadRequest(f"{cls.__name__}: {error}") from None


def _typed(owner: str, name: str, hint, value):
    try:
        if name in _MAPPINGS:
            return {_key(k): _MAPPINGS[name](**v) for k, v in value}
        if name in _SINGLE and isinstance(value, dict):
            return _SINGLE[name](**value)
    except (TypeError, ValueError):
        raise BadRequest(f"{owner}.{name}: malformed") from None
    kinds = tuple(t for t in (typing.get_args(hint) or (hint,)) if isinstance(t, type))
    kinds = tuple(k for t in kinds for k in (BLOB_TYPES if t is bytes else (t,)))
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        raise BadRequest(f"{owner}.{name}: expected {hint}, got {type(value).__name__}")
    return value


def _key(key):
    if not isinstance(key, (int, str)) or isinstance(key, bool):
        raise TypeError("a key must be an integer or a name")
    return key
