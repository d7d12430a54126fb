"""What an AutoML checkpoint brings back without saving a policy or a scheduler object: a fresh policy
replaying the logged calls decides from there on exactly as the original did (all three methods, the
log through JSON as the checkpoint stores it), and a schedule restored from its snapshot hands out the
same work as the one it was taken from."""

from __future__ import annotations

import json
import math

import pytest

from madlib_dl.automl import asha, hyperband, replay, tpe
from madlib_dl.automl.policy import Start
from madlib_dl.training.model_schedule import IterationDone, ModelScheduler

from test_automl_policies import simulate, space

POLICIES = {
    "hyperband": lambda seed: hyperband.HyperbandPolicy(space(), 9, 3, 0, seed),
    "asha": lambda seed: asha.AshaPolicy(space(), 9, 1, 3, 12, seed),
    "tpe": lambda seed: tpe.TpePolicy(space(), 3, 10, 3, "tpe", seed),
    "rand": lambda seed: tpe.TpePolicy(space(), 3, 10, 3, "rand", seed),
}


def _diverging_loss(config, iterations):
    """Some configurations diverge (NaN), which must replay too."""
    value = math.log10(config.compile_params.parsed.optimizer.kwargs["learning_rate"])
    return math.nan if value > -2.0 else (value + 2.5) ** 2 + 1.0 / iterations


def _full_log(make, workers=3):
    logged = replay.LoggedPolicy(make(11))
    run = simulate(logged, workers, _diverging_loss)
    return logged.log, run


@pytest.mark.parametrize("method", sorted(POLICIES))
def test_a_fresh_policy_replaying_part_of_the_log_decides_the_rest_as_the_original_did(method):
    make = POLICIES[method]
    log, run = _full_log(make)
    assert len(log) > 6 and any(entry[0] == "report" for entry in log)
    assert any(e[0] == "report" and math.isnan(e[3]) for e in log), "no NaN loss in the run: the test lost its point"
    for cut in (1, len(log) // 3, len(log) // 2, len(log) - 1):
        stored = json.loads(json.dumps(log[:cut]))  # as the checkpoint's TEXT column keeps it
        policy, decided = replay.replay(make(11), stored)
        assert policy.log == stored
        for name, *args, expected in log[cut:]:
            getattr(policy, name)(*args)
            assert policy.log[-1][-1] == expected, f"{method}: after a replay of {cut} calls, {name}{args} differs"
        starts = [d for d in decided if isinstance(d, Start)]
        assert [s.key for s in starts] == list(range(1, len(starts) + 1))
    assert sorted(run.configs) == list(range(1, len(run.configs) + 1))


@pytest.mark.parametrize("method", ["hyperband", "asha", "tpe"])
def test_another_seed_does_not_replay(method):
    log, _ = _full_log(POLICIES[method])
    with pytest.raises(replay.NotReplayable, match="decided otherwise"):
        replay.replay(POLICIES[method](12), log)


@pytest.mark.parametrize("entry, message", [
    (["start", 1, "x"], "malformed"),
    (["more", 1, "not its digest"], "decided otherwise"),
    (["report", 1, 1], "malformed"),
    (["jump", "d"], "malformed"),
    ("start", "malformed"),
    (["more", "2", "d"], "not numbers"),
    (["more", True, "d"], "not numbers"),
])
def test_a_malformed_log_is_refused(entry, message):
    log, _ = _full_log(POLICIES["asha"])
    with pytest.raises(replay.NotReplayable, match=message):
        replay.replay(POLICIES["asha"](11), [log[0], entry])


def test_a_report_the_policy_rejects_is_refused_not_raised():
    with pytest.raises(replay.NotReplayable, match="entry 1 \\(report\\) failed"):
        replay.replay(POLICIES["asha"](11), [["start", replay.digest(POLICIES["asha"](11).start())],
                                             ["report", 99, 1, 0.5, "d"]])


# ---------------------------------------------------------------------------------------------------
# The schedule's snapshot

def _play(scheduler, steps, train_on):
    """Finish the oldest task ``steps`` times (assigning as a driver does); the tasks in order."""
    seen = []
    for _ in range(steps):
        seen.extend(scheduler.assign(scheduler.free_workers()))
        if not scheduler.running:
            break
        event = scheduler.finish(scheduler.running[0])
        if isinstance(event, IterationDone):
            train_on(scheduler, event)
    return seen


def _train_on(scheduler, event):
    if event.iteration < 3:
        scheduler.resume(event.model)


def test_a_restored_schedule_hands_out_the_same_work():
    workers = (0, 1, 2)
    original = ModelScheduler(workers, seed=9)
    for model in range(1, 6):
        original.train(model, 0, 3)
    _play(original, 7, _train_on)
    while not original.quiet:  # wind down as the driver does before a checkpoint
        original.finish(original.running[0])
    snapshot = json.loads(json.dumps(original.snapshot()))
    restored = ModelScheduler(workers, seed=1)  # another seed: the snapshot's generator state wins
    restored.restore(snapshot)
    assert _play(restored, 200, _train_on) == _play(original, 200, _train_on)
    assert not restored.running and not original.running


def test_a_snapshot_is_refused_while_something_runs_and_for_other_workers():
    scheduler = ModelScheduler((0, 1), seed=2)
    scheduler.train(1, 0, 2)
    scheduler.assign([0])
    with pytest.raises(ValueError, match="only while nothing runs"):
        scheduler.snapshot()
    scheduler.finish(scheduler.running[0])
    snapshot = scheduler.snapshot()
    assert snapshot["models"] == [[1, 0, 2, [1], True]]
    with pytest.raises(ValueError, match="are not"):
        ModelScheduler((5, 6), seed=2).restore(snapshot)


def test_assign_without_training_hands_out_evaluations_only():
    scheduler = ModelScheduler((0, 1), seed=4)
    scheduler.train(1, 0, 1)
    scheduler.train(2, 0, 1)
    scheduler.assign([0, 1])
    for task in scheduler.running:
        scheduler.finish(task)
    scheduler.assign([0, 1])
    done = [scheduler.finish(t) for t in scheduler.running]
    ended = [e.model for e in done if isinstance(e, IterationDone)]
    assert ended
    scheduler.evaluate(ended[0], [("train", 0, 0), ("train", 1, 1)])
    assert all(t.evaluate == "train" for t in scheduler.assign(scheduler.free_workers(), training=False))
    assert not scheduler.quiet


def test_a_drawn_random_state_fits_an_sql_integer():
    from madlib_dl.training.automl_driver import draw_random_state

    drawn = [draw_random_state() for _ in range(2000)]
    assert all(0 <= d < 2 ** 31 for d in drawn) and len(set(drawn)) > 1990
