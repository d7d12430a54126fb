"""A small, self-contained training run on synthetic data: proves that Keras trains inside a backend
(used by `make demo` and the integration tests) without needing any table."""

from __future__ import annotations

import json

import numpy as np

from madlib_dl.keras_runtime import builder, params, tf_setup

COMPILE = "loss='categorical_crossentropy', optimizer='Adam(lr=0.01)', metrics=['accuracy']"


def blobs(n: int, classes: int = 3, features: int = 4, seed: int = 0):
    """Gaussian blobs around random centres, one-hot labels; same data for the same seed."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 3, size=(classes, features))
    labels = rng.integers(0, classes, size=n)
    x = (centres[labels] + rng.normal(0, 1, size=(n, features))).astype(np.float32)
    return x, np.eye(classes, dtype=np.float32)[labels]


def mlp_json(features: int = 4, classes: int = 3, hidden: int = 16) -> str:
    keras = tf_setup.keras()
    model = keras.Sequential([keras.Input((features,)), keras.layers.Dense(hidden, activation="relu"),
                              keras.layers.Dense(classes, activation="softmax")])
    return model.to_json()


def train(epochs: int = 8, rows: int = 300, seed: int = 0) -> str:
    """Train the MLP on blobs; JSON with the loss and accuracy of every epoch."""
    keras = tf_setup.keras()
    keras.utils.set_random_seed(seed)
    x, y = blobs(rows, seed=seed)
    model = builder.compile_model(builder.model_from_json(mlp_json()), params.parse_compile_params(COMPILE))
    fit = params.parse_fit_params(f"batch_size=32, epochs={epochs}")
    history = model.fit(x, y, **fit.keras_kwargs()).history
    return json.dumps({"rows": rows, "parameters": int(model.count_params()),
                       "loss": [float(v) for v in history["loss"]],
                       "accuracy": [float(v) for v in history["accuracy"]]})
