"""bench/data.py's verdicts and table: packing is judged against the read-out, its memory against the
packed bytes, evaluate and predict against reading plus Keras (pure, no server); and the generated
COPY data is what PostgreSQL's binary format says."""

from __future__ import annotations

import struct
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import data  # noqa: E402


def _result(pack=3.0, peak=200 << 20, predict=2.0, peak_4x=None):
    ours = {"data_1x": {"rows": 10, "seconds": pack, "peak_bytes": peak, "packed_bytes": 150 << 20},
            "data_4x": {"rows": 40, "seconds": 4 * pack, "peak_bytes": peak_4x or peak, "packed_bytes": 600 << 20},
            "validation": {"rows": 2, "seconds": 0.8}, "data_eval_warm": {"seconds": 3.0},
            "data_eval": {"seconds": 0.5}, "predict": {"rows": 10, "seconds": predict}}
    reference = {"read data_1x": 2.5, "read data_val": 0.5, "keras evaluate": 0.25, "keras predict": 0.5}
    return {"tables": {}, "ours": ours, "reference": reference}


def test_packing_is_judged_against_reading_the_table():
    found = {t.name: t for t in data.targets(_result(pack=3.0))}
    pack = found["data (b): training_preprocessor_dl / reading the table into numpy"]
    assert abs(pack.measured - 1.2) < 1e-9 and pack.met
    assert not {t.name: t for t in data.targets(_result(pack=4.0))}[pack.name].met  # 1.6 > 1.5


def test_memory_and_scoring_verdicts():
    found = {t.name: t for t in data.targets(_result(peak=300 << 20, predict=5.0))}
    bounded = found["data (b): peak memory, 4x table / 1x table (bounded: the table grew 4x)"]
    assert bounded.met and found["data (b): peak memory / packed bytes, 1x table"].measured == 2.0
    grown = {t.name: t for t in data.targets(_result(peak=300 << 20, peak_4x=900 << 20))}[bounded.name]
    assert not grown.met  # memory that grows with the table
    predict = found["data (e): madlib_keras_predict / (reading the table + Keras predict)"]
    assert abs(predict.measured - 5.0 / 3.0) < 1e-9 and not predict.met
    assert found["data (d): madlib_keras_evaluate / (reading the table + Keras evaluate)"].met
    assert "(e) madlib_keras_predict" in data.table(_result())


def test_generated_rows_are_binary_copy_of_real_arrays():
    raw = data._copy_binary(3, seed=0).getvalue()
    assert raw.startswith(b"PGCOPY\n\xff\r\n\x00") and raw.endswith(struct.pack(">h", -1))
    size = int(np.prod(data.SHAPE))
    row = 2 + 8 + 4 + 12 + 8 * len(data.SHAPE) + 8 * size + 8
    assert len(raw) == 19 + 3 * row + 2
    first = raw[19:19 + row]
    fields, id_len, row_id, x_len = struct.unpack_from(">hiii", first)
    assert (fields, id_len, row_id, x_len) == (3, 4, 0, 12 + 8 * len(data.SHAPE) + 8 * size)
    ndim, nulls, oid = struct.unpack_from(">iii", first, 14)
    assert (ndim, nulls, oid) == (3, 0, 700)
    values = np.frombuffer(first, dtype=[("len", ">i4"), ("v", ">f4")], count=size, offset=14 + 12 + 24)
    assert (values["len"] == 4).all() and values["v"].min() >= 0 and values["v"].max() <= 255
