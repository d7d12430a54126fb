"""What madlib_keras_predict writes, from a model's outputs. Pure numpy: no Keras, no database.

* :func:`parse_pred_type`: the ``pred_type`` argument (MADlib's values, given as text, integer or double).
* :func:`decode_arrays`: a batch of feature arrays as PostgreSQL sends them (``array_send`` of float4 or float8 arrays)
  into one float64 matrix, checking each row's size without making a Python float per value.
* :func:`output_rows`: a batch of class probabilities into the rows of the output table, ranked.
* :func:`outputs_rows`: the same for a model with several outputs (MADlib's multi-io): each output ranked
  on its own, its rows named by its dependent variable.
"""

from __future__ import annotations

import math
import re
import struct
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from madlib_dl import binary_arrays
from madlib_dl.errors import InvalidArgument

PROB, RESPONSE, TOP_K, THRESHOLD = "prob", "response", "top_k", "threshold"

EXPECTED = ("'prob' (every class with its probability and rank), 'response' (the most likely class), "
            "an integer k >= 1 (the k most likely classes) or a number in [0.0, 1.0) (the classes whose "
            "probability is above it)")

_INTEGER = re.compile(r"[+-]?[0-9]+")
_DECIMAL = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")


@dataclass(frozen=True)
class PredType:
    kind: str                      # PROB, RESPONSE, TOP_K or THRESHOLD
    value: int | float | None = None

    @property
    def has_rank(self) -> bool:
        """'response' drops the rank column (every row would have rank 1), as MADlib does."""
        return self.kind != RESPONSE


def parse_pred_type(value) -> PredType:
    """``value`` as the SQL overloads pass it: text (which may spell a number, as MADlib reads it),
    an integer (top k) or a float (probability threshold, even when it is integral: 1.0 is refused);
    NULL is 'prob', as in MADlib."""
    if value is None:  # MADlib's default, which it also takes NULL for
        return PredType(PROB)
    if isinstance(value, str):
        return _from_text(value)
    if isinstance(value, bool):
        raise _invalid(value)
    if isinstance(value, (int, np.integer)):
        return _top_k(int(value), value)
    if isinstance(value, (float, np.floating)):
        return _threshold(float(value), value)
    raise _invalid(value)


def _from_text(text: str) -> PredType:
    word = text.strip().lower()
    if word in (PROB, RESPONSE):
        return PredType(word)
    if _INTEGER.fullmatch(word):  # not int(): it also reads '1_000' and non-ASCII digits
        return _top_k(int(word), text)
    if _DECIMAL.fullmatch(word):  # not float(): it also reads 'nan' and 'inf'
        return _threshold(float(word), text)
    raise _invalid(text)


def _top_k(k: int, given) -> PredType:
    if k < 1:
        raise _invalid(given, "an integer pred_type is a number of classes, at least 1")
    return PredType(TOP_K, k)


def _threshold(value: float, given) -> PredType:
    if not (math.isfinite(value) and 0.0 <= value < 1.0):
        raise _invalid(given, "a fractional pred_type is a probability threshold, from 0.0 up to but not including 1.0")
    return PredType(THRESHOLD, value)


def _invalid(given, why: str | None = None) -> InvalidArgument:
    shown = "NULL" if given is None else repr(given) if isinstance(given, str) else str(given)
    return InvalidArgument(f"pred_type: expected {EXPECTED}; got {shown}" + (f" ({why})" if why else ""))


# ---------------------------------------------------------------------------------------------------
# Feature arrays

class RowProblem(Exception):
    """Row ``index`` of a batch cannot be scored; ``reason`` says why (the caller names the row)."""

    def __init__(self, index: int, reason: str):
        super().__init__(reason)
        self.index = index
        self.reason = reason


_HEADER = struct.Struct(">iii")  # ndim, has-nulls flag, element type oid


def decode_arrays(blobs: Sequence[bytes | None], size: int, oid: int = binary_arrays.FLOAT8_OID) -> np.ndarray:
    """``array_send(x)`` of each row (``oid``: its elements' type, float4 or float8) → an (rows, size)
    float64 matrix. Any number of dimensions is accepted (the values are taken in storage order); NULL
    arrays, NULL elements, another element count and NaN or infinite values are refused with
    :class:`RowProblem`. A batch whose rows share one shape is decoded at once (binary_arrays)."""
    try:
        out = binary_arrays.decode(blobs, binary_arrays.Layout(size, oid)).astype(np.float64, copy=False)
    except binary_arrays.RowProblem:  # rows of several shapes, or a bad row: one at a time, naming it
        element = np.dtype([("length", ">i4"), ("value", f">f{binary_arrays.WIDTHS[oid]}")])
        out = np.empty((len(blobs), size), dtype=np.float64)
        for index, blob in enumerate(blobs):
            out[index] = _decode_one(index, blob, size, element)
    bad = ~np.isfinite(out).all(axis=1)
    if bad.any():
        raise RowProblem(int(np.argmax(bad)), "holds NaN or infinite values")
    return out


def _decode_one(index: int, blob, size: int, element: np.dtype) -> np.ndarray:
    if blob is None:
        raise RowProblem(index, "is NULL")
    blob = bytes(blob) if not isinstance(blob, bytes) else blob
    ndim, has_nulls, _ = _HEADER.unpack_from(blob)
    if has_nulls:
        raise RowProblem(index, "has NULL elements")
    dims = struct.unpack_from(f">{2 * ndim}i", blob, _HEADER.size)[0::2]
    count = int(np.prod(dims)) if ndim else 0
    if count != size:
        raise RowProblem(index, f"has {count} values")
    elements = np.frombuffer(blob, dtype=element, count=count, offset=_HEADER.size + 8 * ndim)
    return elements["value"]


# ---------------------------------------------------------------------------------------------------
# Output rows

@dataclass(frozen=True)
class OutputRows:
    """Columns of the rows one batch adds to the output table, by example, then rank."""
    ids: list
    class_values: list
    probs: list[float]
    ranks: list[int]
    class_names: list = field(default_factory=list)  # outputs_rows only: each row's output's class name


def ranked(probs: np.ndarray, pred: PredType) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(example index, class index, probability, rank) of the rows ``pred`` keeps, by example then rank.
    Rank 1 is the highest probability; equal probabilities rank the lower class index first."""
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2:
        raise ValueError(f"expected (examples, classes) probabilities, got shape {probs.shape}")
    order = np.argsort(-probs, axis=1, kind="stable")  # stable: ties keep class order
    sorted_probs = np.take_along_axis(probs, order, axis=1)
    ranks = np.broadcast_to(np.arange(1, probs.shape[1] + 1), probs.shape)
    if pred.kind == PROB:
        keep = np.ones(probs.shape, dtype=bool)
    elif pred.kind == RESPONSE:
        keep = ranks == 1
    elif pred.kind == TOP_K:
        keep = ranks <= pred.value
    else:
        keep = sorted_probs > pred.value
    example, position = np.nonzero(keep)  # row-major: by example, then rank
    return example, order[example, position], sorted_probs[example, position], position + 1


def output_rows(ids: Sequence, probs: np.ndarray, class_values: Sequence, pred: PredType) -> OutputRows:
    """The output rows of one batch: ``ids[i]`` is example i's id, ``class_values[j]`` the text of class j
    (the model's output j)."""
    probs = np.asarray(probs, dtype=np.float64)
    if probs.shape != (len(ids), len(class_values)):
        raise ValueError(f"expected probabilities of shape ({len(ids)}, {len(class_values)}), got {probs.shape}")
    example, klass, prob, rank = ranked(probs, pred)
    id_array = np.empty(len(ids), dtype=object)
    id_array[:] = list(ids)
    value_array = np.empty(len(class_values), dtype=object)
    value_array[:] = list(class_values)
    return OutputRows(id_array[example].tolist(), value_array[klass].tolist(), prob.tolist(), rank.tolist())


def outputs_rows(ids: Sequence, outputs: Sequence[np.ndarray], class_values: Sequence[Sequence],
                 class_names: Sequence, pred: PredType) -> OutputRows:
    """The output rows of one batch of a model with one or more outputs: output k has the probabilities
    ``outputs[k]`` (examples, classes), the class texts ``class_values[k]`` and the class name
    ``class_names[k]``. ``pred`` applies to each output on its own (rank 1 is each output's most likely
    class). Rows by output, then example, then rank."""
    if not len(outputs) == len(class_values) == len(class_names):
        raise ValueError(f"expected as many class value lists ({len(class_values)}) and class names "
                         f"({len(class_names)}) as outputs ({len(outputs)})")
    parts = [output_rows(ids, probs, values, pred) for probs, values in zip(outputs, class_values)]
    return OutputRows([i for p in parts for i in p.ids], [v for p in parts for v in p.class_values],
                      [x for p in parts for x in p.probs], [r for p in parts for r in p.ranks],
                      [name for name, p in zip(class_names, parts) for _ in p.ids])


def default_class_values(count: int) -> list[str]:
    """Class values when none are known: the output indices, as text."""
    return [str(i) for i in range(count)]
