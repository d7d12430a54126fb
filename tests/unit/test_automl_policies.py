"""AutoML policies (Hyperband, ASHA, TPE) and their arguments, played by a simulated driver: no database,
no Keras. The simulator follows madlib_dl/automl/policy.py's protocol and checks every decision against
state it keeps itself."""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field

import optuna
import pytest
from optuna.trial import TrialState

from madlib_dl.automl import asha, hyperband, methods, tpe
from madlib_dl.automl.hyperband import Round
from madlib_dl.automl.policy import Continue, Start, Stop
from madlib_dl.errors import InvalidArgument, NotSupported
from madlib_dl.model_selection import grid

LR_LOW, LR_HIGH = 1e-4, 1e-1
COMPILE_GRID = (f"{{'loss': ['categorical_crossentropy', 'mse'], 'metrics': [['accuracy'], ['mse']], "
                f"'optimizer_params_list': ["
                f"{{'optimizer': ['SGD'], 'lr': [{LR_LOW}, {LR_HIGH}, 'log'], 'momentum': [0.9, 0.999, 'log_near_one']}},"
                f"{{'optimizer': ['Adam', 'Nadam'], 'lr': [{LR_LOW}, {LR_HIGH}, 'log']}}]}}")
FIT_GRID = "{'batch_size': [32, 64], 'epochs': [1]}"
SMALL_COMPILE = "{'loss': ['mse'], 'optimizer_params_list': [{'optimizer': ['SGD'], 'lr': [0.01, 0.1]}]}"
SMALL_FIT = "{'batch_size': [32, 64]}"  # with SMALL_COMPILE and one model id: 4 configurations


def space(compile_grid=COMPILE_GRID, fit_grid=FIT_GRID, ids=(1, 2)):
    return grid.SearchSpace(tuple(ids), grid.parse_compile_grid(compile_grid), grid.parse_fit_grid(fit_grid))


def lr(config):
    return config.compile_params.parsed.optimizer.kwargs["learning_rate"]


def loss_of(config, iterations):
    """Best near lr = 10^-2.5, and lower the longer a model trains (so rankings agree across rungs)."""
    return (math.log10(lr(config)) + 2.5) ** 2 + 1.0 / iterations


# ---------------------------------------------------------------------------------------------------
# The simulated driver

@dataclass
class Run:
    decisions: list = field(default_factory=list)  # every decision, in the order the policy gave them
    reports: list = field(default_factory=list)    # (key, iterations, loss)
    batches: list = field(default_factory=list)    # the decisions each report call returned
    configs: dict = field(default_factory=dict)
    trained: dict = field(default_factory=dict)    # key -> iterations trained so far
    status: dict = field(default_factory=dict)     # key -> 'queued' | 'training' | 'waiting' | 'stopped' | 'done'
    idle_time: float = 0.0
    now: float = 0.0

    def apply(self, decisions):
        for d in decisions:
            if isinstance(d, Start):
                assert d.key not in self.configs and d.key == len(self.configs) + 1, f"{d} is not the next key"
                assert d.until >= 1
                self.configs[d.key], self.trained[d.key] = d.config, 0
            elif isinstance(d, Continue):
                assert self.status[d.key] == "waiting", f"{d} for a model that is {self.status[d.key]}"
                assert d.until > self.trained[d.key], f"{d} trains nothing"
            else:
                assert isinstance(d, Stop) and d.status in ("stopped", "done")
                assert self.status[d.key] == "waiting", f"{d} for a model that is {self.status[d.key]}"
                self.status[d.key] = d.status
                continue
            self.status[d.key] = "queued"
        self.decisions.extend(decisions)

    def total_iterations(self):
        return sum(self.trained.values())


def duration(key, iterations):
    """Models train at different speeds, so reports come in an order that is not the start order."""
    return iterations * (1 + (key * 7919) % 10 / 10)


def simulate(policy, workers, loss=loss_of, check_more=None):
    """W workers; a model holds one of them for until - trained time units (the real driver spreads it
    over every segment, which changes the timing, not the protocol), then reports."""
    run = Run()
    run.apply(policy.start())
    queue = [d for d in run.decisions if isinstance(d, Start)]
    running = []  # heap of (end time, key, until)

    def fill():
        while queue and len(running) < workers:
            d = queue.pop(0)
            run.status[d.key] = "training"
            heapq.heappush(running, (run.now + duration(d.key, d.until - run.trained[d.key]), d.key, d.until))

    while True:
        fill()
        if len(running) < workers:
            idle = workers - len(running)
            new = policy.more(idle)
            assert len(new) <= idle
            if check_more:
                check_more(policy, run, idle, new)
            run.apply(new)
            queue.extend(d for d in new if not isinstance(d, Stop))
            fill()
        if not running:
            assert not queue
            return run
        end = running[0][0]
        run.idle_time += (workers - len(running)) * (end - run.now)
        run.now = end
        while running and running[0][0] == end:
            _, key, until = heapq.heappop(running)
            run.trained[key], run.status[key] = until, "waiting"
            value = loss(run.configs[key], until)
            run.reports.append((key, until, value))
            batch = policy.report(key, until, value)
            run.batches.append(batch)
            run.apply(batch)
            queue.extend(d for d in batch if isinstance(d, Continue))


# ---------------------------------------------------------------------------------------------------
# Hyperband's schedule

def table(rounds):
    """{s: ([n_i...], [r_i...])}"""
    out = {}
    for r in rounds:
        ns, rs = out.setdefault(r.s, ([], []))
        assert r.i == len(ns)
        ns.append(r.n_i)
        rs.append(r.r_i)
    return out


def test_schedule_is_the_papers_table_for_R_81():
    assert table(hyperband.schedule(81, 3)) == {
        4: ([81, 27, 9, 3, 1], [1, 3, 9, 27, 81]),
        3: ([34, 11, 3, 1], [3, 9, 27, 81]),
        2: ([15, 5, 1], [9, 27, 81]),
        1: ([8, 2], [27, 81]),
        0: ([5], [81]),
    }


def test_schedule_rows_come_s_descending_then_i_ascending():
    rounds = hyperband.schedule(81, 3)
    assert rounds == sorted(rounds, key=lambda r: (-r.s, r.i))
    assert rounds[0] == Round(4, 0, 81, 1) and rounds[-1] == Round(0, 0, 5, 81)


def test_schedule_for_madlibs_default_R_6():
    assert hyperband.schedule(6, 3) == [Round(1, 0, 3, 2), Round(1, 1, 1, 6), Round(0, 0, 2, 6)]


def test_n_uses_the_exact_ratio_not_madlibs_integer_division():
    # R=27, eta=3: s_max=3; for s=2, (s_max+1)/(s+1) = 4/3, so n = ceil(4/3 * 9) = 12 (MADlib: int(4/3) * 9 = 9)
    assert table(hyperband.schedule(27, 3))[2] == ([12, 4, 1], [3, 9, 27])


@pytest.mark.parametrize("R, eta, s_max", [(81, 3, 4), (80, 3, 3), (3, 3, 1), (8, 2, 3), (7, 2, 2),
                                           (243, 3, 5), (242, 3, 4), (10 ** 6, 10, 6), (999_999, 10, 5)])
def test_s_max_is_exact(R, eta, s_max):
    assert hyperband.s_max(R, eta) == s_max
    assert max(r.s for r in hyperband.schedule(R, eta)) == s_max


@pytest.mark.parametrize("R, eta", [(6, 3), (10, 3), (81, 3), (100, 4), (17, 2)])
def test_iterations_are_increasing_within_R_and_end_at_R(R, eta):
    for s, (ns, rs) in table(hyperband.schedule(R, eta)).items():
        assert 1 <= rs[0] and rs[-1] == R
        assert all(a < b for a, b in zip(rs, rs[1:]))
        assert all(a > b >= 1 for a, b in zip(ns, ns[1:]))


def test_skip_last_drops_the_last_diagonals():
    full = hyperband.schedule(81, 3)
    top = 4
    for k in range(top):
        kept = hyperband.schedule(81, 3, skip_last=k)
        assert kept == [r for r in full if (top - r.s) + r.i <= top - k]
    assert table(hyperband.schedule(81, 3, skip_last=3)) == {4: ([81, 27], [1, 3]), 3: ([34], [3])}
    assert table(hyperband.schedule(6, 3, skip_last=0)) == table(hyperband.schedule(6, 3))


@pytest.mark.parametrize("args, message", [
    ((6, 1), "automl_params: eta must be greater than 1, got 1"),
    ((6, 0), "automl_params: eta must be greater than 1, got 0"),
    ((2, 3), "automl_params: R should not be less than eta, got R=2, eta=3"),
    ((81, 3, -1), "automl_params: skip_last must be non-negative and at most s_max = 4, got -1"),
    ((81, 3, 5), "automl_params: skip_last must be non-negative and at most s_max = 4, got 5"),
    ((6, 3, 2), "automl_params: skip_last must be non-negative and at most s_max = 1, got 2"),
    ((6.0, 3), "automl_params: R must be an integer, got 6.0"),
    ((6, True), "automl_params: eta must be an integer, got True"),
    ((6, 3, "0"), "automl_params: skip_last must be an integer, got '0'"),
])
def test_schedule_errors(args, message):
    with pytest.raises(InvalidArgument) as e:
        hyperband.schedule(*args)
    assert str(e.value) == message


def test_skip_last_up_to_s_max_is_accepted_as_madlib_does():
    # skip_last = s_max leaves diagonal 0 only: the first round of the largest bracket
    assert table(hyperband.schedule(81, 3, skip_last=4)) == {4: ([81], [1])}
    assert table(hyperband.schedule(6, 3, skip_last=1)) == {1: ([3], [2])}


def test_s_max_is_never_0_so_skip_last_0_is_always_accepted():
    # R >= eta makes s_max >= 1: the smallest schedule has two brackets.
    assert table(hyperband.schedule(2, 2)) == {1: ([2, 1], [1, 2]), 0: ([2], [2])}


# ---------------------------------------------------------------------------------------------------
# Hyperband's policy

def hyperband_run(R=27, eta=3, skip_last=0, workers=4, seed=7, the_space=None, loss=loss_of):
    policy = hyperband.HyperbandPolicy(the_space or space(), R, eta, skip_last, random_state=seed)
    return policy, simulate(policy, workers, loss)


def test_hyperband_starts_every_bracket_at_once_with_keys_bracket_by_bracket():
    policy = hyperband.HyperbandPolicy(space(), 27, 3, random_state=1)
    starts = policy.start()
    rounds = hyperband.schedule(27, 3)
    expected = [(r.s, r.r_i) for r in rounds if r.i == 0 for _ in range(r.n_i)]
    assert [(d.bracket, d.until) for d in starts] == expected
    assert [d.key for d in starts] == list(range(1, len(expected) + 1))
    assert all(d.rung == 0 for d in starts)
    assert [d.config for d in starts] == grid.random_configs(space(), len(expected), grid.generator(1))
    assert policy.more(3) == []


@pytest.mark.parametrize("R, eta, skip_last, workers", [(27, 3, 0, 4), (81, 3, 1, 7), (6, 3, 0, 2), (16, 2, 2, 3),
                                                        (27, 3, 3, 2)])
def test_hyperband_keeps_the_lowest_losses_and_never_exceeds_R(R, eta, skip_last, workers):
    policy, run = hyperband_run(R, eta, skip_last, workers)
    rounds = {(r.s, r.i): r for r in hyperband.schedule(R, eta, skip_last)}
    last_loss = {}
    bracket = {d.key: d.bracket for d in run.decisions if isinstance(d, Start)}
    for (key, _, value), batch in zip(run.reports, run.batches):
        last_loss[key] = value
        kept = [d for d in batch if isinstance(d, Continue)]
        stopped = [d for d in batch if isinstance(d, Stop) and d.status == "stopped"]
        if kept:
            s, i = bracket[kept[0].key], kept[0].rung
            assert len(kept) == rounds[s, i].n_i and all(d.until == rounds[s, i].r_i for d in kept)
            assert max(last_loss[d.key] for d in kept) <= min(last_loss[d.key] for d in stopped)
    assert all(iterations <= R for iterations in run.trained.values())
    assert set(run.status.values()) <= {"stopped", "done"}, "a model was left waiting"
    for s in {r.s for r in rounds.values()}:
        last = max(i for (t, i) in rounds if t == s)
        done = [k for k, st in run.status.items() if st == "done" and bracket[k] == s]
        assert len(done) == rounds[s, last].n_i
        assert all(run.trained[k] == rounds[s, last].r_i for k in done)


def test_hyperband_runs_brackets_without_a_barrier_between_them():
    _, run = hyperband_run(27, 3, workers=4)
    bracket = {d.key: d.bracket for d in run.decisions if isinstance(d, Start)}
    first_continue = next(i for i, batch in enumerate(run.batches) if any(isinstance(d, Continue) for d in batch))
    first_full_budget = next(i for i, (key, _, _) in enumerate(run.reports) if bracket[key] == 0)
    # MADlib would wait for bracket 0's first stage (diagonal 0) before promoting anyone
    assert first_continue < first_full_budget


def test_hyperband_same_random_state_same_decisions():
    assert hyperband_run(seed=3)[1].decisions == hyperband_run(seed=3)[1].decisions
    assert hyperband_run(seed=3)[1].decisions != hyperband_run(seed=4)[1].decisions


def test_hyperband_with_a_small_space_fills_the_largest_bracket_first():
    small = space(SMALL_COMPILE, SMALL_FIT, ids=(1,))
    policy, run = hyperband_run(9, 3, the_space=small)
    starts = [d for d in run.decisions if isinstance(d, Start)]
    assert [(d.key, d.bracket) for d in starts] == [(1, 2), (2, 2), (3, 2), (4, 2)]  # 9 + 5 + 3 asked
    assert len({d.config.key for d in starts}) == 4
    continues = [d for d in run.decisions if isinstance(d, Continue)]
    assert [(d.rung, d.until) for d in continues] == [(1, 3)] * 3 + [(2, 9)]  # min(n_i, models left)
    assert sorted(run.status.values()) == ["done", "stopped", "stopped", "stopped"]


def test_hyperband_ranks_nan_last_and_never_continues_it():
    def diverging(config, iterations):
        return math.nan if lr(config) > 0.003 else loss_of(config, iterations)

    policy, run = hyperband_run(9, 3, loss=diverging)
    nan_keys = {k for k, _, v in run.reports if math.isnan(v)}
    assert nan_keys
    assert not any(isinstance(d, Continue) and d.key in nan_keys for d in run.decisions)
    assert hyperband.rank({1: math.nan, 2: 0.5, 3: 0.5, 4: 0.1}) == [4, 2, 3, 1]


def test_hyperband_refuses_reports_the_driver_should_not_make():
    policy = hyperband.HyperbandPolicy(space(), 6, 3, random_state=1)
    starts = policy.start()
    with pytest.raises(ValueError, match="not training"):
        policy.report(999, 2, 0.1)
    with pytest.raises(ValueError, match="expected 2"):
        policy.report(starts[0].key, 3, 0.1)
    policy.report(starts[0].key, 2, 0.1)
    with pytest.raises(ValueError, match="not training"):
        policy.report(starts[0].key, 2, 0.1)


# ---------------------------------------------------------------------------------------------------
# ASHA

@pytest.mark.parametrize("args, untils", [((9, 1, 3), [1, 3, 9]), ((10, 1, 3), [1, 3, 9, 10]), ((9, 9, 3), [9]),
                                          ((5, 2, 2), [2, 4, 5]), ((1, 1, 2), [1]), ((100, 4, 5), [4, 20, 100])])
def test_asha_rungs(args, untils):
    assert asha.rungs(*args) == untils


@pytest.mark.parametrize("args, message", [
    ((0, 1, 3), "automl_params: max_iterations must be an integer >= 1, got 0"),
    ((9, 0, 3), "automl_params: grace_iterations must be an integer >= 1, got 0"),
    ((9, 1, 1), "automl_params: reduction_factor must be an integer >= 2, got 1"),
    ((9, 1.5, 3), "automl_params: grace_iterations must be an integer >= 1, got 1.5"),
    ((9, 10, 3), "automl_params: grace_iterations must be at most max_iterations = 9, got 10"),
])
def test_asha_rung_errors(args, message):
    with pytest.raises(InvalidArgument) as e:
        asha.rungs(*args)
    assert str(e.value) == message


def asha_policy(seed=5, num_configs=27, max_iterations=9, the_space=None):
    return asha.AshaPolicy(the_space or space(), max_iterations, 1, 3, num_configs, random_state=seed)


def independent_promotable(run, policy):
    """Models that ASHA's rule says may go up now, from the simulator's own records."""
    found = []
    for k, until in enumerate(policy.rungs[:-1]):
        reported = {key: v for key, it, v in run.reports if it == until}
        best = sorted(reported, key=lambda key: (math.isnan(reported[key]), reported[key], key))
        found += [key for key in best[:len(reported) // policy.eta]
                  if run.status[key] == "waiting" and run.trained[key] == until and not math.isnan(reported[key])]
    return found


def check_no_idle_worker_while_work_exists(policy, run, idle, new):
    if len(new) < idle:
        waiting_after = independent_promotable(run, policy)
        promoted_now = {d.key for d in new if isinstance(d, Continue)}
        assert set(waiting_after) <= promoted_now, f"{waiting_after} could have been promoted"
        started = len(run.configs) + sum(isinstance(d, Start) for d in new)
        assert started == policy.num_configs, "a worker idles while configurations are left to start"


@pytest.mark.parametrize("workers", [1, 3, 8, 30])
def test_asha_keeps_workers_busy_and_spends_far_less_than_full_training(workers):
    policy = asha_policy()
    run = simulate(policy, workers, check_more=check_no_idle_worker_while_work_exists)
    assert policy.start() == []
    assert len(run.configs) == 27
    assert all(run.trained[k] <= 9 for k in run.trained)
    assert run.total_iterations() < 0.4 * 27 * 9
    done = [k for k, st in run.status.items() if st == "done"]
    assert done and all(run.trained[k] == 9 for k in done)
    assert set(run.status.values()) <= {"waiting", "done"}  # waiting ones: stopped by the driver at the end


def test_asha_promotes_by_the_rule_top_rung_first():
    policy = asha_policy(num_configs=6)
    starts = policy.more(6)
    assert [d.key for d in starts] == [1, 2, 3, 4, 5, 6] and all(d.until == 1 and d.rung == 0 for d in starts)
    assert policy.more(1) == []  # all started, nobody reported
    for key, value in [(1, 0.5), (2, 0.4)]:
        assert policy.report(key, 1, value) == []
    assert policy.more(2) == []  # 2 reports at rung 0: floor(2/3) = 0 may go up
    policy.report(3, 1, 0.9)
    assert policy.more(2) == [Continue(2, 3, 1)]  # the best of 3
    for key, value in [(4, 0.1), (5, 0.2), (6, 0.3)]:
        policy.report(key, 1, value)
    # 6 at rung 0, top 2 = 4 and 5; 2 already went up
    assert policy.more(5) == [Continue(4, 3, 1), Continue(5, 3, 1)]
    for key in (2, 4, 5):
        policy.report(key, 3, {2: 0.3, 4: 0.05, 5: 0.2}[key])
    assert policy.more(5) == [Continue(4, 9, 2)]  # rung 1: floor(3/3) = 1
    assert policy.report(4, 9, 0.01) == [Stop(4, "done")]
    assert policy.more(5) == []


def test_asha_draws_what_random_configs_draws_and_stops_when_the_space_is_exhausted():
    policy = asha_policy(seed=11)
    starts = [d for d in simulate(policy, 4).decisions if isinstance(d, Start)]
    assert [d.config for d in starts] == grid.random_configs(space(), 27, grid.generator(11))
    small = asha_policy(the_space=space(SMALL_COMPILE, SMALL_FIT, ids=(1,)))
    assert len(small.more(10)) == 4 and small.more(1) == []


def test_asha_never_promotes_nan():
    policy = asha_policy(num_configs=6)
    policy.more(6)
    for key in (1, 2, 3):
        policy.report(key, 1, math.nan if key == 1 else 1.0 + key)
    assert policy.more(1) == [Continue(2, 3, 1)]  # NaN ranks last
    for key in (4, 5, 6):
        policy.report(key, 1, math.nan)
    # 6 reports: floor(6/3) = 2 may go up, the best two are 2 and 3; never a NaN one
    assert policy.more(6) == [Continue(3, 3, 1)]
    policy.report(2, 3, math.nan)
    policy.report(3, 3, math.nan)
    assert policy.more(6) == []


def test_asha_same_random_state_same_decisions():
    assert simulate(asha_policy(seed=2), 5).decisions == simulate(asha_policy(seed=2), 5).decisions
    assert simulate(asha_policy(seed=2), 5).decisions != simulate(asha_policy(seed=3), 5).decisions


def test_asha_refuses_reports_the_driver_should_not_make():
    policy = asha_policy()
    with pytest.raises(ValueError, match="not training"):
        policy.report(1, 1, 0.1)
    policy.more(1)
    with pytest.raises(ValueError, match="expected 1"):
        policy.report(1, 3, 0.1)


# ---------------------------------------------------------------------------------------------------
# TPE (Optuna)

def tpe_run(seed=3, num_configs=30, segments=4, algorithm="tpe", loss=loss_of):
    policy = tpe.TpePolicy(space(), segments, num_configs, 5, algorithm, random_state=seed)
    return policy, simulate(policy, segments, loss)


@pytest.mark.parametrize("algorithm", ["tpe", "rand"])
def test_tpe_proposes_configs_inside_the_space(algorithm):
    policy, run = tpe_run(algorithm=algorithm)
    assert len(run.configs) == 30
    optimizers = set()
    for config in run.configs.values():
        compile_params, fit = config.compile_params.parsed, config.fit_params.parsed
        assert config.model_id in (1, 2)
        assert LR_LOW <= lr(config) <= LR_HIGH
        optimizers.add(compile_params.optimizer.name)
        if compile_params.optimizer.name == "SGD":
            assert 0.9 <= compile_params.optimizer.kwargs["momentum"] <= 0.999
        else:
            assert compile_params.optimizer.name in ("Adam", "Nadam") and "momentum" not in compile_params.optimizer.kwargs
        assert compile_params.loss in ("categorical_crossentropy", "mse")
        assert compile_params.metrics in (("accuracy",), ("mse",))
        assert fit.batch_size in (32, 64) and fit.epochs == 1
    assert optimizers == {"SGD", "Adam", "Nadam"}
    assert all(d.until == 5 for d in run.decisions if isinstance(d, Start))
    assert all(st == "done" for st in run.status.values())


def test_tpe_tells_optuna_every_result():
    policy, run = tpe_run()
    trials = sorted(policy.study.trials, key=lambda t: t.number)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 30
    told = {key: value for key, _, value in run.reports}
    assert [t.value for t in trials] == [told[k] for k in range(1, 31)]
    assert optuna.logging.get_verbosity() == optuna.logging.WARNING


def test_tpe_learns_toward_the_best_learning_rate():
    _, run = tpe_run(num_configs=40)
    distance = [abs(math.log10(lr(run.configs[k])) + 2.5) for k in sorted(run.configs)]
    assert sum(distance[-15:]) / 15 < sum(distance[:10]) / 10  # after the 10 random startup trials


def test_tpe_tells_nan_as_failed():
    policy, run = tpe_run(num_configs=6, loss=lambda c, i: math.nan if lr(c) > 0.003 else loss_of(c, i))
    failed = {t.number + 1 for t in policy.study.trials if t.state == TrialState.FAIL}
    assert failed == {k for k, _, v in run.reports if math.isnan(v)} and failed


def test_tpe_batches_start_at_the_segment_count_and_stop_at_num_configs():
    policy = tpe.TpePolicy(space(), 4, num_configs=6, random_state=1)
    first = policy.start()
    assert [d.key for d in first] == [1, 2, 3, 4]
    assert policy.report(2, 5, 0.3) == [Stop(2, "done")]
    assert [d.key for d in policy.more(5)] == [5, 6]
    assert policy.more(5) == []
    assert len(tpe.TpePolicy(space(), 8, num_configs=3, random_state=1).start()) == 3
    with pytest.raises(ValueError, match="expected 5"):
        policy.report(1, 4, 0.1)


@pytest.mark.parametrize("algorithm", ["tpe", "rand"])
def test_tpe_same_random_state_same_configs(algorithm):
    def keys(seed):
        return [c.key for c in tpe_run(seed, algorithm=algorithm)[1].configs.values()]
    assert keys(8) == keys(8)
    assert keys(8) != keys(9)


def test_tpe_reads_log_near_one_close_to_one():
    policy, run = tpe_run(algorithm="rand", num_configs=40)
    momenta = [c.compile_params.parsed.optimizer.kwargs["momentum"] for c in run.configs.values()
               if c.compile_params.parsed.optimizer.name == "SGD"]
    assert momenta and all(0.9 <= m <= 0.999 for m in momenta)


# ---------------------------------------------------------------------------------------------------
# automl_method and automl_params

@pytest.mark.parametrize("text, name", [(None, "hyperband"), ("hyperband", "hyperband"), (" HyperOpt ", "hyperopt"),
                                        ("ASHA", "asha")])
def test_method_name(text, name):
    assert methods.method_name(text) == name


@pytest.mark.parametrize("text", ["grid", "", "hyperbnad", 3])
def test_method_name_errors(text):
    with pytest.raises(InvalidArgument, match=r"^automl_method: expected 'hyperband', 'hyperopt' or 'asha', got"):
        methods.method_name(text)


def test_method_name_suggests_the_closest():
    with pytest.raises(InvalidArgument, match="did you mean 'hyperband'"):
        methods.method_name("hyperbnad")


@pytest.mark.parametrize("method, text, canonical", [
    ("hyperband", None, "R=6, eta=3, skip_last=0"),
    ("hyperband", "", "R=6, eta=3, skip_last=0"),
    ("hyperband", " R=81 ,eta=3, skip_last=1", "R=81, eta=3, skip_last=1"),
    ("hyperband", "r=9", "R=9, eta=3, skip_last=0"),  # hyperband_schedule spells it r
    ("hyperopt", None, "num_configs=20, num_iterations=5, algorithm=tpe"),
    ("hyperopt", "algorithm='RAND', num_configs=3", "num_configs=3, num_iterations=5, algorithm=rand"),
    ("hyperopt", "num_iterations=1", "num_configs=20, num_iterations=1, algorithm=tpe"),
    ("asha", None, "max_iterations=9, grace_iterations=1, reduction_factor=3, num_configs=27"),
    ("asha", "max_iterations=100, reduction_factor=4, grace_iterations=2, num_configs=50",
     "max_iterations=100, grace_iterations=2, reduction_factor=4, num_configs=50"),
])
def test_parse_params_and_describe(method, text, canonical):
    values = methods.parse_params(method, text)
    assert methods.describe(values) == canonical
    assert methods.parse_params(method, canonical) == values


@pytest.mark.parametrize("method, text, message", [
    ("hyperband", "R=6, s=1", "automl_params: unknown parameter 's' for hyperband; expected R, eta, skip_last"),
    ("hyperband", "etta=3", "automl_params: unknown parameter 'etta' for hyperband (did you mean 'eta'?); "
                            "expected R, eta, skip_last"),
    ("hyperopt", "num_config=3", "automl_params: unknown parameter 'num_config' for hyperopt (did you mean "
                                 "'num_configs'?); expected num_configs, num_iterations, algorithm"),
    ("hyperband", "R=6, r=7", "automl_params: R is given more than once"),
    ("hyperband", "R=6.5", "automl_params: R must be an integer, got 6.5"),
    ("hyperband", "R=six", "automl_params: R must be an integer, got 'six'"),
    ("hyperband", "R=2", "automl_params: R should not be less than eta, got R=2, eta=3"),
    ("hyperband", "eta=1", "automl_params: eta must be greater than 1, got 1"),
    ("hyperband", "skip_last=2", "automl_params: skip_last must be non-negative and at most s_max = 1, got 2"),
    ("hyperband", "R=1000000", "automl_params: R=1000000, eta=3, skip_last=0 makes 834008 configurations; "
                               "at most 100000 are made per call"),
    ("hyperopt", "num_configs=0", "automl_params: num_configs must be an integer >= 1, got 0"),
    ("hyperopt", "num_iterations=0", "automl_params: num_iterations must be an integer >= 1, got 0"),
    ("hyperopt", "num_configs=True", "automl_params: num_configs must be an integer >= 1, got True"),
    ("hyperopt", "algorithm=bayes", "automl_params: algorithm must be 'tpe' or 'rand', got 'bayes'"),
    ("hyperopt", "algorithm=3", "automl_params: algorithm must be 'tpe' or 'rand', got 3"),
    ("asha", "num_configs=0", "automl_params: num_configs must be an integer >= 1, got 0"),
    ("asha", "max_iterations=3, grace_iterations=4", "automl_params: grace_iterations must be at most "
                                                     "max_iterations = 3, got 4"),
    ("asha", "reduction_factor=1", "automl_params: reduction_factor must be an integer >= 2, got 1"),
    ("asha", "max_iterations", "automl_params: expected name=value, got 'max_iterations'"),
])
def test_parse_params_errors(method, text, message):
    with pytest.raises(InvalidArgument) as e:
        methods.parse_params(method, text)
    assert str(e.value) == message


def test_atpe_is_not_supported():
    with pytest.raises(NotSupported, match="^automl_params: algorithm 'atpe' .* not supported") as e:
        methods.parse_params("hyperopt", "algorithm=atpe")
    assert e.value.hint == "Use algorithm=tpe or algorithm=rand."


@pytest.mark.parametrize("method, kind", [("hyperband", hyperband.HyperbandPolicy), ("hyperopt", tpe.TpePolicy),
                                          ("asha", asha.AshaPolicy)])
def test_make_policy(method, kind):
    policy = methods.make_policy(method, methods.parse_params(method, None), space(), segments=3, random_state=1)
    assert isinstance(policy, kind) and policy.method == method
    run = simulate(policy, 3)
    assert run.configs and set(run.status.values()) <= {"waiting", "stopped", "done"}
