"""Where a run's training metrics come from (the setting madlib_dl.training_metrics).

MADlib evaluates every model on the whole training table at every metrics iteration: a second pass
over the training data that no Keras user makes (``fit`` reports the epoch's running means), and that
took 21–22 % of the workers' Keras time on a CIFAR-shaped search (bench/FINDINGS.md). The modes:

* ``running`` (the default): an iteration's training loss and metric are the running means its hops
  computed while they trained (each hop's last epoch over its segment's examples, as Keras' ``fit``
  reports an epoch), combined over the segments as an evaluation's are; the final iteration's are an
  evaluation of the final model on the training table, as MADlib's are (so ``training_*_final`` keep
  MADlib's meaning).
* ``evaluate``: MADlib's: every metrics iteration evaluates the model on the training table.
* ``running_only``: running means at every metrics iteration, the final one included: no pass over
  the training table besides training (what peers such as KerasTuner report).

The validation table is evaluated at every metrics iteration in every mode.
"""

from __future__ import annotations

from madlib_dl import settings
from madlib_dl.training import segment_means
from madlib_dl.training.segment_means import SegmentResult, TableMean

RUNNING, EVALUATE, RUNNING_ONLY = settings.TRAINING_METRICS.choices


def mode(db) -> str:
    return settings.read_choice(db, settings.TRAINING_METRICS)


def evaluates_training_table(mode: str, final: bool) -> bool:
    """Whether a metrics iteration evaluates the model on the training table (``final``: the model's
    last iteration of the run)."""
    return mode == EVALUATE or (mode == RUNNING and final)


def running_mean(hops: list[SegmentResult]) -> TableMean | None:
    """An iteration's training loss and metric from its hops' running means (None: no hop trained)."""
    return segment_means.combine(hops) if hops and sum(h.images for h in hops) else None
