"""training_preprocessor_dl / validation_preprocessor_dl with several dependent and independent variables
(MADlib's multi-input / multi-output packing), on a real server as a plain role: one buffer column and one
_shape column per variable, every variable's buffers holding the same rows in the same order; the summary's
per-variable arrays and class values; validation matched variable by variable; the errors; and what
packed_tables.describe reads back."""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
import psycopg2
import pytest
from psycopg2.extras import execute_values
from sklearn.datasets import load_iris

from madlib_dl import db as dbs
from madlib_dl import packed_tables
from madlib_dl.preprocess import packing

SECOND = ("w", "x", "y", "z")  # class_text2: another label set, not a function of class_text


def _second(i: int) -> str:
    return SECOND[i % 4]


@pytest.fixture(scope="module")
def db(server, plain_role):
    """iris_mult: attributes REAL[4], attributes2 their squares, class_text, class_text2 (w..z by id) and
    two one-hot integer arrays (setosa or not; id even or odd)."""
    with server.fresh_database("preprocess_multi_io", plain_role=plain_role) as name, \
            server.connect(name, user=plain_role) as conn:
        with conn.cursor() as cur:
            iris = load_iris()
            cur.execute("CREATE TABLE iris_mult (id INTEGER, attributes REAL[], attributes2 REAL[], class_text TEXT, "
                        "class_text2 TEXT, setosa INTEGER[], parity INTEGER[])")
            execute_values(cur, "INSERT INTO iris_mult VALUES %s", [
                (i, list(map(float, x)), list(map(float, np.float32(x) ** 2)), str(iris.target_names[y]), _second(i),
                 [1, 0] if y == 0 else [0, 1], [1, 0] if i % 2 == 0 else [0, 1])
                for i, (x, y) in enumerate(zip(iris.data, iris.target))])
        yield conn


@pytest.fixture
def cur(db):
    with db.cursor() as c:
        c.execute("RESET ALL")
        yield c


def _drop(cur, *tables):
    for t in tables:
        cur.execute(f"DROP TABLE IF EXISTS {t}, {t}_summary")


def _buffers(cur, table, xs, ys):
    """Per buffer: (buffer_id, __dist_key__, [features per independent], [labels per dependent])."""
    names = list(xs) + list(ys)
    columns = ", ".join(f'"{n}", "{n}_shape"' for n in names)
    cur.execute(f"SELECT buffer_id, __dist_key__, {columns} FROM {table} ORDER BY buffer_id")
    out = []
    for row in cur.fetchall():
        values = [row[2 + 2 * i:4 + 2 * i] for i in range(len(names))]
        assert len({shape[0] for _, shape in values}) == 1, "every variable's buffer holds the same number of rows"
        decoded = [packing.decode(bytes(blob), shape, packing.FEATURE_DTYPE if i < len(xs) else packing.LABEL_DTYPE)
                   for i, (blob, shape) in enumerate(values)]
        out.append((row[0], row[1], decoded[:len(xs)], decoded[len(xs):]))
    return out


def _examples(buffers):
    """Every packed example as (feature bytes per independent..., class index per dependent...): rows of the
    variables' buffers are matched by position, so this is the source rows only if all keep one order."""
    rows = []
    for _, _, xs, ys in buffers:
        for y in ys:
            assert (y.sum(axis=1) == 1).all(), "each label is one-hot"
        rows += [tuple(x[r].tobytes() for x in xs) + tuple(int(np.argmax(y[r])) for y in ys) for r in range(len(xs[0]))]
    return Counter(rows)


def _source_examples(cur, table="iris_mult", classes2=SECOND, const=1.0, where="TRUE"):
    cur.execute(f"SELECT attributes::float8[], attributes2::float8[], class_text, class_text2 FROM {table} WHERE {where}")
    names = ["setosa", "versicolor", "virginica"]
    return Counter((np.float32(np.float64(np.float32(a)) / const).tobytes(),
                    np.float32(np.float64(np.float32(b)) / const).tobytes(), names.index(c), classes2.index(d))
                   for a, b, c, d in cur.fetchall())


def _summary(cur, table):
    cur.execute(f"SELECT * FROM {table}_summary")
    names = [d.name for d in cur.description]
    rows = cur.fetchall()
    assert len(rows) == 1
    return dict(zip(names, rows[0]))


def _columns(cur, table):
    cur.execute("SELECT attname::text, format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = %s::regclass "
                "AND attnum > 0 AND NOT attisdropped ORDER BY attnum", [table])
    return cur.fetchall()


def _error(cur, sql, args=()):
    with pytest.raises(psycopg2.Error) as info:
        cur.execute(sql, args)
    return info.value


def _exists(cur, name):
    cur.execute("SELECT to_regclass(%s) IS NOT NULL", [name])
    return cur.fetchone()[0]


TRAIN = "SELECT madlib_dl.training_preprocessor_dl(%s, %s, %s, %s, %s::integer, %s::real, %s::integer[], %s)"
VALIDATE = "SELECT madlib_dl.validation_preprocessor_dl(%s, %s, %s, %s, %s, %s::integer, %s)"
XS, YS = ("attributes", "attributes2"), ("class_text", "class_text2")


@pytest.fixture(scope="module")
def mult_packed(db):
    """MADlib's example: SELECT training_preprocessor_dl('iris_mult', 'iris_mult_packed', 'class_text, class_text2',
    'attributes, attributes2', NULL, 255), here over 3 segments in buffers of about 20 rows."""
    with db.cursor() as c:
        c.execute(TRAIN, ["iris_mult", "iris_mult_packed", "class_text, class_text2", "attributes, attributes2", 20,
                          255, None, "3"])
    return "iris_mult_packed"


# ---------------------------------------------------------------- what gets packed

def test_each_variable_has_its_buffer_and_shape_columns(cur, mult_packed):
    assert _columns(cur, mult_packed) == [
        ("__dist_key__", "integer"), ("attributes", "bytea"), ("attributes2", "bytea"), ("class_text", "bytea"),
        ("class_text2", "bytea"), ("attributes_shape", "integer[]"), ("attributes2_shape", "integer[]"),
        ("class_text_shape", "integer[]"), ("class_text2_shape", "integer[]"), ("buffer_id", "integer")]
    cur.execute(f"SELECT DISTINCT attributes_shape[2:], attributes2_shape[2:], class_text_shape[2:], "
                f"class_text2_shape[2:] FROM {mult_packed}")
    assert cur.fetchall() == [([4], [4], [3], [4])]


def test_every_variables_buffers_hold_the_source_rows_in_one_order(cur, mult_packed):
    buffers = _buffers(cur, mult_packed, XS, YS)
    assert len(buffers) == 9 and sorted(Counter(k for _, k, _, _ in buffers).values()) == [3, 3, 3]
    assert _examples(buffers) == _source_examples(cur, const=255.0)  # normalised by 255, each row once
    first = buffers[0][3]
    assert len(set(first[0].argmax(axis=1).tolist())) > 1 and len(set(first[1].argmax(axis=1).tolist())) > 1


def test_the_summary_has_one_entry_per_variable(cur, mult_packed):
    s = _summary(cur, mult_packed)
    assert list(s) == ["source_table", "output_table", "dependent_varname", "independent_varname", "dependent_vartype",
                       "class_text_class_values", "class_text2_class_values", "buffer_size", "normalizing_const",
                       "num_classes", "distribution_rules", "num_segments"]
    assert s["dependent_varname"] == ["class_text", "class_text2"]
    assert s["independent_varname"] == ["attributes", "attributes2"]
    assert s["dependent_vartype"] == ["text", "text"]
    assert s["class_text_class_values"] == ["setosa", "versicolor", "virginica"]
    assert s["class_text2_class_values"] == list(SECOND)
    assert s["num_classes"] == [3, 4] and s["normalizing_const"] == 255.0
    assert (s["source_table"], s["output_table"]) == ("iris_mult", "iris_mult_packed")
    assert s["num_segments"] == 3 and s["distribution_rules"] == "3" and s["buffer_size"] == 17


def test_the_same_data_packs_into_the_same_bytes_and_the_seed_shuffles_all_variables_alike(cur):
    _drop(cur, "mio_a", "mio_b", "mio_c")
    cur.execute("DROP TABLE IF EXISTS iris_mult_reversed")
    cur.execute("CREATE TABLE iris_mult_reversed AS SELECT * FROM iris_mult ORDER BY id DESC")
    args = ["class_text, class_text2", "attributes, attributes2", 10, 1, None, "2"]
    cur.execute(TRAIN, ["iris_mult", "mio_a", *args])
    cur.execute(TRAIN, ["iris_mult_reversed", "mio_b", *args])
    cur.execute("SET madlib_dl.shuffle_seed = 11")
    cur.execute(TRAIN, ["iris_mult", "mio_c", *args])
    a, b, c = (_buffers(cur, t, XS, YS) for t in ("mio_a", "mio_b", "mio_c"))

    def raw(buffers):
        return b"".join(v.tobytes() for _, _, xs, ys in buffers for v in xs + ys)

    assert raw(a) == raw(b) and raw(a) != raw(c)
    assert _examples(a) == _examples(c) == _source_examples(cur)


def test_num_classes_pads_each_dependent_variable(cur):
    _drop(cur, "mio_pad")
    cur.execute(TRAIN, ["iris_mult", "mio_pad", "class_text2, class_text", "attributes2", None, 1, [6, 5], "1"])
    s = _summary(cur, "mio_pad")
    assert s["num_classes"] == [6, 5] and s["dependent_varname"] == ["class_text2", "class_text"]
    assert s["class_text2_class_values"] == list(SECOND) + [None, None]
    assert s["class_text_class_values"] == ["setosa", "versicolor", "virginica", None, None]
    [(_, _, [x], [y2, y1])] = _buffers(cur, "mio_pad", ["attributes2"], ["class_text2", "class_text"])
    assert x.shape == (150, 4) and y2.shape == (150, 6) and y1.shape == (150, 5)
    assert not y2[:, 4:].any() and not y1[:, 3:].any()


def test_one_hot_dependents_beside_class_labels(cur):
    """A one-hot array label among text labels: its class values are NULL and its count is recorded; with
    only one-hot labels and no num_classes argument num_classes is {}, as MADlib writes it for one."""
    _drop(cur, "mio_oh", "mio_oh2")
    cur.execute(TRAIN, ["iris_mult", "mio_oh", "class_text, setosa", "attributes, attributes2", None, 1, None, "1"])
    s = _summary(cur, "mio_oh")
    assert s["dependent_vartype"] == ["text", "integer[]"] and s["setosa_class_values"] is None
    assert s["num_classes"] == [3, 2]
    [(_, _, _, [y, oh])] = _buffers(cur, "mio_oh", XS, ["class_text", "setosa"])
    assert (oh.argmax(axis=1) == (y.argmax(axis=1) != 0)).all(), "the one-hot labels stay with their rows"
    cur.execute(TRAIN, ["iris_mult", "mio_oh2", "setosa, parity", "attributes", None, 1, None, "1"])
    assert _summary(cur, "mio_oh2")["num_classes"] == []


def test_quoted_names_and_whitespace_in_the_lists(cur):
    """Names are split at commas outside double quotes and stripped; a quoted name keeps its case and commas."""
    _drop(cur, "mio_one")
    cur.execute("DROP TABLE IF EXISTS quoted_src")
    cur.execute('CREATE TABLE quoted_src AS SELECT attributes AS "Attributes", attributes2 AS "a,b", class_text '
                'FROM iris_mult')
    cur.execute(TRAIN, ["quoted_src", "mio_one", " class_text ", ' "Attributes" , "a,b" ', None, 1, None, "1"])
    s = _summary(cur, "mio_one")
    assert s["independent_varname"] == ["Attributes", "a,b"] and s["dependent_varname"] == ["class_text"]
    assert [c for c, _ in _columns(cur, "mio_one")][:3] == ["__dist_key__", "Attributes", "a,b"]


def test_the_memory_check_counts_every_variable(cur):
    """2000 rows of 40 + 40 features: one variable's buffer fits in 1 MiB (3 copies), both do not."""
    _drop(cur, "mio_budget")
    cur.execute("DROP TABLE IF EXISTS wide_src")
    cur.execute("CREATE TABLE wide_src AS SELECT i % 2 AS y, array_fill(i::real, ARRAY[40]) AS a, "
                "array_fill(-i::real, ARRAY[40]) AS b FROM generate_series(1, 2000) i")
    cur.execute("SET madlib_dl.memory_budget_mb = 1")
    call = ["wide_src", "mio_budget", "y", "a, b", None, 1, None, "1"]
    error = _error(cur, TRAIN, call)
    assert re.search(r"buffer_size: buffers of 2000 rows need about 1.9 MiB while they are packed",
                     error.diag.message_primary), error.diag.message_primary
    assert not _exists(cur, "mio_budget")
    cur.execute(TRAIN, call[:3] + ["a"] + call[4:])
    cur.execute("SELECT count(*) FROM mio_budget")
    assert cur.fetchone()[0] == 1


# ---------------------------------------------------------------- validation

def test_validation_packs_each_variable_like_the_training_table(cur, mult_packed):
    _drop(cur, "iris_mult_val")
    cur.execute("DROP TABLE IF EXISTS iris_mult_v")
    cur.execute("CREATE TABLE iris_mult_v AS SELECT * FROM iris_mult WHERE id % 5 = 0 AND class_text2 IN ('x', 'z')")
    cur.execute(VALIDATE, ["iris_mult_v", "iris_mult_val", "class_text, class_text2", "attributes, attributes2",
                           mult_packed, None, None])
    buffers = _buffers(cur, "iris_mult_val", XS, YS)
    assert _examples(buffers) == _source_examples(cur, "iris_mult_v", const=255.0)  # indices of the training classes
    assert sorted({k for _, k, _, _ in buffers}) == [0, 1, 2]
    assert all(ys[1].shape[1] == 4 for _, _, _, ys in buffers)
    s, t = _summary(cur, "iris_mult_val"), _summary(cur, mult_packed)
    for key in ("dependent_varname", "independent_varname", "dependent_vartype", "class_text_class_values",
                "class_text2_class_values", "normalizing_const", "num_classes", "num_segments"):
        assert s[key] == t[key], key


def test_validation_of_one_hot_and_padded_variables(cur):
    _drop(cur, "mio_vt", "mio_vv")
    cur.execute(TRAIN, ["iris_mult", "mio_vt", "setosa, class_text2", "attributes", None, 1, [3, 4], "2"])
    cur.execute(VALIDATE, ["iris_mult", "mio_vv", "setosa, class_text2", "attributes", "mio_vt", None, None])
    s = _summary(cur, "mio_vv")
    assert s["num_classes"] == [3, 4] and s["setosa_class_values"] is None
    assert s["class_text2_class_values"] == list(SECOND)
    buffers = _buffers(cur, "mio_vv", ["attributes"], ["setosa", "class_text2"])
    assert all(ys[0].shape[1] == 3 and ys[1].shape[1] == 4 for _, _, _, ys in buffers)
    assert sum(len(xs[0]) for _, _, xs, _ in buffers) == 150


# ---------------------------------------------------------------- what packed_tables.describe reads back

def test_describe_gives_every_variable(db, cur, mult_packed):
    database = dbs.PsycopgDatabase(db)
    t = packed_tables.describe(database, mult_packed, "source_table")
    assert t.multi_io
    assert (t.dependent, t.independent, t.num_classes, t.feature_shape) == ("class_text", "attributes", 3, (4,))
    assert t.class_values_column == "class_text_class_values"
    assert t.class_values == ("setosa", "versicolor", "virginica")
    assert t.dependents == YS and t.independents == XS
    assert t.output_classes == (3, 4) and t.feature_shapes == ((4,), (4,))
    assert t.class_values_columns == ("class_text_class_values", "class_text2_class_values")
    assert t.all_class_values == (("setosa", "versicolor", "virginica"), SECOND)
    assert t.images == 150 and t.num_segments == 3 and sorted(t.segments) == [0, 1, 2]
    cur.execute(f"SELECT __dist_key__, sum(octet_length(attributes) + octet_length(attributes2) + "
                f"2 * (octet_length(class_text) + octet_length(class_text2))) FROM {mult_packed} GROUP BY 1")
    assert {k: t.segments[k].cache_bytes for k in t.segments} == dict(cur.fetchall())


def test_describe_of_single_io_and_of_one_hot_labels_without_num_classes(db, cur):
    _drop(cur, "mio_single", "mio_ohs")
    cur.execute(TRAIN, ["iris_mult", "mio_single", "class_text", "attributes", None, 1, None, "1"])
    cur.execute(TRAIN, ["iris_mult", "mio_ohs", "setosa, class_text2, parity", "attributes2", None, 1, None, "1"])
    database = dbs.PsycopgDatabase(db)
    one = packed_tables.describe(database, "mio_single", "source_table")
    assert not one.multi_io and one.dependents == ("class_text",) and one.independents == ("attributes",)
    assert one.output_classes == (3,) and one.feature_shapes == ((4,),)
    assert one.class_values_columns == ("class_text_class_values",) and one.all_class_values == (one.class_values,)
    several = packed_tables.describe(database, "mio_ohs", "source_table")
    assert several.multi_io and several.output_classes == (2, 4, 2) and several.num_classes == 2
    assert several.all_class_values == (None, SECOND, None)
    # a summary without num_classes: each dependent's count comes from its label buffers
    cur.execute("UPDATE mio_ohs_summary SET num_classes = NULL")
    assert packed_tables.describe(database, "mio_ohs", "source_table").output_classes == (2, 4, 2)


# ---------------------------------------------------------------- errors: clear, and nothing created

def _train_args(**kw):
    args = dict(source_table="iris_mult", output_table="bad_out", dependent_varname="class_text, class_text2",
                independent_varname="attributes, attributes2", buffer_size=None, normalizing_const=1.0,
                num_classes=None, distribution_rules=None)
    args.update(kw)
    return list(args.values())


@pytest.mark.parametrize("kw,message", [
    ({"dependent_varname": "class_text, nope"}, r"dependent_varname: column 'nope' does not exist in table iris_mult"),
    ({"independent_varname": "attributes, Nope"}, r"independent_varname: column 'nope' does not exist in table iris_mult"),
    ({"independent_varname": "attributes,,attributes2"},
     r"independent_varname: empty column name in the list 'attributes,,attributes2'"),
    ({"dependent_varname": "class_text, "}, r"dependent_varname: empty column name in the list 'class_text, '"),
    ({"independent_varname": 'attributes, "attributes2'}, r"independent_varname: unterminated quoted identifier"),
    ({"independent_varname": "attributes, id"},
     r"independent_varname: column 'id' of iris_mult has type integer; expected a numeric array"),
    ({"independent_varname": "attributes, attributes"},
     r"independent_varname: column 'attributes' is listed twice in 'attributes, attributes'"),
    ({"dependent_varname": "class_text, CLASS_TEXT"},
     r"dependent_varname: column 'class_text' is listed twice in 'class_text, CLASS_TEXT'"),
    ({"dependent_varname": "class_text, attributes2"},
     r"dependent_varname and independent_varname: both name column 'attributes2'"),
    ({"num_classes": [3]}, r"num_classes: expected 2 class counts, one per dependent variable \(class_text, "
                           r"class_text2\), in an array such as ARRAY\[10, 10\] or NULL, got \[3\]"),
    ({"num_classes": [3, 4, 5]}, r"num_classes: expected 2 class counts"),
    ({"num_classes": [3, None]}, r"num_classes: expected 2 class counts"),
    ({"num_classes": [3, 2]}, r"num_classes: 2 is fewer than the 4 classes column 'class_text2' has"),
    ({"num_classes": [0, 4]}, r"num_classes: expected a positive class count, got 0"),
])
def test_training_errors_name_the_argument_and_create_nothing(cur, kw, message):
    error = _error(cur, TRAIN, _train_args(**kw))
    assert re.search("madlib_dl: " + message, error.pgerror), error.pgerror
    assert not _exists(cur, "bad_out") and not _exists(cur, "bad_out_summary")


@pytest.fixture(scope="module")
def validation_sources(db, mult_packed):
    with db.cursor() as c:
        c.execute("CREATE TABLE wide2 AS SELECT attributes, attributes2 || 1.0::real AS attributes2, class_text, "
                  "class_text2 FROM iris_mult")
        c.execute("CREATE TABLE other2 AS SELECT attributes, attributes2, class_text, "
                  "CASE WHEN id = 7 THEN 'q' ELSE class_text2 END AS class_text2, id FROM iris_mult")
    yield mult_packed


@pytest.mark.parametrize("args,message", [
    (("iris_mult", "class_text", "attributes, attributes2"),
     r"dependent_varname: 1 column \(class_text\); the training table iris_mult_packed has 2 \(class_text, class_text2\)"),
    (("iris_mult", "class_text, class_text2", "attributes"),
     r"independent_varname: 1 column \(attributes\); the training table iris_mult_packed has 2 \(attributes, attributes2\)"),
    (("iris_mult", "class_text, class_text2, setosa", "attributes, attributes2"),
     r"dependent_varname: 3 columns \(class_text, class_text2, setosa\); the training table iris_mult_packed has 2"),
    (("wide2", "class_text, class_text2", "attributes, attributes2"),
     r"independent_varname: features of shape \[5\] in column 'attributes2' \(variable 2 of 2\); the training table "
     r"iris_mult_packed has \[4\]"),
    (("other2", "class_text, class_text2", "attributes, attributes2"),
     r"dependent_varname: class values of other2 in column 'class_text2' \(variable 2 of 2\) must be a subset of those "
     r"of iris_mult_packed; not found there: 'q'"),
    (("other2", "class_text, id", "attributes, attributes2"),
     r"dependent_varname: column 'id' \(variable 2 of 2\) has type integer, which cannot be compared with the training "
     r"labels \(text\[\]\)"),
    (("iris_mult", "class_text, setosa", "attributes, attributes2"),
     r"dependent_varname: column 'setosa' \(variable 2 of 2\) has type integer\[\], which cannot be compared"),
])
def test_validation_errors_name_the_variable_and_create_nothing(cur, validation_sources, args, message):
    source, dependents, independents = args
    error = _error(cur, VALIDATE, [source, "bad_val", dependents, independents, validation_sources, None, None])
    assert re.search("madlib_dl: " + message, error.pgerror), error.pgerror
    assert not _exists(cur, "bad_val") and not _exists(cur, "bad_val_summary")


def test_a_one_hot_training_variable_needs_one_hot_validation_labels(cur):
    _drop(cur, "mio_oht")
    cur.execute(TRAIN, ["iris_mult", "mio_oht", "class_text, setosa", "attributes", None, 1, None, "1"])
    error = _error(cur, VALIDATE, ["iris_mult", "bad_val", "class_text, class_text2", "attributes", "mio_oht", None,
                                   None])
    assert re.search(r"madlib_dl: dependent_varname: the training labels were one-hot arrays, but column "
                     r"'class_text2' \(variable 2 of 2\) has type text", error.pgerror), error.pgerror
    assert not _exists(cur, "bad_val")
