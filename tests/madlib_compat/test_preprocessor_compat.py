"""MADlib's input_data_preprocessor.sql_in, on madlib_dl: buffer counts and sizes, normalizing_const
applied to the features (and recorded as REAL), one-hot encoding and class values for integer, boolean,
text, double precision and array labels, num_classes padding, NULL as a class (also the only one), the
validation preprocessor encoding with the training table's classes and constant, and the refusals
(labels of another type, classes not in the training table, num_classes too small, bad buffer_size and
normalizing_const).

madlib_dl's packed layout is MADlib's current one (BYTEA buffers plus <column>_shape), so buffers are
decoded here the way docs/preprocessing.md says, where MADlib's older test read REAL[] columns."""

from __future__ import annotations

import numpy as np
import pytest
from psycopg2.extras import execute_values

from compat import S, exists, fails, row, rows, scalar

TRAIN = f"SELECT {S}training_preprocessor_dl(%s, %s, %s, %s"
VALIDATE = f"SELECT {S}validation_preprocessor_dl(%s, %s, %s, %s, %s"
N = 17
RNG = np.random.default_rng(11)
X = RNG.integers(1, 250, size=(N, 6)).astype(float)
Y_INT = [4, 3, 8, 2, 5, 6, 2, 10, 3, 7, 6, -6, 9, 0, 12, -3, -1]  # 14 distinct values
Y_BOOL = [bool(v) for v in RNG.integers(0, 2, N)]
Y_TEXT = ["a", "c", "a", "a", "b", "a", "a", "a", "b", "a", "a", "a", "c", "a", "a", "a", "b"]
Y_DOUBLE = [4.0, 4.2, 4.0, 4.2, 4.0, 5.0, 4.0, 4.0, 4.0, 5.0, 4.0, 4.0, 4.0, 5.0, 4.0, 4.2, 4.0]
ONE_HOT = [[1, 0] if v else [0, 1] for v in RNG.integers(0, 2, N)]


@pytest.fixture(scope="module")
def data(db):
    with db.cursor() as c:
        c.execute("CREATE TABLE dp_input (id SERIAL, x DOUBLE PRECISION[], y INTEGER, y1 BOOLEAN, y2 TEXT, "
                  "y3 DOUBLE PRECISION, y4 DOUBLE PRECISION[], y5 INTEGER[])")
        execute_values(c, "INSERT INTO dp_input (x, y, y1, y2, y3, y4, y5) VALUES %s",
                       [(X[i].tolist(), Y_INT[i], Y_BOOL[i], Y_TEXT[i], Y_DOUBLE[i], [float(v) for v in ONE_HOT[i]],
                         ONE_HOT[i]) for i in range(N)])
    return db


def _buffers(cur, table, x="x", y="y"):
    """[(features array, labels array)] of the packed table, by buffer_id."""
    out = []
    for r in rows(cur, f"SELECT {x} AS x, {y} AS y, {x}_shape AS xs, {y}_shape AS ys FROM {table} "
                       "ORDER BY buffer_id"):
        out.append((np.frombuffer(bytes(r["x"]), "<f4").reshape(r["xs"]),
                    np.frombuffer(bytes(r["y"]), "<i2").reshape(r["ys"])))
    return out


def test_buffer_count_and_sizes(data, cur):
    cur.execute(TRAIN + ", 5, 1.0, NULL, '1')", ["dp_input", "dp_batch", "id", "x"])
    sizes = scalar(cur, "SELECT array_agg(x_shape[1] ORDER BY buffer_id) FROM dp_batch")
    assert len(sizes) == 4 and sum(sizes) == N and max(sizes) <= 5  # 17 rows in buffers of at most 5
    assert scalar(cur, "SELECT DISTINCT x_shape[2] FROM dp_batch") == 6
    cur.execute(VALIDATE + ", 5)", ["dp_input", "dp_val", "id", "x", "dp_batch"])
    val_sizes = scalar(cur, "SELECT array_agg(x_shape[1] ORDER BY buffer_id) FROM dp_val")
    assert len(val_sizes) == 4 and sum(val_sizes) == N and max(val_sizes) <= 5


def test_integer_labels_num_classes_and_normalizing_const(data, cur):
    cur.execute(TRAIN + ", 4, 5, ARRAY[16], '1')", ["dp_input", "dp_int", "y", "x"])
    buffers = _buffers(cur, "dp_int")
    features = np.concatenate([b[0] for b in buffers])
    assert abs(features.min() - X.min() / 5) < 1e-5 and abs(features.max() - X.max() / 5) < 1e-4
    assert all(b[1].shape[1] == 16 for b in buffers)  # one-hot vectors padded to num_classes
    s = row(cur, "SELECT * FROM dp_int_summary")
    assert s["source_table"] == "dp_input" and s["output_table"] == "dp_int"
    assert s["dependent_varname"] == ["y"] and s["independent_varname"] == ["x"]
    assert s["dependent_vartype"] == ["integer"]
    assert s["y_class_values"] == sorted(set(Y_INT)) + [None, None]  # sorted levels, then padding
    assert s["buffer_size"] == 4 and s["normalizing_const"] == 5 and s["num_classes"] == [16]
    assert scalar(cur, "SELECT pg_typeof(normalizing_const) = 'real'::regtype FROM dp_int_summary")
    # the validation preprocessor encodes with the training table's classes and constant
    cur.execute("CREATE TABLE val_input (id SERIAL, x_new DOUBLE PRECISION[], y_new INTEGER)")
    cur.execute("INSERT INTO val_input (x_new, y_new) VALUES (%s, 4)", [X[0].tolist()])
    cur.execute(VALIDATE + ")", ["val_input", "val_out", "y_new", "x_new", "dp_int"])
    ((vx, vy),) = _buffers(cur, "val_out", "x_new", "y_new")
    assert abs(vx[0, 0] - X[0, 0] / 5) < 1e-6
    expected = np.zeros(16, dtype=int)
    expected[sorted(set(Y_INT)).index(4)] = 1
    assert vy.tolist() == [expected.tolist()]
    v = row(cur, "SELECT * FROM val_out_summary")
    assert v["y_new_class_values"] == s["y_class_values"] and v["num_classes"] == [16]
    assert v["normalizing_const"] == 5 and v["dependent_vartype"] == ["integer"] and v["buffer_size"] == 1


@pytest.mark.parametrize("label, vartype, values", [
    ("y1", "boolean", [False, True]),
    ("y2", "text", ["a", "b", "c"]),
    ("y3", "double precision", [4.0, 4.2, 5.0]),
], ids=["boolean", "text", "double"])
def test_one_hot_encoding_of_scalar_labels(data, cur, label, vartype, values):
    packed = f"dp_{label}"
    cur.execute(TRAIN + ", 4, 5, NULL, '1')", ["dp_input", packed, label, "x"])
    labels = np.concatenate([b[1] for b in _buffers(cur, packed, y=label)])
    assert labels.shape == (N, len(values)) and (labels.sum(axis=1) == 1).all()
    s = row(cur, f"SELECT * FROM {packed}_summary")
    assert s["dependent_vartype"] == [vartype] and s[f"{label}_class_values"] == values
    assert s["num_classes"] == [len(values)]


def test_validation_labels_of_another_type_are_refused(data, cur):
    cur.execute(TRAIN + ", 4, 5, NULL, '1')", ["dp_input", "dp_bool", "y1", "x"])
    cur.execute("CREATE TABLE val_bool (id SERIAL, x_new DOUBLE PRECISION[], y INTEGER, y_new BOOLEAN)")
    cur.execute("INSERT INTO val_bool (x_new, y, y_new) VALUES (%s, 4, TRUE)", [X[0].tolist()])
    cur.execute(VALIDATE + ")", ["val_bool", "val_bool_out", "y_new", "x_new", "dp_bool"])
    v = row(cur, "SELECT * FROM val_bool_out_summary")
    assert v["dependent_vartype"] == ["boolean"] and v["y_new_class_values"] == [False, True]
    assert v["num_classes"] == [2]
    fails(cur, VALIDATE + ")", ["val_bool", "val_bool_bad", "y", "x_new", "dp_bool"])
    assert not exists(cur, "val_bool_bad")


@pytest.mark.parametrize("label, vartype", [("y4", "double precision[]"), ("y5", "integer[]")],
                         ids=["double_array", "integer_array"])
def test_array_labels_are_taken_as_one_hot(data, cur, label, vartype):
    packed = f"dp_{label}"
    cur.execute(TRAIN + ", 4, 5, NULL, '1')", ["dp_input", packed, label, "x"])
    labels = np.concatenate([b[1] for b in _buffers(cur, packed, y=label)])
    assert labels.shape == (N, 2) and labels.sum() == sum(sum(r) for r in ONE_HOT)
    s = row(cur, f"SELECT * FROM {packed}_summary")
    assert s["dependent_vartype"] == [vartype] and s[f"{label}_class_values"] is None
    # madlib_dl writes num_classes {} for one-hot arrays packed without num_classes (docs/preprocessing.md)
    assert not s["num_classes"]
    cur.execute(f"CREATE TABLE val_{label} (id SERIAL, x_new DOUBLE PRECISION[], {label} {vartype})")
    cur.execute(f"INSERT INTO val_{label} (x_new, {label}) VALUES (%s, ARRAY[1, 0])", [X[0].tolist()])
    cur.execute(VALIDATE + ")", [f"val_{label}", f"val_{label}_out", label, "x_new", packed])
    ((_, vy),) = _buffers(cur, f"val_{label}_out", "x_new", label)
    assert vy.tolist() == [[1, 0]]


@pytest.fixture(scope="module")
def with_nulls(data):
    labels = ["a", "a", None, "a", "a", "a", "a", None, "a", "a", None, "a", "b", "b", "b", "b", None]
    with data.cursor() as c:
        c.execute("CREATE TABLE dp_null (id SERIAL, x DOUBLE PRECISION[], label TEXT)")
        execute_values(c, "INSERT INTO dp_null (x, label) VALUES %s", [(X[i].tolist(), labels[i]) for i in range(N)])
        c.execute(TRAIN + ", 4, 5, ARRAY[5], '1')", ["dp_null", "dp_null_packed", "label", "x"])
    return data


def test_null_is_a_class(with_nulls, cur):
    assert scalar(cur, "SELECT label_class_values FROM dp_null_packed_summary") == [None, "a", "b", None, None]
    assert scalar(cur, "SELECT DISTINCT label_shape[2] FROM dp_null_packed") == 5
    cur.execute("CREATE TABLE dp_null_val (id SERIAL, x DOUBLE PRECISION[], label TEXT)")
    execute_values(cur, "INSERT INTO dp_null_val (x, label) VALUES %s",
                   [([1, 2, 3, 4, 5, 6], "a"), ([11, 2, 3, 4, 5, 6], "b"), ([11, 2, 3, 4, 5, 6], "b"),
                    ([111, 22, 33, 4, 5, 6], None)])
    cur.execute(VALIDATE + ", 1)", ["dp_null_val", "dp_null_val_out", "label", "x", "dp_null_packed"])
    assert scalar(cur, "SELECT label_class_values FROM dp_null_val_out_summary") == [None, "a", "b", None, None]
    encoded = {round(float(x[0, 0]) * 5): y[0].tolist() for x, y in _buffers(cur, "dp_null_val_out", "x", "label")}
    assert encoded[1] == [0, 1, 0, 0, 0]  # 'a'
    assert encoded[111] == [1, 0, 0, 0, 0]  # NULL: the first class


def test_only_null_labels(data, cur):
    cur.execute("CREATE TABLE dp_only_null (id SERIAL, x DOUBLE PRECISION[], label TEXT)")
    cur.execute("INSERT INTO dp_only_null (x, label) VALUES (ARRAY[11,22,33,4,5,6], NULL)")
    cur.execute(TRAIN + ", 4, 5, ARRAY[3], '1')", ["dp_only_null", "dp_only_null_packed", "label", "x"])
    assert scalar(cur, "SELECT label_class_values FROM dp_only_null_packed_summary") == [None, None, None]
    assert [b[1].tolist() for b in _buffers(cur, "dp_only_null_packed", "x", "label")] == [[[1, 0, 0]]]
    cur.execute(VALIDATE + ", 4)", ["dp_only_null", "dp_only_null_val", "label", "x", "dp_only_null_packed"])
    assert scalar(cur, "SELECT label_class_values FROM dp_only_null_val_summary") == [None, None, None]
    assert [b[1].tolist() for b in _buffers(cur, "dp_only_null_val", "x", "label")] == [[[1, 0, 0]]]


def test_validation_classes_must_be_a_subset(with_nulls, cur):
    cur.execute("CREATE TABLE dp_other_class (id SERIAL, x DOUBLE PRECISION[], label TEXT)")
    cur.execute("INSERT INTO dp_other_class (x, label) VALUES (ARRAY[11,2,3,4,5,6], 'bbbb')")
    fails(cur, VALIDATE + ", 1)", ["dp_other_class", "dp_other_out", "label", "x", "dp_null_packed"])
    assert not exists(cur, "dp_other_out") and not exists(cur, "dp_other_out_summary")


@pytest.mark.parametrize("args", [
    "4, 5, ARRAY[2]",  # num_classes smaller than the 14 levels
    "0, 5, NULL",  # buffer_size
    "-1, 5, NULL",
    "4, 0, NULL",  # normalizing_const
    "4, -5, NULL",
], ids=["num_classes_too_small", "buffer_size_0", "buffer_size_negative", "normalizing_const_0",
        "normalizing_const_negative"])
def test_bad_arguments_are_refused(data, cur, args):
    fails(cur, TRAIN + f", {args})", ["dp_input", "dp_bad", "y", "x"])
    assert not exists(cur, "dp_bad") and not exists(cur, "dp_bad_summary")


def test_multi_input_multi_output_packing(data, cur):
    cur.execute("CREATE TABLE dp_multi AS SELECT id, x, x AS x2, y2, y2 AS y2_copy FROM dp_input")
    cur.execute(TRAIN + ", 4, 1.0, NULL, '1')", ["dp_multi", "dp_multi_packed", "y2, y2_copy", "x, x2"])
    assert {"x", "x2", "y2", "y2_copy", "x_shape", "x2_shape", "y2_shape", "y2_copy_shape"} <= set(
        scalar(cur, "SELECT array_agg(attname::text) FROM pg_attribute WHERE attrelid = 'dp_multi_packed'::regclass"))
