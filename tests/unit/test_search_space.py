"""The search's pure parts: a trial's choices rebuild the grid's variants, a row's objective values and
constraints, what a trial is charged, the pruner's decisions and the trial table."""

from __future__ import annotations

import dataclasses
import itertools
import math
from pathlib import Path

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import FixedTrial, TrialState, create_trial

from engine import intermediate
from engine.config import VariantConfig
from engine.latency import DEVICES, custom_device
from engine.methods import METHODS, check_variant
from engine.models import END_POINTS
from engine.profiles import PROFILES
from engine.search import Environment, HopelessPruner, constraints, objective_values, suggest_variant, trial_table
from engine.search.objective import latency_of
from engine.search.pruner import ENCODER_STEP, FINAL_ATTR, LAST_STEP_ATTR, THRESHOLD_ATTR, step_of
from engine.search.space import ENDPOINT, search_splits
from engine.search.study import _encoder_epochs, best_trial, charged_seconds
from engine.store import ResultsStore
from engine.sweep import followups, plan

BASE = PROFILES.get("smoke").base_config("synthetic-fingerprint")
ENV = Environment(DEVICES.get("pi3"), DEVICES.get("rtx2080ti"), 40e3 * 8)
ROW = {"device_flops": 24e6, "server_flops": 13.45e9, "device_memory_bytes": 1e6, "bits_actual": 320.0,
       "deployed_val_accuracy": 0.84, "accuracy": 0.83, "base_val_accuracy": 0.85}


def _every_choice(split: str, profile: str = "smoke") -> list[dict]:
    """Every combination of a profile's three_step choices at `split`, as FixedTrial params."""
    p = PROFILES.get(profile)
    space, levels, own = p.search, p.prune.levels, p.encoding_knobs()
    trainings = [{}] if not space.enc_training else [
        {"three_step.enc_training": f"{e}:{b}"} for e, b in [(own["enc_epochs"], own["enc_backbone"]),
                                                              *space.enc_training]]
    learned = [{"three_step.coding": "two_step", "three_step.enc_d": d, "three_step.enc_bits": b}
               for d, b in itertools.product(space.enc_d, space.enc_bits)] \
        + [{"three_step.coding": "vector", "three_step.codebook": c} for c in space.codebooks]
    codings = [{"three_step.coding": "uniform", "three_step.bits": b} for b in space.bits] \
        + [{**c, **t} for c, t in itertools.product(learned, trainings)]
    prunings = [{"three_step.snapshot": "none"}] + [
        {"three_step.snapshot": k, "three_step.target": t, "three_step.hold": h, "three_step.output": o}
        for k in ["threshold", *map(str, range(levels))] for o in ["body", *map(str, space.outputs)]
        for t in space.targets or (p.prune.target,) for h in space.holds or (p.prune.hold_iterations,)]
    return [{"split": split, **q, **c} for q, c in itertools.product(prunings, codings)]


def test_every_choice_is_a_valid_variant_and_the_end_points_are_the_baselines() -> None:
    for point in END_POINTS:  # a study's reference trials
        v = suggest_variant(FixedTrial({ENDPOINT: point}), BASE, ["three_step"], reference=True)
        assert (v.method, v.split, dict(v.knobs)) == ("original", point, {"bits": 8})
    ids = set()
    for params in _every_choice("conv4_x"):
        v = suggest_variant(FixedTrial(params), BASE, ["three_step"])
        check_variant(v, "smoke")
        ids.add(v.id)
    assert len(ids) == len(_every_choice("conv4_x"))  # every choice is a different variant
    assert "conv4_x" in search_splits(BASE) and not set(search_splits(BASE)) & set(END_POINTS)


def test_a_choice_the_grid_planned_is_the_grid_s_own_variant() -> None:
    """The grid's 8-bit snapshot variants, its unpruned codings, its codings on the threshold snapshot and its
    crossed variants are all choices of the search (same id), so a study finds them in the results store."""
    grid = [p.spec.variant() for p in plan("smoke", BASE, methods=["three_step"])]
    rows = [{"id": v.id, "method": "three_step", "split": v.split, "base_id": BASE.id, "knobs": dict(v.knobs),
             "val_accuracy": 0.9, "val_threshold": 0.5} for v in grid if dict(v.knobs).get("encoder") == "none"]
    crossed = {p.spec.id for p in followups("smoke", BASE, _Store(rows), methods=["three_step"])}
    searched = {suggest_variant(FixedTrial(p), BASE, ["three_step"]).id for p in _every_choice("conv4_x")}
    assert crossed and crossed <= searched
    # every variant the grid plans is a choice: its levels, and its encoder on the snapshot its run picks
    assert any(dict(v.knobs).get("snapshot") == "threshold" for v in grid)
    assert {v.id for v in grid} <= searched


def test_the_quick_grid_s_crossed_codings_are_choices_of_its_search() -> None:
    """The quick crossing trains its learned codings cheaply, the up-front ones at the profile's setting: a search
    may choose either, so it reads both from the results store."""
    base = PROFILES.get("quick").base_config("synthetic-fingerprint")
    grid = [p.spec.variant() for p in plan("quick", base, methods=["three_step"], splits=["conv4_x"])]
    rows = [{"id": v.id, "method": "three_step", "split": v.split, "base_id": base.id, "knobs": dict(v.knobs),
             "val_accuracy": 0.9, "val_threshold": 0.5} for v in grid if dict(v.knobs).get("encoder") == "none"]
    crossed = followups("quick", base, _Store(rows), methods=["three_step"])
    searched = {suggest_variant(FixedTrial(p), base, ["three_step"]).id for p in _every_choice("conv4_x", "quick")}
    assert any(p.spec.knobs.get("enc_backbone") == "server" for p in crossed)  # the cheap setting is crossed
    assert {p.spec.id for p in crossed} <= searched
    assert {v.id for v in grid} <= searched


class _Store(list):
    def rows(self) -> list[dict]:
        return list(self)

    def __contains__(self, item: object) -> bool:
        return any(r["id"] == item for r in self)


def test_objective_values_and_constraints_read_validation_never_test() -> None:
    lat = latency_of(ROW, ENV)
    assert lat["latency"] == pytest.approx(24e6 / 24e9 + 320 / 320e3 + 13.45e9 / 13.45e12)
    assert objective_values(ROW, ENV, "latency") == [pytest.approx(lat["latency"])]
    assert objective_values(ROW, ENV, "front") == [24e6, 320.0, 0.84]
    acc, mem = constraints(ROW, ENV, 0.02)
    assert acc == pytest.approx(0.83 - 0.84) and mem < 0
    assert constraints({**ROW, "accuracy": 0.0}, ENV, 0.02) == constraints(ROW, ENV, 0.02)  # test never read
    assert constraints({**ROW, "deployed_val_accuracy": 0.82}, ENV, 0.02)[0] > 0
    small = Environment(custom_device("2GFLOP/s", "64MB"), DEVICES.get("rtx2080ti"), 20e3 * 8)
    assert constraints({**ROW, "device_memory_bytes": 80e6}, small, 0.02)[1] > 0
    # a device that counts its ONNX process's measured footprint: 90 MB measured does not fit 64 MB
    onnx = Environment(dataclasses.replace(small.device, memory_figure="onnx"), small.server, small.rate_bps)
    assert constraints({**ROW, "device_rss_onnx_bytes": 90e6}, onnx, 0.02)[1] > 0
    assert constraints(ROW, onnx, 0.02)[1] < 0  # not measured: the model's figure
    assert onnx.key() != small.key() and not latency_of({**ROW, "device_rss_onnx_bytes": 90e6}, onnx)["feasible"]
    missing = {k: v for k, v in ROW.items() if k != "deployed_val_accuracy"}
    assert constraints(missing, ENV, 0.02)[0] > 0 and objective_values(missing, ENV, "front")[2] == 0.0
    assert math.isinf(objective_values({**ROW, "bits_actual": None}, ENV, "latency")[0])


def test_a_pruning_run_is_charged_once_per_study() -> None:
    row = {"eval_seconds": 30.0, "prune_seconds": 300.0}
    assert charged_seconds(row, new_run=True) == 330.0
    assert charged_seconds(row, new_run=False) == 30.0
    assert charged_seconds(row, new_run=True, paid_s=120.0) == 210.0  # its first level paid by a stopped trial
    assert charged_seconds({}, new_run=True) == 0.0


def test_a_stopped_trial_pays_its_run_once_and_a_later_row_pays_only_the_rest(tmp_path: Path) -> None:
    """A stopped trial is charged its run's seconds up to its level the first time the study uses the run, its job's
    own seconds after that (the quick study at 10 kB/s charged six codings stopped on one trained snapshot its 158
    seconds each, twice their own); a complete row of the same run later pays what is left of the run."""
    import time
    from types import SimpleNamespace

    from engine.queue import JobQueue, JobSpec
    from engine.search import Search, SearchConfig
    from engine.search.study import RUN_PAID_ATTR, _Pending

    search = Search(SearchConfig("smoke", BASE, ENV), queue=JobQueue(tmp_path / "jobs.sqlite"),
                    store=ResultsStore(tmp_path / "results.sqlite"), cache=tmp_path)
    run = {"target": 0.32, "hold_iterations": 62}
    coded = [VariantConfig.make("three_step", "conv4_x", BASE, snapshot=0, encoder="none", bits=b, **run)
             for b in (4, 2, 8)]
    key = METHODS.get("three_step").shared_part(coded[0], "smoke")
    assert key is not None and key == METHODS.get("three_step").shared_part(coded[1], "smoke")
    reports = {intermediate.PRUNE_SECONDS: {"0": 158.0, "1": 317.0}, intermediate.PRUNE_LEVEL: {"0": 0.5}}
    charged = []
    for variant in coded[:2]:
        job = SimpleNamespace(id="j", status="done", started_at=time.time() - 70.0, reports=reports,
                              spec=JobSpec.for_variant(variant, "smoke", None))
        pending = _Pending(search.study.ask(), variant, levels=1)
        search._stop(pending, job)
        t = search.study.trials[pending.trial.number]
        assert t.state == TrialState.PRUNED and t.user_attrs["prune_run"] == key
        charged.append(t.user_attrs["charged_s"])
    assert charged[0] == pytest.approx(158.0) and charged[1] == pytest.approx(70.0, abs=1.0)
    assert t.user_attrs[RUN_PAID_ATTR] == pytest.approx(158.0)
    row = {**ROW, "id": coded[2].id, "prune_run": key, "eval_seconds": 20.0, "prune_seconds": 317.0}
    trial = search.study.ask()
    search._finish(trial, row, 20.0, "job")
    done = search.study.trials[trial.number]
    assert done.user_attrs["charged_s"] == pytest.approx(20.0 + 317.0 - 158.0)
    assert done.user_attrs[RUN_PAID_ATTR] == pytest.approx(317.0)


def _study(threshold: float | None) -> optuna.Study:
    study = optuna.create_study(pruner=HopelessPruner(margin=0.01, default_gain=0.05))
    if threshold is not None:
        study.set_user_attr(THRESHOLD_ATTR, threshold)
    return study


def test_a_pruning_level_below_the_threshold_stops_its_trial() -> None:
    study = _study(0.80)
    trial = study.ask()
    trial.report(0.83, step_of(intermediate.PRUNE_LEVEL, 0))
    assert not trial.should_prune()
    trial.report(0.79, step_of(intermediate.PRUNE_LEVEL, 1))
    assert trial.should_prune()
    unknown = _study(None).ask()
    unknown.report(0.10, 0)
    assert not unknown.should_prune()  # no threshold known yet: nothing is stopped


def test_an_encoder_epoch_is_hopeless_only_beyond_the_largest_gain_seen() -> None:
    study = _study(0.80)
    step = step_of(intermediate.ENCODER_EPOCH, 1)
    assert step == ENCODER_STEP + 1
    trial = study.ask()
    trial.report(0.76, step)  # 0.76 + 0.05 default gain + 0.01 >= 0.80: it may still get there
    assert not trial.should_prune()
    unseen = optuna.create_study(pruner=HopelessPruner())  # no finished trial: no encoder epoch is judged
    unseen.set_user_attr(THRESHOLD_ATTR, 0.80)
    first = unseen.ask()
    first.report(0.33, step)  # the quick profile's encoders at their first epoch, before the quantiser settles
    assert not first.should_prune()
    study.add_trial(create_trial(value=1.0, intermediate_values={step: 0.78}, user_attrs={FINAL_ATTR: 0.80},
                                 params={}, distributions={}))  # a finished trial gained 2 points from epoch 1
    trial = study.ask()
    trial.report(0.77, step)  # 0.77 + 0.02 + 0.01 = 0.80: not below
    assert not trial.should_prune()
    trial = study.ask()
    trial.report(0.76, step)  # 0.76 + 0.02 + 0.01 < 0.80
    assert trial.should_prune()


def test_an_encoder_epoch_is_judged_by_the_gains_of_trials_that_trained_as_many_epochs() -> None:
    """An encoder of 4 epochs still gains after its second (the quick study's: 83.7 -> 86.2 %), where one of 2 has
    ended: a trial stopped on the gain of 2-epoch trials lost a coding that would have held."""
    study = _study(0.80)
    second, last_of_2, last_of_4 = (step_of(intermediate.ENCODER_EPOCH, e) for e in (2, 2, 4))
    study.add_trial(create_trial(value=1.0, intermediate_values={second - 1: 0.5, second: 0.79},
                                 user_attrs={FINAL_ATTR: 0.79}, params={}, distributions={}))  # 2 epochs: no gain
    short = study.ask()
    short.set_user_attr(LAST_STEP_ATTR, last_of_2)
    short.report(0.785, second)  # + 0 + 0.01 < 0.80
    assert short.should_prune()
    long = study.ask()
    long.set_user_attr(LAST_STEP_ATTR, last_of_4)
    long.report(0.785, second)  # no 4-epoch trial finished yet: the default gain (0.05) applies
    assert not long.should_prune()
    study.add_trial(create_trial(value=1.0, intermediate_values={second: 0.70, last_of_4: 0.80},
                                 user_attrs={FINAL_ATTR: 0.80}, params={}, distributions={}))  # 4 epochs: +10
    long = study.ask()
    long.set_user_attr(LAST_STEP_ATTR, last_of_4)
    long.report(0.70, second)
    assert not long.should_prune()
    short = study.ask()
    short.set_user_attr(LAST_STEP_ATTR, last_of_2)
    short.report(0.70, second)
    assert short.should_prune()


def test_a_trial_knows_the_epochs_its_encoder_trains() -> None:
    """What the pruner compares a trial with: its `enc_epochs`, else the profile's; none for a uniform coding."""
    quick = PROFILES.get("quick").base_config("synthetic-fingerprint")
    coded = VariantConfig.make("three_step", "conv4_x", quick, encoder="two_step", snapshot="none")
    assert _encoder_epochs(coded, "quick") == PROFILES.get("quick").encoding_epochs == 4
    cheap = VariantConfig.make("three_step", "conv4_x", quick, encoder="two_step", snapshot="none", enc_epochs=2)
    assert _encoder_epochs(cheap, "quick") == 2
    assert _encoder_epochs(VariantConfig.make("three_step", "conv4_x", quick, bits=8, snapshot="none"), "quick") is None


def _trial(number: int, latency: float, feasible: bool, charged: float,
           state: TrialState = TrialState.COMPLETE) -> optuna.trial.FrozenTrial:
    t = create_trial(state=state, value=latency if state == TrialState.COMPLETE else None,
                     params={"x": 0.0}, distributions={"x": FloatDistribution(0, 1)},
                     user_attrs={"feasible": feasible, "charged_s": charged, "latency": latency, "method": "m",
                                 "split": "s", "device_flops": 1.0, "variant_id": f"v{number}"})
    t.number = number
    return t


def test_the_trial_table_tracks_the_best_feasible_latency_against_minutes() -> None:
    trials = [_trial(0, 0.5, True, 60), _trial(1, 0.1, False, 120), _trial(2, 0.3, True, 60),
              _trial(3, 0.2, True, 30, TrialState.PRUNED)]
    table = trial_table(trials)
    assert table["best_latency"].tolist() == [0.5, 0.5, 0.3, 0.3]  # infeasible and pruned never best
    assert table["worker_minutes"].tolist() == [1.0, 3.0, 4.0, 4.5]
    assert best_trial(trials)["number"] == 2
    assert best_trial([_trial(0, 0.1, False, 1)]) is None


def test_replicates_move_only_the_training_seed_and_their_spread_is_summed_up() -> None:
    from engine.config import VariantConfig
    from engine.report import replicate_spread

    v = VariantConfig.make("three_step", "conv4_x", BASE, snapshot=0, encoder="none", bits=8)
    r1, r2 = v.replicate(1), v.replicate(2)
    assert len({v.id, r1.id, r2.id}) == 3 and r1.replicate(0) == v
    assert v.training_seed == BASE.seed and len({v.training_seed, r1.training_seed, r2.training_seed}) == 3
    rows = [{"id": c.id, "method": c.method, "split": c.split, "base_id": BASE.id, "knobs": dict(c.knobs),
             "deployed_val_accuracy": val, "accuracy": val - 0.01, "bits_actual": 100.0}
            for c, val in ((v, 0.80), (r1, 0.82), (r2, 0.84))]
    other = {**rows[0], "id": "x", "knobs": {**rows[0]["knobs"], "bits": 4}}  # another configuration
    spread = replicate_spread([*rows, other], r2.id)
    assert spread["n"] == 3 and sorted(spread["ids"]) == sorted(r["id"] for r in rows)
    assert spread["deployed_val_accuracy_mean"] == pytest.approx(0.82)
    assert spread["deployed_val_accuracy_std"] == pytest.approx(0.02)
    assert (spread["accuracy_min"], spread["accuracy_max"]) == (pytest.approx(0.79), pytest.approx(0.83))
    assert replicate_spread(rows, "missing") is None
    check_variant(r1, "smoke")
    with pytest.raises(Exception, match="replicate"):
        check_variant(VariantConfig.make("three_step", "conv4_x", BASE, snapshot=0, replicate=-1), "smoke")


def test_a_replayed_row_holds_its_worker_until_the_jobs_running_beside_it_reach_its_end(tmp_path: Path) -> None:
    """Replay (`Search.run(replay=True)`): with a job training beside them, rows of the store are told only as far
    as the job has run on the clock (the quick study at 40 kB/s charged 40 minutes of stored rows on its second worker
    while its first trained a coding for 2 minutes); what ends is told in the clock's order, and the clock holds."""
    import time

    from engine.queue import JobQueue
    from engine.search import Search, SearchConfig
    from engine.search.study import _Pending

    search = Search(SearchConfig("smoke", BASE, ENV), queue=JobQueue(tmp_path / "jobs.sqlite"),
                    store=ResultsStore(tmp_path / "results.sqlite"), cache=tmp_path)
    search._replay = True
    told: list[str] = []
    job = _Pending(search.study.ask(), VariantConfig.make("original", "conv4_x", BASE), levels=0, start_v=0.0,
                   submitted=time.time() - 50.0)  # a job that has trained 50 s
    search.pending[job.trial.number] = job
    search._hold(30.0, lambda: told.append("row 30 s"))
    search._hold(80.0, lambda: told.append("row 80 s"))
    assert search._release() and not search._release()  # the job may end before 80 s: the second row waits
    assert told == ["row 30 s"] and search._clock == pytest.approx(30.0)
    del search.pending[job.trial.number]  # it ended at 60 s on the clock
    search._hold(60.0, lambda: told.append("job 60 s"), start_v=job.start_v)
    while search._release():
        pass
    assert told == ["row 30 s", "job 60 s", "row 80 s"] and search._clock == pytest.approx(80.0)
    search._hold(0.0, lambda: told.append("row paid"))  # a row the study paid for holds no time
    assert search._release() and search._clock == pytest.approx(80.0)


@pytest.mark.parametrize("replay", [False, True])
def test_a_study_tells_rows_it_finds_and_stops_once_every_choice_repeats(tmp_path: Path, replay: bool) -> None:
    """Every `original` choice of the smoke profile is in the store: each is told once from it (charged its recorded
    seconds), a configuration chosen again is a repeat (failed, never charged), and the study stops when the
    space is exhausted, not when the trials run out."""
    from engine.config import VariantConfig
    from engine.models import split_names
    from engine.queue import JobQueue
    from engine.search import Search, SearchConfig
    from engine.search.study import MAX_REPEATS

    store = ResultsStore(tmp_path / "results.sqlite")
    configs = [VariantConfig.make("original", s, BASE, bits=b) for s in split_names(BASE.model)
               for b in ((8,) if s in END_POINTS else PROFILES.get("smoke").search.bits)]
    for i, v in enumerate(configs):
        store.put({"id": v.id, "method": v.method, "split": v.split, "base_id": BASE.id, "knobs": dict(v.knobs),
                   "device_flops": 1e6 * i, "server_flops": 1e9, "device_memory_bytes": 1e6, "bits_actual": 8.0 * i,
                   "deployed_val_accuracy": 0.9, "accuracy": 0.5, "base_val_accuracy": 0.9, "eval_seconds": 10.0})
    cfg = SearchConfig("smoke", BASE, ENV, methods=("original",))
    search = Search(cfg, queue=JobQueue(tmp_path / "jobs.sqlite"), store=store, cache=tmp_path)
    summary = search.run(workers=0, budget_s=3600.0, poll_s=0.0, replay=replay)
    trials = search.study.get_trials()
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    repeats = [t for t in trials if t.user_attrs.get("repeat_of") is not None]
    assert sorted(t.user_attrs["variant_id"] for t in complete) == sorted(v.id for v in configs)
    assert all(t.user_attrs["source"] == "results store" and t.user_attrs["charged_s"] == 10.0 for t in complete)
    assert all(t.state == TrialState.FAIL and t.user_attrs["charged_s"] == 0.0 for t in repeats)
    assert "exhausted" in summary.stopped_because and len(repeats) >= MAX_REPEATS
    assert summary.charged_s == pytest.approx(10.0 * len(configs))
    assert summary.best["variant_id"] == configs[0].id  # the fastest row meeting the validation threshold
    if replay:  # one worker: each row holds it for its seconds in turn
        clock = [t.user_attrs["replay_clock_s"] for t in sorted(complete, key=lambda t: t.number)]
        assert clock == pytest.approx([10.0 * (i + 1) for i in range(len(complete))])
