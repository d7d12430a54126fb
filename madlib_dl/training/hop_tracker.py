"""What a driver knows of its hops between their ends, for fit_progress: each running hop's last
progress report (segment.hop_progress, every few seconds from the backend serving it), and the training
batches done so far, against the batches each model's hops hold (its fit_params on each segment's
examples). Both drivers (training.driver, training.automl_driver) and evaluation keep one."""

from __future__ import annotations

from dataclasses import dataclass

from madlib_dl.keras_runtime import params


@dataclass
class Running:
    """A hop's last report: batches of its total done, and the examples they held in ``seconds``."""
    mst_key: int
    training: bool
    batches: int
    batches_total: int
    examples: int
    seconds: float

    @property
    def examples_per_second(self) -> float | None:
        return self.examples / self.seconds if self.examples and self.seconds > 0 else None


def hop_batches(fit_params: str, examples: int) -> int:
    """The batches a training hop over ``examples`` runs with these fit_params (as segment.runtime trains)."""
    fit = params.parse_fit_params(fit_params)
    epochs = max(0, fit.epochs - fit.initial_epoch)
    per_epoch = fit.steps_per_epoch or -(-examples // (fit.batch_size or params.DEFAULT_BATCH_SIZE))
    return epochs * per_epoch


class HopTracker:
    """``images``: segment -> its examples in the training table."""

    def __init__(self, images: dict[int, int]):
        self.images = dict(images)
        self.per_segment: dict[int, dict[int, int]] = {}  # mst_key -> segment -> batches of its hop there
        self.running: dict[int, Running] = {}  # the serving segment's key (one call at a time) -> report
        self.batches_done = 0  # training batches of every hop that ended

    def add_model(self, mst_key: int, fit_params: str) -> None:
        self.per_segment[mst_key] = {s: hop_batches(fit_params, n) for s, n in self.images.items()}

    def model_batches(self, mst_key: int) -> int:
        """The training batches of one iteration of the model (a hop on every segment)."""
        return sum(self.per_segment.get(mst_key, {}).values())

    def progressed(self, where: int, mst_key: int, training: bool, report: dict) -> None:
        self.running[where] = Running(mst_key, training, int(report.get("batches", 0)),
                                      int(report.get("batches_total", 0)), int(report.get("examples", 0)),
                                      float(report.get("seconds", 0.0)))

    def ended(self, where: int, mst_key: int, segment: int | None = None) -> None:
        """The call served at ``where`` came back; a training hop on ``segment`` counts its batches."""
        self.running.pop(where, None)
        if segment is not None:
            self.batches_done += self.per_segment.get(mst_key, {}).get(segment, 0)

    def running_batches(self) -> int:
        """Training batches done by the hops running now."""
        return sum(r.batches for r in self.running.values() if r.training)

    def examples_per_second(self) -> float | None:
        """Of every hop running now that has reported."""
        rates = [r.examples_per_second for r in self.running.values() if r.examples_per_second is not None]
        return sum(rates) if rates else None

    def model_fields(self, mst_key: int) -> dict:
        """fit_progress's columns of the model's running hop (None when none of its hops is running or
        has reported yet)."""
        hop = next((r for r in self.running.values() if r.mst_key == mst_key), None)
        if hop is None:
            return {"hop_batches_done": None, "hop_batches_total": None, "hop_examples_per_second": None}
        return {"hop_batches_done": hop.batches, "hop_batches_total": hop.batches_total,
                "hop_examples_per_second": hop.examples_per_second}
