"""The two workloads of `make bench`: what data, which architectures, which configurations.

* small: MLPs on sklearn's digits (8x8x1, 10 classes): a hop takes tens of milliseconds, so per-hop and
  per-run overheads dominate;
* compute: small CNNs on synthetic 32x32x3 images (10 classes, ~10k examples): a hop takes seconds.

``scale`` multiplies the number of examples (and so every hop's work); the configurations stay the same.
Data are integers 0..255 (0..16 for digits) normalised by the preprocessor, generated from a fixed seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Workload:
    name: str
    shape: tuple          # of one example
    normalizing_const: float
    iterations: int       # fit_multiple iterations (each: every model visits every segment once)
    learning_rates: tuple
    batch_size: int
    examples: int         # at scale 1

    def compile_grid(self) -> str:
        rates = ", ".join(repr(r) for r in self.learning_rates)
        return ("{'loss': ['categorical_crossentropy'], 'metrics': ['accuracy'], "
                f"'optimizer_params_list': [{{'optimizer': ['Adam'], 'lr': [{rates}]}}]}}")

    def fit_grid(self) -> str:
        return f"{{'batch_size': [{self.batch_size}], 'epochs': [1]}}"

    def size(self, scale: float) -> int:
        return max(40, int(round(self.examples * scale)))


SMALL = Workload("small", (8, 8, 1), 16.0, iterations=10, learning_rates=(0.01, 0.003, 0.001), batch_size=32,
                 examples=1797)
COMPUTE = Workload("compute", (32, 32, 3), 255.0, iterations=4, learning_rates=(0.003, 0.001), batch_size=64,
                   examples=10000)
WORKLOADS = {w.name: w for w in (SMALL, COMPUTE)}


def data(workload: Workload, scale: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(features as uint8-valued integers, labels 0..9) of the workload at this scale."""
    n = workload.size(scale)
    rng = np.random.default_rng(seed)
    if workload.name == "small":
        from sklearn.datasets import load_digits

        digits = load_digits()
        index = np.arange(n) % len(digits.target)
        x = digits.images[index].reshape(n, 8, 8, 1)
        if n > len(digits.target):  # repeats get a pixel of jitter so they are not exact copies
            x = np.clip(x + (index >= len(digits.target))[:, None, None, None] * rng.integers(-1, 2, x.shape), 0, 16)
        return x.astype(np.int16), digits.target[index].astype(np.int16)
    labels = rng.integers(0, 10, n)
    templates = rng.normal(128, 48, (10, 8, 8, 3))
    # Each class is a smooth 8x8 pattern upsampled to 32x32, plus noise: learnable, not trivially so.
    x = np.repeat(np.repeat(templates[labels], 4, axis=1), 4, axis=2) + rng.normal(0, 64, (n, 32, 32, 3))
    return np.clip(np.rint(x), 0, 255).astype(np.int16), labels.astype(np.int16)


def architectures(workload: Workload, keras) -> list[tuple[str, object]]:
    """(name, uncompiled Keras model) pairs; the server gets their JSON."""
    layers = keras.layers
    if workload.name == "small":
        return [(f"mlp{units}", keras.Sequential([keras.Input(workload.shape), layers.Flatten(),
                                                  layers.Dense(units, activation="relu"),
                                                  layers.Dense(10, activation="softmax")], name=f"mlp{units}"))
                for units in (32, 64)]
    return [(f"cnn{filters}", keras.Sequential([
        keras.Input(workload.shape),
        layers.Conv2D(filters, 3, activation="relu"), layers.MaxPooling2D(2),
        layers.Conv2D(2 * filters, 3, activation="relu"), layers.MaxPooling2D(2),
        layers.Flatten(), layers.Dense(64, activation="relu"), layers.Dense(10, activation="softmax")],
        name=f"cnn{filters}")) for filters in (16, 32)]
