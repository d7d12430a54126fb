"""sklearn's digits (8x8 images, 10 classes) as a table of REAL[64] rows, and a small MLP for them: the
data and model of the training tests that need a run of a few seconds."""

from __future__ import annotations

from psycopg2.extras import execute_values
from sklearn.datasets import load_digits

from madlib_dl.keras_runtime import tf_setup


def create_table(cur, table: str = "digits") -> None:
    """``table`` (id INTEGER, pixels REAL[], label INTEGER): all 1797 images, id in load order."""
    digits = load_digits()
    cur.execute(f"CREATE TABLE {table} (id INTEGER, pixels REAL[], label INTEGER)")
    execute_values(cur, f"INSERT INTO {table} VALUES %s",
                   [(i, x.tolist(), int(y)) for i, (x, y) in enumerate(zip(digits.data, digits.target))])


def mlp_json(hidden: int) -> str:
    """64 -> hidden (relu) -> 10 (softmax), built with seed 0."""
    keras = tf_setup.keras()
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(hidden, activation="relu"),
                              keras.layers.Dense(10, activation="softmax")])
    return model.to_json()


# Two configurations of one model, for runs that need more than one model in a few seconds.
TWO_CONFIGS = ["loss='categorical_crossentropy', optimizer='Adam(learning_rate=0.01)', metrics=['accuracy']",
               "loss='categorical_crossentropy', optimizer='SGD(learning_rate=0.1)', metrics=['accuracy']"]


# fit_multiple on pack_and_select's tables, caching on: (model_output_table, num_iterations).
FIT_MULTIPLE = ("SELECT madlib_dl.madlib_keras_fit_multiple_model('train_packed', %s, 'mst', %s, FALSE, NULL, NULL, "
                "FALSE, NULL, NULL, TRUE)")


def pack_and_select(cur, hidden: int, epochs: int, source: str = "digits", segments: int = 2) -> None:
    """``source`` packed as train_packed over ``segments`` segments (buffers of 100 rows), the MLP of
    ``hidden`` units as model_id 1 of table arch, and model selection table mst with TWO_CONFIGS of it
    (batch size 8, ``epochs`` per hop)."""
    cur.execute("SELECT madlib_dl.training_preprocessor_dl(%s, 'train_packed', 'label', 'pixels', 100, 16.0, NULL, "
                "%s)", [source, str(segments)])
    cur.execute("SELECT madlib_dl.load_keras_model('arch', %s::json)", [mlp_json(hidden)])
    cur.execute("SELECT madlib_dl.load_model_selection_table('arch', 'mst', ARRAY[1], %s, %s)",
                [TWO_CONFIGS, [f"batch_size=8, epochs={epochs}"]])
