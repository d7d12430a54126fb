"""Plain Keras on the same hops: what a run on the Citus worker nodes must equal, bitwise."""

from __future__ import annotations

import numpy as np

from madlib_dl.keras_runtime import serialization, tf_setup
from madlib_dl.preprocess import packing


def segments(cur, table: str) -> dict:
    """__dist_key__ -> (examples, one-hot labels) of a packed table, in buffer order."""
    cur.execute(f"SELECT __dist_key__, x, x_shape, label, label_shape FROM {table} ORDER BY __dist_key__, buffer_id")
    data = {}
    for key, x, xs, y, ys in cur.fetchall():
        data.setdefault(key, []).append((packing.decode(bytes(x), xs, packing.FEATURE_DTYPE),
                                         packing.decode(bytes(y), ys, packing.LABEL_DTYPE).astype(np.float32)))
    return {k: (np.concatenate([a for a, _ in v]), np.concatenate([b for _, b in v])) for k, v in data.items()}


def check(cur, model, rates: dict, hops, packed: str, output: str, batch_size: int) -> None:
    """The weights in ``output`` (mst_key, model_weights) are those of plain Keras, each model (Adam at
    ``rates[mst_key]``) trained from ``model``'s weights on ``hops`` ((mst_key, segment) in order),
    one epoch per hop, unshuffled."""
    keras = tf_setup.keras()
    data = segments(cur, packed)
    replay = {}
    for key, lr in rates.items():
        replay[key] = keras.models.model_from_json(model.to_json())
        replay[key].set_weights(model.get_weights())
        replay[key].compile(optimizer=keras.optimizers.Adam(learning_rate=lr), loss="categorical_crossentropy")
    for key, segment in hops:
        x, y = data[segment]
        replay[key].fit(x, y, batch_size=batch_size, epochs=1, shuffle=False, verbose=0)
    cur.execute(f"SELECT mst_key, model_weights FROM {output} ORDER BY mst_key")
    for key, blob in cur.fetchall():
        expected = replay[key].get_weights()
        got = serialization.deserialize_weights(bytes(blob), [w.shape for w in expected])
        for g, e in zip(got, expected):
            np.testing.assert_array_equal(g, e)  # bitwise: the same hops give the same floats
