"""training_preprocessor_dl / validation_preprocessor_dl on a real server: packed tables decode back to
exactly the source examples, normalised, each once, spread evenly over the virtual segments."""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
import psycopg2
import pytest
from psycopg2.extras import execute_values
from sklearn.datasets import load_digits, load_iris

from madlib_dl.preprocess import packing


@pytest.fixture(scope="module")
def db(server):
    """A database of its own with iris (text labels) and digits (8x8x1 images, integer labels)."""
    with server.fresh_database("preprocess") as name, server.connect(name) as conn:
        with conn.cursor() as cur:
            iris = load_iris()
            cur.execute("CREATE TABLE iris (id INTEGER, attributes DOUBLE PRECISION[], class_text TEXT)")
            execute_values(cur, "INSERT INTO iris VALUES %s",
                           [(i, list(map(float, x)), str(iris.target_names[y]))
                            for i, (x, y) in enumerate(zip(iris.data, iris.target))])
            digits = load_digits()
            cur.execute("CREATE TABLE digits (id INTEGER, pixels REAL[], label INTEGER)")
            execute_values(cur, "INSERT INTO digits VALUES %s",
                           [(i, image.reshape(8, 8, 1).tolist(), int(y))
                            for i, (image, y) in enumerate(zip(digits.images, digits.target))])
        yield conn


@pytest.fixture
def cur(db):
    with db.cursor() as c:
        c.execute("RESET ALL")
        yield c


def _buffers(cur, table, x="attributes", y="class_text"):
    cur.execute(f'SELECT buffer_id, __dist_key__, "{x}", "{x}_shape", "{y}", "{y}_shape" FROM {table} ORDER BY 1')
    out = []
    for buffer_id, key, xb, xs, yb, ys in cur.fetchall():
        assert xs[0] == ys[0], "feature and label buffers hold the same number of rows"
        out.append((buffer_id, key, packing.decode(bytes(xb), xs, packing.FEATURE_DTYPE),
                    packing.decode(bytes(yb), ys, packing.LABEL_DTYPE)))
    return out


def _examples(buffers):
    """Every packed example as (feature bytes, class index)."""
    pairs = []
    for _, _, x, y in buffers:
        assert (y.sum(axis=1) == 1).all(), "each label is one-hot"
        pairs += [(xi.tobytes(), int(np.argmax(yi))) for xi, yi in zip(x, y)]
    return Counter(pairs)


def _summary(cur, table):
    cur.execute(f"SELECT * FROM {table}_summary")
    names = [d.name for d in cur.description]
    rows = cur.fetchall()
    assert len(rows) == 1
    return dict(zip(names, rows[0]))


def _bytes(buffers):
    return b"".join(x.tobytes() + y.tobytes() for _, _, x, y in buffers)


def _error(cur, sql, args=()):
    with pytest.raises(psycopg2.Error) as info:
        cur.execute(sql, args)
    return info.value


def _exists(cur, name):
    cur.execute("SELECT to_regclass(%s) IS NOT NULL", [name])
    return cur.fetchone()[0]


def _drop(cur, *tables):
    for t in tables:
        cur.execute(f"DROP TABLE IF EXISTS {t}, {t}_summary")


# ---------------------------------------------------------------- what gets packed

def test_digits_images_keep_their_shape_and_decode_exactly(cur):
    _drop(cur, "digits_packed")
    cur.execute("SELECT madlib_dl.training_preprocessor_dl('digits', 'digits_packed', 'label', 'pixels', "
                "NULL, 16.0, NULL, '4')")
    buffers = _buffers(cur, "digits_packed", "pixels", "label")
    digits = load_digits()
    expected = Counter((np.float32(np.float64(img.reshape(8, 8, 1).astype(np.float32)) / 16.0).tobytes(), int(y))
                       for img, y in zip(digits.images, digits.target))
    assert _examples(buffers) == expected  # every image once, normalised, with its class
    assert all(x.shape[1:] == (8, 8, 1) for _, _, x, _ in buffers)
    assert all(y.shape[1] == 10 for _, _, _, y in buffers)
    assert sorted(Counter(key for _, key, _, _ in buffers).values()) == [1, 1, 1, 1]  # one buffer per segment
    assert sorted(k for _, k, _, _ in buffers) == [0, 1, 2, 3]
    s = _summary(cur, "digits_packed")
    assert s["label_class_values"] == list(range(10))
    assert s["num_classes"] == [10] and s["normalizing_const"] == 16.0
    assert s["distribution_rules"] == "4" and s["num_segments"] == 4
    assert s["dependent_varname"] == ["label"] and s["independent_varname"] == ["pixels"]
    assert s["dependent_vartype"] == ["integer"]
    assert s["buffer_size"] == max(x.shape[0] for _, _, x, _ in buffers) == 450  # ceil(1797 / 4)


def test_iris_text_labels_are_one_hot_in_sorted_class_order(cur):
    _drop(cur, "iris_packed")
    cur.execute("SELECT madlib_dl.training_preprocessor_dl('iris', 'iris_packed', 'class_text', 'attributes', 20)")
    buffers = _buffers(cur, "iris_packed")
    iris = load_iris()
    expected = Counter((np.float32(x).tobytes(), int(y)) for x, y in zip(iris.data, iris.target))
    assert _examples(buffers) == expected
    s = _summary(cur, "iris_packed")
    assert s["class_text_class_values"] == ["setosa", "versicolor", "virginica"]
    assert s["normalizing_const"] == 1.0 and s["num_classes"] == [3]


@pytest.mark.parametrize("rows,segments,buffer_size", [(150, 3, 20), (150, 4, None), (150, 7, 1000), (1797, 5, 64)])
def test_buffers_are_balanced_across_segments(cur, rows, segments, buffer_size):
    _drop(cur, "balanced")
    cur.execute("DROP TABLE IF EXISTS part")
    cur.execute("CREATE TABLE part AS SELECT * FROM digits WHERE id < %s", [rows])
    cur.execute("SELECT madlib_dl.training_preprocessor_dl('part', 'balanced', 'label', 'pixels', %s, 1, NULL, %s)",
                [buffer_size, str(segments)])
    buffers = _buffers(cur, "balanced", "pixels", "label")
    per_segment = Counter(key for _, key, _, _ in buffers)
    assert set(per_segment) == set(range(segments))
    assert max(per_segment.values()) - min(per_segment.values()) <= 1
    sizes = [x.shape[0] for _, _, x, _ in buffers]
    assert sum(sizes) == rows and max(sizes) - min(sizes) <= 1
    assert [b[0] for b in buffers] == list(range(len(buffers)))
    if buffer_size:
        assert max(sizes) <= max(buffer_size, -(-rows // segments))


def test_fewer_rows_than_segments_leaves_segments_empty_not_buffers(cur):
    _drop(cur, "tiny")
    cur.execute("DROP TABLE IF EXISTS tiny_src")
    cur.execute("CREATE TABLE tiny_src AS SELECT * FROM iris WHERE id < 2")
    cur.execute("SELECT madlib_dl.training_preprocessor_dl('tiny_src', 'tiny', 'class_text', 'attributes', "
                "NULL, 1, NULL, '3')")
    buffers = _buffers(cur, "tiny")
    assert [x.shape[0] for _, _, x, _ in buffers] == [1, 1]
    assert [k for _, k, _, _ in buffers] == [0, 1]


def test_the_shuffle_is_reproducible_and_independent_of_storage_order(cur):
    _drop(cur, "shuf_a", "shuf_b", "shuf_c")
    cur.execute("DROP TABLE IF EXISTS iris_reversed")
    cur.execute("CREATE TABLE iris_reversed AS SELECT * FROM iris ORDER BY id DESC")
    call = "SELECT madlib_dl.training_preprocessor_dl(%s, %s, 'class_text', 'attributes', 10, 1, NULL, '3')"
    cur.execute(call, ["iris", "shuf_a"])
    cur.execute(call, ["iris_reversed", "shuf_b"])
    cur.execute("SET madlib_dl.shuffle_seed = 7")
    cur.execute(call, ["iris", "shuf_c"])
    a, b, c = (_buffers(cur, t) for t in ("shuf_a", "shuf_b", "shuf_c"))
    assert _bytes(a) == _bytes(b), "same data and seed: the same packed bytes, whatever the storage order"
    assert _bytes(a) != _bytes(c), "another seed: another order"
    assert _examples(a) == _examples(c)
    first = a[0][3].argmax(axis=1)
    assert len(set(first.tolist())) > 1, "buffers mix classes: rows were shuffled"


def test_validation_packs_the_same_bytes_whatever_the_storage_order(cur):
    """Validation rows are not shuffled, but their order still comes from their content, not from where
    the table keeps them; rows with equal features and different labels are ordered by label."""
    _drop(cur, "ord_t", "ord_a", "ord_b")
    cur.execute("DROP TABLE IF EXISTS ord_src, ord_rev")
    cur.execute("CREATE TABLE ord_src AS SELECT * FROM digits WHERE id < 300 UNION ALL "
                "SELECT id + 10000, pixels, (label + 1) % 10 FROM digits WHERE id < 20")
    cur.execute("CREATE TABLE ord_rev AS SELECT * FROM ord_src ORDER BY id DESC")
    cur.execute("SELECT madlib_dl.training_preprocessor_dl('ord_src', 'ord_t', 'label', 'pixels', NULL, 16.0)")
    call = "SELECT madlib_dl.validation_preprocessor_dl(%s, %s, 'label', 'pixels', 'ord_t', 50)"
    cur.execute(call, ["ord_src", "ord_a"])
    cur.execute(call, ["ord_rev", "ord_b"])
    a, b = (_buffers(cur, t, "pixels", "label") for t in ("ord_a", "ord_b"))
    assert len(a) > 2 and _bytes(a) == _bytes(b)
    assert _examples(a) == _examples(_buffers(cur, "ord_t", "pixels", "label"))


def test_null_is_a_class_and_num_classes_pads(cur):
    _drop(cur, "nulls_packed")
    cur.execute("DROP TABLE IF EXISTS nulls")
    cur.execute("CREATE TABLE nulls AS SELECT id, attributes, "
                "CASE WHEN id % 10 = 0 THEN NULL ELSE class_text END AS class_text FROM iris")
    cur.execute("SELECT madlib_dl.training_preprocessor_dl('nulls', 'nulls_packed', 'class_text', 'attributes', "
                "NULL, 1, ARRAY[6], '2')")
    s = _summary(cur, "nulls_packed")
    assert s["class_text_class_values"] == [None, "setosa", "versicolor", "virginica", None, None]
    assert s["num_classes"] == [6]
    counts = Counter(label for _, label in _examples(_buffers(cur, "nulls_packed")).elements())
    assert counts == {0: 15, 1: 45, 2: 45, 3: 45}


def test_boolean_labels(cur):
    _drop(cur, "bool_packed")
    cur.execute("DROP TABLE IF EXISTS bools")
    cur.execute("CREATE TABLE bools AS SELECT attributes, class_text = 'setosa' AS is_setosa FROM iris")
    cur.execute("SELECT madlib_dl.training_preprocessor_dl('bools', 'bool_packed', 'is_setosa', 'attributes')")
    assert _summary(cur, "bool_packed")["is_setosa_class_values"] == [False, True]
    counts = Counter(label for _, label in _examples(_buffers(cur, "bool_packed", "attributes", "is_setosa")).elements())
    assert counts == {0: 100, 1: 50}


def test_numeric_array_labels_are_taken_as_one_hot(cur):
    _drop(cur, "oh_packed")
    cur.execute("DROP TABLE IF EXISTS onehot")
    cur.execute("CREATE TABLE onehot AS SELECT id, attributes, CASE class_text WHEN 'setosa' THEN '{1,0,0}'::int[] "
                "WHEN 'versicolor' THEN '{0,1,0}' ELSE '{0,0,1}' END AS y FROM iris")
    cur.execute("SELECT madlib_dl.training_preprocessor_dl('onehot', 'oh_packed', 'y', 'attributes', "
                "NULL, 1, ARRAY[5])")
    buffers = _buffers(cur, "oh_packed", "attributes", "y")
    assert all(y.shape[1] == 5 and not y[:, 3:].any() for _, _, _, y in buffers)
    iris = load_iris()
    assert _examples(buffers) == Counter((np.float32(x).tobytes(), int(y)) for x, y in zip(iris.data, iris.target))
    s = _summary(cur, "oh_packed")
    assert s["y_class_values"] is None and s["dependent_vartype"] == ["integer[]"] and s["num_classes"] == [5]


def test_one_hot_labels_without_num_classes_record_none_as_madlib_does(cur):
    """MADlib writes num_classes {} for one-hot array labels unless num_classes is given; the validation
    table copies it, and the count is the labels' width."""
    _drop(cur, "oh2_packed", "oh2_val")
    cur.execute("DROP TABLE IF EXISTS onehot2")
    cur.execute("CREATE TABLE onehot2 AS SELECT id, attributes, CASE class_text WHEN 'setosa' THEN '{1,0}'::int[] "
                "ELSE '{0,1}' END AS y FROM iris")
    cur.execute("SELECT madlib_dl.training_preprocessor_dl('onehot2', 'oh2_packed', 'y', 'attributes')")
    s = _summary(cur, "oh2_packed")
    assert s["num_classes"] == [] and s["y_class_values"] is None
    cur.execute("SELECT madlib_dl.validation_preprocessor_dl('onehot2', 'oh2_val', 'y', 'attributes', 'oh2_packed')")
    assert _summary(cur, "oh2_val")["num_classes"] == []
    assert all(y.shape[1] == 2 for _, _, _, y in _buffers(cur, "oh2_val", "attributes", "y"))


def test_segment_count_comes_from_the_setting(cur):
    _drop(cur, "seg_a", "seg_b")
    cur.execute("SET madlib_dl.num_segments = 5")
    cur.execute("SELECT madlib_dl.training_preprocessor_dl('iris', 'seg_a', 'class_text', 'attributes')")
    assert sorted({k for _, k, _, _ in _buffers(cur, "seg_a")}) == [0, 1, 2, 3, 4]
    assert _summary(cur, "seg_a")["distribution_rules"] == "all_segments"
    cur.execute("RESET madlib_dl.num_segments")
    cur.execute("SELECT madlib_dl.training_preprocessor_dl('iris', 'seg_b', 'class_text', 'attributes', "
                "NULL, 1, NULL, 'all_segments')")
    from madlib_dl import settings
    assert _summary(cur, "seg_b")["num_segments"] == settings.machine_segments()


# ---------------------------------------------------------------- validation

def test_validation_uses_the_training_classes_normalisation_and_segments(cur):
    _drop(cur, "dig_train", "dig_val")
    cur.execute("DROP TABLE IF EXISTS dig_t, dig_v")
    cur.execute("CREATE TABLE dig_t AS SELECT * FROM digits WHERE id % 5 <> 0")
    cur.execute("CREATE TABLE dig_v AS SELECT * FROM digits WHERE id % 5 = 0 AND label IN (3, 7)")
    cur.execute("SELECT madlib_dl.training_preprocessor_dl('dig_t', 'dig_train', 'label', 'pixels', "
                "NULL, 16.0, ARRAY[12], '3')")
    cur.execute("SELECT madlib_dl.validation_preprocessor_dl('dig_v', 'dig_val', 'label', 'pixels', 'dig_train', 20)")
    buffers = _buffers(cur, "dig_val", "pixels", "label")
    digits = load_digits()
    keep = [(i % 5 == 0 and y in (3, 7)) for i, y in enumerate(digits.target)]
    expected = Counter((np.float32(np.float64(img.reshape(8, 8, 1).astype(np.float32)) / 16.0).tobytes(), int(y))
                       for img, y, k in zip(digits.images, digits.target, keep) if k)
    assert _examples(buffers) == expected  # class index = position among the training classes
    assert all(y.shape[1] == 12 for _, _, _, y in buffers)
    per_segment = Counter(k for _, k, _, _ in buffers)
    assert set(per_segment) == {0, 1, 2} and max(per_segment.values()) - min(per_segment.values()) <= 1
    s = _summary(cur, "dig_val")
    assert s["label_class_values"] == list(range(10)) + [None, None]
    assert s["normalizing_const"] == 16.0 and s["num_classes"] == [12] and s["num_segments"] == 3


def test_validation_with_a_null_class(cur):
    _drop(cur, "nt", "nv")
    cur.execute("DROP TABLE IF EXISTS nsrc")
    cur.execute("CREATE TABLE nsrc AS SELECT id, attributes, "
                "CASE WHEN id % 10 = 0 THEN NULL ELSE class_text END AS class_text FROM iris")
    cur.execute("SELECT madlib_dl.training_preprocessor_dl('nsrc', 'nt', 'class_text', 'attributes')")
    cur.execute("SELECT madlib_dl.validation_preprocessor_dl('nsrc', 'nv', 'class_text', 'attributes', 'nt')")
    assert _examples(_buffers(cur, "nv")) == _examples(_buffers(cur, "nt"))


# ---------------------------------------------------------------- errors: clear, and nothing created

TRAIN = "SELECT madlib_dl.training_preprocessor_dl(%s, %s, %s, %s, %s::integer, %s::real, %s::integer[], %s)"


def _train_args(**kw):
    args = dict(source_table="iris", output_table="bad_out", dependent_varname="class_text",
                independent_varname="attributes", buffer_size=None, normalizing_const=1.0, num_classes=None,
                distribution_rules=None)
    args.update(kw)
    return list(args.values())


@pytest.fixture(scope="module")
def error_tables(db):
    with db.cursor() as c:
        c.execute("CREATE TABLE empty_src (attributes REAL[], class_text TEXT)")
        c.execute("CREATE TABLE ragged (attributes REAL[], class_text TEXT)")
        c.execute("INSERT INTO ragged VALUES ('{1,2,3}', 'a'), ('{1,2}', 'b')")
        c.execute("CREATE TABLE null_feat (attributes REAL[], class_text TEXT)")
        c.execute("INSERT INTO null_feat VALUES ('{1,2}', 'a'), (NULL, 'b')")
        c.execute("CREATE TABLE nan_feat (attributes REAL[], class_text TEXT)")
        c.execute("INSERT INTO nan_feat VALUES ('{1,2}', 'a'), ('{1,NaN}', 'b')")
        c.execute("CREATE TABLE null_elem (attributes REAL[], class_text TEXT)")
        c.execute("INSERT INTO null_elem VALUES ('{1,2}', 'a'), ('{1,NULL}', 'b')")
        c.execute("CREATE TABLE bad_types (attributes TEXT, class_text JSON, x REAL[])")
        c.execute("INSERT INTO bad_types VALUES ('1', '1', '{1}')")
        c.execute("CREATE TABLE soft (attributes REAL[], y REAL[])")
        c.execute("INSERT INTO soft VALUES ('{1,2}', '{0.5,0.5}')")
        c.execute("CREATE TABLE taken (a INT)")
        c.execute("CREATE TABLE iris_other AS SELECT * FROM iris")
        c.execute("UPDATE iris_other SET class_text = 'daisy' WHERE id = 3")
    yield


@pytest.mark.parametrize("kw,message", [
    ({"source_table": None}, r"source_table: expected a table name, got NULL"),
    ({"source_table": " "}, r"source_table: expected a table name, got an empty string"),
    ({"source_table": "nope"}, r"source_table: table 'nope' does not exist"),
    ({"source_table": "iris; DROP TABLE iris"}, r"source_table: expected a table name"),
    ({"output_table": None}, r"output_table: expected a table name, got NULL"),
    ({"output_table": ""}, r"output_table: expected a table name, got an empty string"),
    ({"output_table": "taken"}, r"output_table: table 'taken' already exists"),
    ({"output_table": "x; DROP TABLE iris"}, r"output_table: expected a table name"),
    ({"output_table": "no_schema.t"}, r"output_table: schema 'no_schema' of 'no_schema.t' does not exist"),
    ({"dependent_varname": "nope"}, r"dependent_varname: column 'nope' does not exist in table iris"),
    ({"dependent_varname": None}, r"dependent_varname: expected a column name of iris, got NULL"),
    ({"dependent_varname": "class_text, class_text"},
     r"dependent_varname: column 'class_text' is listed twice in 'class_text, class_text'"),
    ({"independent_varname": "id"}, r"independent_varname: column 'id' of iris has type integer; expected a numeric array"),
    ({"independent_varname": "class_text"}, r"dependent_varname and independent_varname: both name column 'class_text'"),
    ({"source_table": "bad_types", "dependent_varname": "class_text", "independent_varname": "x"},
     r"dependent_varname: column 'class_text' of bad_types has type json; expected class labels"),
    ({"source_table": "empty_src"}, r"source_table: table 'empty_src' is empty"),
    ({"source_table": "ragged"}, r"independent_varname: feature arrays in column 'attributes' must all have one shape; "
                                 r"found \[2\] in 1 rows, \[3\] in 1 rows"),
    ({"source_table": "null_feat"}, r"independent_varname: 1 rows of null_feat have NULL or empty feature arrays"),
    ({"source_table": "nan_feat"}, r"independent_varname: .* has NULL, NaN or infinite values inside feature arrays"),
    ({"source_table": "null_elem"}, r"independent_varname: .* has NULL, NaN or infinite values inside feature arrays"),
    ({"source_table": "soft", "dependent_varname": "y"}, r"dependent_varname: one-hot label arrays in column 'y' must hold only 0 and 1"),
    ({"buffer_size": 0}, r"buffer_size: expected a positive number of rows per buffer or NULL, got 0"),
    ({"buffer_size": -5}, r"buffer_size: expected a positive number of rows per buffer or NULL, got -5"),
    ({"normalizing_const": 0}, r"normalizing_const: expected a positive number .*, got 0"),
    ({"normalizing_const": -1.5}, r"normalizing_const: expected a positive number .*, got -1.5"),
    ({"normalizing_const": float("nan")}, r"normalizing_const: expected a positive number .*, got nan"),
    ({"num_classes": [2]}, r"num_classes: 2 is fewer than the 3 classes column 'class_text' has\n"),
    ({"num_classes": [3, 4]}, r"num_classes: expected one class count"),
    ({"num_classes": [0]}, r"num_classes: expected a positive class count, got 0"),
    ({"distribution_rules": "0"}, r"distribution_rules: expected a number of segments from 1 to 1024, got 0"),
    ({"distribution_rules": "-2"}, r"distribution_rules: expected a number of segments from 1 to 1024, got -2"),
    ({"distribution_rules": "my_dbids"}, r"distribution_rules: 'my_dbids' as a table of Greenplum segment ids \(dbid\) only has a meaning on Greenplum"),
    ({"distribution_rules": "gpu_segments"}, r"distribution_rules: 'gpu_segments' needs GPUs, and this host has none"),
])
def test_training_errors_name_the_argument_and_create_nothing(cur, error_tables, kw, message):
    error = _error(cur, TRAIN, _train_args(**kw))
    assert error.pgerror is not None
    assert re.search("madlib_dl: " + message, error.pgerror), error.pgerror
    assert not _exists(cur, "bad_out") and not _exists(cur, "bad_out_summary")


def test_a_bad_setting_is_refused_by_set(cur, error_tables):
    cur.execute("SELECT madlib_dl.version()")  # registers the settings in this session, if not yet
    error = _error(cur, "SET madlib_dl.num_segments = 'lots'")
    assert 'invalid value for parameter "madlib_dl.num_segments": "lots"' in error.pgerror
    error = _error(cur, "SET madlib_dl.num_segments = 1025")
    assert '1025 is outside the valid range for parameter "madlib_dl.num_segments" (1 .. 1024)' in error.pgerror
    cur.execute("SHOW madlib_dl.num_segments")
    assert int(cur.fetchone()[0]) >= 1


def test_a_placement_on_citus_nodes_without_citus_is_refused_naming_the_setting(cur, error_tables):
    """Without Citus (this server), 'citus_nodes' cannot be: the error says what is missing, and nothing
    is created (the Citus suite, tests/citus, packs onto worker nodes); SET refuses an unknown value."""
    cur.execute("SET madlib_dl.packed_table_placement = 'citus_nodes'")
    error = _error(cur, TRAIN, _train_args())
    assert re.search(r"madlib_dl: setting madlib_dl.packed_table_placement is 'citus_nodes' but this database has "
                     r"no Citus worker nodes", error.pgerror), error.pgerror
    assert not _exists(cur, "bad_out") and not _exists(cur, "bad_out_summary")
    error = _error(cur, "SET madlib_dl.packed_table_placement = 'everywhere'")
    assert 'invalid value for parameter "madlib_dl.packed_table_placement": "everywhere"' in error.pgerror


def test_a_list_of_scalar_feature_columns_gets_a_hint_to_make_an_array(cur, error_tables):
    cur.execute("CREATE TEMP TABLE iris_scalars AS SELECT id, attributes[1] AS sl, attributes[2] AS sw, class_text "
                "FROM iris")
    error = _error(cur, TRAIN, _train_args(source_table="iris_scalars", independent_varname="sl, sw"))
    assert error.diag.message_primary == ("madlib_dl: independent_varname: expected one array column, got 2 columns "
                                          "(sl, sw)")
    assert error.diag.message_hint.startswith("Make them one array column, e.g. CREATE TABLE iris_scalars_arrays AS "
                                              "SELECT *, ARRAY[sl, sw]::REAL[] AS features FROM ")
    assert not _exists(cur, "bad_out")


def test_a_buffer_too_large_for_the_memory_budget_is_refused_and_a_smaller_one_packs(cur):
    """Packing holds one buffer at a time: the budget bounds the buffer, not the table."""
    _drop(cur, "budget_packed")
    cur.execute("SET madlib_dl.memory_budget_mb = 1")
    call = "SELECT madlib_dl.training_preprocessor_dl('digits', 'budget_packed', 'label', 'pixels', %s, 16.0, NULL, '1')"
    error = _error(cur, call, [None])  # 1797 rows of 256 + 20 bytes, 3 copies: about 1.4 MiB
    assert re.search(r"buffer_size: buffers of 1797 rows need about 1.4 MiB while they are packed \(3 copies of one "
                     r"buffer\) but madlib_dl.memory_budget_mb is 1 MiB$", error.diag.message_primary)
    assert error.diag.message_hint == "Give a smaller buffer_size or raise the setting."
    assert not _exists(cur, "budget_packed")
    cur.execute(call, [600])
    assert len(_buffers(cur, "budget_packed", "pixels", "label")) == 3


def test_a_taken_summary_name_is_refused(cur, error_tables):
    cur.execute("CREATE TABLE fresh_summary (a INT)")
    error = _error(cur, TRAIN, _train_args(output_table="fresh"))
    assert "output_table: its summary table fresh_summary already exists" in error.pgerror
    assert not _exists(cur, "fresh")
    cur.execute("DROP TABLE fresh_summary")


VALIDATE = "SELECT madlib_dl.validation_preprocessor_dl(%s, %s, %s, %s, %s, %s, %s)"


@pytest.fixture(scope="module")
def iris_train(db, error_tables):
    with db.cursor() as c:
        c.execute("SELECT madlib_dl.training_preprocessor_dl('iris', 'iris_train', 'class_text', 'attributes', "
                  "NULL, 1, NULL, '2')")
        c.execute("CREATE TABLE iris_wide AS SELECT attributes || 1.0::float8 AS attributes, class_text FROM iris")
        c.execute("CREATE TABLE int_labels AS SELECT attributes, 1 AS class_text FROM iris")
    yield "iris_train"


@pytest.mark.parametrize("args,message", [
    (("iris_other", "bad_val", "class_text", "attributes", "iris_train", None, None),
     r"dependent_varname: class values of iris_other must be a subset of those of iris_train; not found there: 'daisy'"),
    (("iris", "bad_val", "class_text", "attributes", "nope", None, None),
     r"training_preprocessor_table: table 'nope' does not exist"),
    (("iris", "bad_val", "class_text", "attributes", None, None, None),
     r"training_preprocessor_table: expected a table name, got NULL"),
    (("iris", "bad_val", "class_text", "attributes", "iris", None, None),
     r"training_preprocessor_table: 'iris' must be made by training_preprocessor_dl\(\); its summary table iris_summary is missing"),
    (("iris", "bad_val", "class_text", "attributes", "iris_train", None, "3"),
     r"distribution_rules: '3' means 3 segments, but iris_train uses 2"),
    (("iris", "bad_val", "class_text", "attributes", "iris_train", 0, None),
     r"buffer_size: expected a positive number"),
    (("iris_wide", "bad_val", "class_text", "attributes", "iris_train", None, None),
     r"independent_varname: features of shape \[5\]; the training table iris_train has \[4\]"),
    (("int_labels", "bad_val", "class_text", "attributes", "iris_train", None, None),
     r"dependent_varname: column 'class_text' has type integer, which cannot be compared with the training labels \(text\[\]\)"),
    (("iris", "iris_train", "class_text", "attributes", "iris_train", None, None),
     r"output_table: table 'iris_train' already exists"),
])
def test_validation_errors_name_the_argument_and_create_nothing(cur, iris_train, args, message):
    error = _error(cur, VALIDATE, list(args))
    assert re.search("madlib_dl: " + message, error.pgerror), error.pgerror
    assert not _exists(cur, "bad_val") and not _exists(cur, "bad_val_summary")


def test_quoted_and_schema_qualified_names_work(cur):
    cur.execute('DROP SCHEMA IF EXISTS "Data Sets" CASCADE')
    cur.execute('CREATE SCHEMA "Data Sets"')
    cur.execute('CREATE TABLE "Data Sets"."Iris Flowers" AS SELECT attributes AS "Measures", class_text AS "Species" '
                'FROM iris')
    cur.execute("""SELECT madlib_dl.training_preprocessor_dl('"Data Sets"."Iris Flowers"', '"Data Sets"."Packed"',
                   '"Species"', '"Measures"')""")
    cur.execute('SELECT count(*), sum(("Measures_shape")[1]) FROM "Data Sets"."Packed"')
    assert cur.fetchone()[1] == 150
    cur.execute('SELECT "Species_class_values" FROM "Data Sets"."Packed_summary"')
    assert cur.fetchone()[0] == ["setosa", "versicolor", "virginica"]
    cur.execute("""SELECT madlib_dl.validation_preprocessor_dl('"Data Sets"."Iris Flowers"', '"Data Sets"."Val"',
                   '"Species"', '"Measures"', '"Data Sets"."Packed"')""")
    cur.execute('SELECT sum(("Measures_shape")[1]) FROM "Data Sets"."Val"')
    assert cur.fetchone()[0] == 150


def test_help_texts(cur):
    for fn in ("training_preprocessor_dl", "validation_preprocessor_dl"):
        cur.execute(f"SELECT madlib_dl.{fn}(), madlib_dl.{fn}('usage'), madlib_dl.{fn}('nonsense')")
        summary, usage, other = cur.fetchone()
        assert summary.startswith(f"{fn}: ") and "usage" in summary
        assert usage.startswith(f"{fn}(") and "Example" in usage
        assert "no help topic 'nonsense'" in other
