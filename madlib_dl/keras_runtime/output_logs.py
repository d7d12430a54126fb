"""A pass's loss and metrics (Keras' logs) as the hop result gives them, for one output or several.

Keras names the values of a model with several outputs ``<output>_loss`` and ``<output>_<metric>``
beside the total ``loss``. The hop result keeps the total loss, each output's loss and first metric,
and as the model's one metric the mean of the outputs' first metrics (what ranking and progress use).
"""

from __future__ import annotations

import math


def _finite_or_nan(value) -> float:
    return float(value) if value is not None else float("nan")


def output_names(model) -> list[str]:
    """The names Keras gives a model's outputs in its logs; one name for a model with one output
    (a Sequential model has no ``output_names``)."""
    return list(model.output_names) if len(model.outputs) > 1 else ["output"]


def per_output(logs: dict, output_names: list[str]) -> dict[str, dict]:
    """Each output's own values by metric name (``loss`` first). An output whose name starts with another's
    plus ``_`` claims its values first, so ``out`` never takes ``out_2_loss``."""
    claimed: dict[str, dict] = {name: {} for name in output_names}
    taken = set()
    for name in sorted(output_names, key=len, reverse=True):
        for key, value in logs.items():
            if key not in taken and key.startswith(name + "_"):
                claimed[name][key[len(name) + 1:]] = value
                taken.add(key)
    return claimed


def hop_values(logs: dict, output_names: list[str]) -> dict:
    """The hop result's loss, metric, output_losses and output_metrics (None where there is none)."""
    if not logs:
        return {"loss": float("nan"), "metric": None, "output_losses": None, "output_metrics": None}
    values = list(logs.values())
    if len(output_names) < 2:
        return {"loss": _finite_or_nan(logs.get("loss")),
                "metric": _finite_or_nan(values[1]) if len(values) > 1 else None,
                "output_losses": None, "output_metrics": None}
    outputs = per_output(logs, output_names)
    losses = [_finite_or_nan(outputs[n].get("loss")) for n in output_names]
    firsts = [next((v for k, v in outputs[n].items() if k != "loss"), None) for n in output_names]
    metrics = None if any(m is None for m in firsts) else [_finite_or_nan(m) for m in firsts]
    return {"loss": _finite_or_nan(logs.get("loss")),
            "metric": math.fsum(metrics) / len(metrics) if metrics else None,
            "output_losses": losses, "output_metrics": metrics}
