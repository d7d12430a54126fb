"""ModelScheduler: models at their own pace, evaluations as tasks, no barrier between models."""

import pytest

from madlib_dl.training.model_schedule import Evaluated, IterationDone, ModelScheduler, Task

WORKERS = (0, 1, 2)


def _run_all(scheduler, on_event=lambda event: None):
    """Play the driver: assign to free workers, finish the oldest task; returns the finished tasks."""
    finished = []
    while True:
        scheduler.assign(scheduler.free_workers())
        if not scheduler.running:
            return finished
        task = scheduler.running[0]
        finished.append(task)
        event = scheduler.finish(task)
        if event is not None:
            on_event(event)


def test_a_model_visits_every_worker_once_per_iteration_until_its_target():
    scheduler = ModelScheduler(WORKERS, seed=1)
    scheduler.train(7, done=0, until=2)
    events = []
    tasks = _run_all(scheduler, events.append)
    assert [(t.iteration, t.worker) for t in tasks if t.iteration == 1].__len__() == 3
    for iteration in (1, 2):
        assert sorted(t.worker for t in tasks if t.iteration == iteration) == list(WORKERS)
    assert events == [IterationDone(7, 1), IterationDone(7, 2)]


def test_models_at_different_iterations_share_the_workers_without_a_barrier():
    scheduler = ModelScheduler(WORKERS, seed=3)
    scheduler.train(1, 0, 1)
    scheduler.train(2, 0, 3)
    scheduler.train(3, 0, 3)
    started = scheduler.assign(WORKERS)
    assert len(started) == 3 and len({t.model for t in started}) == 3  # one hop per model and per worker
    done = []
    _run_all(scheduler, done.append)
    assert IterationDone(1, 1) in done and IterationDone(2, 3) in done and IterationDone(3, 3) in done
    assert IterationDone(1, 2) not in done  # model 1 stopped at its target


def test_no_worker_idles_while_a_model_could_use_it():
    scheduler = ModelScheduler(WORKERS, seed=5)
    for model in range(1, 6):
        scheduler.train(model, 0, 2)
    while True:
        scheduler.assign(scheduler.free_workers())
        for worker in scheduler.free_workers():
            assert scheduler.runnable(worker) == [], (worker, scheduler.runnable(worker))
        if not scheduler.running:
            break
        scheduler.finish(scheduler.running[-1])


def test_evaluation_tasks_run_in_parallel_and_end_in_one_event_then_the_model_resumes():
    scheduler = ModelScheduler(WORKERS, seed=2)
    scheduler.train(4, 0, 2)
    events = []

    def on_event(event):
        events.append(event)
        if event == IterationDone(4, 1):
            scheduler.evaluate(4, [("train", s, s) for s in WORKERS] + [("validation", s, s) for s in WORKERS])
        elif isinstance(event, Evaluated):
            scheduler.resume(4)

    tasks = _run_all(scheduler, on_event)
    evaluations = [t for t in tasks if t.evaluate is not None]
    assert len(evaluations) == 6 and {t.iteration for t in evaluations} == {1}
    assert events == [IterationDone(4, 1), Evaluated(4, 1), IterationDone(4, 2)]
    # every evaluation came before the second iteration's hops
    first_hop_of_2 = min(i for i, t in enumerate(tasks) if t.evaluate is None and t.iteration == 2)
    assert max(i for i, t in enumerate(tasks) if t.evaluate is not None) < first_hop_of_2


def test_an_evaluation_task_is_taken_before_a_hop_on_its_worker():
    scheduler = ModelScheduler((0, 1), seed=0)
    scheduler.train(1, 0, 1)
    events = [scheduler.finish(t) for _ in range(2) for t in scheduler.assign(scheduler.free_workers())]
    assert events == [None, IterationDone(1, 1)]  # one hop at a time: a model is on one worker
    scheduler.train(2, 0, 5)  # could take both workers
    scheduler.evaluate(1, [("train", 0, 0), ("train", 1, 1)])
    started = scheduler.assign([0, 1])
    assert sorted((t.model, t.evaluate, t.worker) for t in started) == [(1, "train", 0), (1, "train", 1)]
    assert [scheduler.finish(t) for t in started][-1] == Evaluated(1, 1)
    assert {t.model for t in scheduler.assign([0, 1])} == {2}


def test_a_paused_model_takes_no_worker_and_training_it_on_needs_a_later_target():
    scheduler = ModelScheduler((0,), seed=0)
    scheduler.train(1, 0, 1)
    (task,) = scheduler.assign([0])
    assert scheduler.finish(task) == IterationDone(1, 1)
    scheduler.pause(1)
    assert scheduler.assign([0]) == []
    with pytest.raises(ValueError, match="must be after"):
        scheduler.train(1, 1, 1)
    scheduler.train(1, 1, 3)
    assert scheduler.assign([0]) == [Task(1, 0, 2)]


def test_misuse_is_refused():
    scheduler = ModelScheduler(WORKERS, seed=0)
    with pytest.raises(ValueError, match="distinct"):
        ModelScheduler((0, 0), seed=0)
    scheduler.train(1, 0, 2)
    (task, *_) = scheduler.assign([0])
    with pytest.raises(ValueError, match="not idle"):
        scheduler.train(1, 0, 3)
    with pytest.raises(ValueError, match="busy"):
        scheduler.assign([0])
    with pytest.raises(ValueError, match="not running"):
        scheduler.finish(Task(1, 1, 1))
    scheduler.finish(task)
    with pytest.raises(ValueError, match="no evaluation tasks"):
        scheduler.evaluate(1, [])


def test_the_same_seed_gives_the_same_tasks():
    def play(seed):
        scheduler = ModelScheduler(WORKERS, seed)
        for model in range(1, 5):
            scheduler.train(model, 0, 2)
        return _run_all(scheduler)

    assert play(11) == play(11)
    assert play(11) != play(12)
