"""The forecast planner (`engine.search.bound`) on a synthetic world whose every configuration's figures are known:
it finds the fastest configuration that meets the threshold (checked by measuring the whole space), measures a
small share of the space to do so, measures a pruning's 8-bit row and a coding on the unpruned split before the
pruned and coded variants that need them, and rules out what the measured rows rule out."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping

import pytest

from engine.errors import UserError
from engine.latency import DEVICES
from engine.profiles import PROFILES
from engine.search import Environment, SearchConfig
from engine.search.bound import (
    CODING_SECONDS,
    Measured,
    Planner,
    _interpolated_loss,
    _Knowledge,
    enumerate_space,
    params_key,
    shape_of,
)
from engine.search.objective import latency_of
from engine.search.space import suggest_variant

BASE = PROFILES.get("quick").base_config("synthetic-fingerprint")
SPACE = enumerate_space(lambda chooser: suggest_variant(chooser, BASE, ("three_step",)))
BASE_VAL = 0.85
THRESHOLD = BASE_VAL - 0.02
TS, VQ = "two_step/4/finetune", "vector/4/finetune"  # learned codings trained as the quick profile trains them
CHEAP_TS = "two_step/2/server"  # and as its crossing does
DEVICE_FLOPS = {"stem": 1.5e6, "conv2_x": 11e6, "conv3_x": 20e6, "conv4_x": 29e6, "conv5_x": 38e6}
ELEMENTS = {"stem": 4096, "conv2_x": 4096, "conv3_x": 2048, "conv4_x": 1024, "conv5_x": 512}
PRUNE_LOSS = {"stem": 0.2, "conv2_x": 0.12, "conv3_x": 0.06, "conv4_x": 0.05, "conv5_x": 0.04}  # at full sparsity
CODE_LOSS = {"stem": 0.4, "conv2_x": 0.2, "conv3_x": 0.04, "conv4_x": 0.012, "conv5_x": 0.006}  # at 16 bits


def world(variant: object) -> dict:
    """A configuration's measured row in a made-up world: FLOPs no fewer than the planner's floor, bits and
    accuracy that fall with sparsity and with a coding's capacity, losses larger at shallow splits."""
    s = shape_of(variant, "quick")
    keep = 1.0 - s.sparsity
    flops = DEVICE_FLOPS[s.split] * (keep * keep * 1.05 if s.level >= 0 else 1.0)
    loss = PRUNE_LOSS[s.split] * s.sparsity ** 2 * (0.7 if s.hold >= 30 else 1.0) + 0.05 * max(0.0, s.output - 0.8)
    if s.family == "uniform":
        bits = ELEMENTS[s.split] * s.capacity[0] * 0.55 * (1.0 - s.output)
        code_loss = 0.0 if s.capacity[0] >= 8 else 0.004 * (8 - s.capacity[0])
    else:
        capacity = s.capacity[0] * s.capacity[1] if s.family.startswith("two_step") else math.log2(s.capacity[0]) * 4
        bits = 0.9 * capacity + 8
        code_loss = CODE_LOSS[s.split] * 16.0 / capacity * (1.5 if s.family == CHEAP_TS else 1.0)
        flops += 2e5
    return {"device_flops": flops, "server_flops": 70e6 - DEVICE_FLOPS[s.split], "device_memory_bytes": 1e6,
            "bits_actual": bits, "deployed_val_accuracy": BASE_VAL - loss - code_loss,
            "encoder_flops": 0.0 if s.family == "uniform" else 2e5}


def run(planner: Planner, truth: Callable[[object], dict], env: Environment,
        measured: dict | None = None, limit: int | None = None) -> tuple[dict[tuple, Measured], list]:
    """The planner's loop as a study runs it, one trial at a time, from the unpruned 8-bit rows (the probes), until
    it is exhausted or has measured `limit` trials."""
    measured = {} if measured is None else measured
    for c in planner.candidates:
        s = planner.shapes[c.key]
        if s.level < 0 and s.reference:
            measured[c.key] = Measured(s, truth(c.variant))
    order, best = [], math.inf
    while limit is None or len(order) < limit:
        choice, exhausted = planner.next(measured, (), best)
        if choice is None:
            assert exhausted
            return measured, order
        row = truth(choice.candidate.variant)
        measured[choice.candidate.key] = Measured(choice.shape, row)
        order.append(choice)
        lat = latency_of(row, env)
        if row["deployed_val_accuracy"] >= THRESHOLD and lat["feasible"]:
            best = min(best, lat["latency"])
    return measured, order


def brute_force(planner: Planner, env: Environment) -> float:
    """The best latency over every candidate of the planner, each measured."""
    out = math.inf
    for c in planner.candidates:
        row = world(c.variant)
        if row["deployed_val_accuracy"] >= THRESHOLD:
            out = min(out, latency_of(row, env)["latency"])
    return out


@pytest.mark.parametrize("rate", [10e3 * 8, 40e3 * 8, 100e3 * 8])
def test_the_planner_finds_the_fastest_configuration_measuring_a_small_share(rate: float) -> None:
    env = Environment(DEVICES.get("pi3"), DEVICES.get("rtx2080ti"), rate)
    planner = Planner(SPACE, "quick", env, THRESHOLD)
    measured, order = run(planner, world, env)
    best = min(latency_of(m.row, env)["latency"] for m in measured.values()
               if m.row["deployed_val_accuracy"] >= THRESHOLD)
    assert best == pytest.approx(brute_force(planner, env))
    assert len(measured) < 0.1 * len(planner.candidates), (len(measured), len(planner.candidates))


def test_what_a_pruned_and_coded_variant_needs_is_measured_before_it() -> None:
    """A coding alone on the unpruned split (for a learned coding, a learned coding there: the others are expected
    to lose what it lost) and a pruning's 8-bit row come before a pruned and coded variant."""
    env = Environment(DEVICES.get("pi3"), DEVICES.get("rtx2080ti"), 40e3 * 8)
    planner = Planner(SPACE, "quick", env, THRESHOLD)
    _, order = run(planner, world, env)
    seen: list = []
    for f in order:
        s = f.shape
        if s.level >= 0 and not s.reference:
            assert any(t.split == s.split and t.pruning == s.pruning and t.reference for t in seen), f
            assert any(t.split == s.split and t.level < 0 and (
                (t.family, t.capacity) == (s.family, s.capacity) or "uniform" not in (s.family, t.family))
                for t in seen), f
        seen.append(s)


def test_a_pruning_that_missed_rules_out_the_sparser_and_a_coding_that_lost_rules_out_the_smaller() -> None:
    """The rules, each from a measured row: sparsity, capacity and depth order what can no longer meet the threshold."""
    env = Environment(DEVICES.get("pi3"), DEVICES.get("rtx2080ti"), 40e3 * 8)
    planner = Planner(SPACE, "quick", env, THRESHOLD)
    by = {}
    for c in planner.candidates:
        by.setdefault(planner.shapes[c.key].split, []).append(c)

    def pick(split: str, level: int, family: str, *capacity: float, **run: object) -> object:
        for c in by[split]:
            s, k = planner.shapes[c.key], dict(c.variant.knobs)
            if (s.level, s.family, s.capacity) == (level, family, capacity) and all(
                    k.get(n) == v for n, v in run.items()):
                return c
        raise AssertionError((split, level, family, capacity, run))

    probe = pick("conv4_x", -1, "uniform", 8)
    missed = pick("conv4_x", 1, "uniform", 8, target=0.32, hold_iterations=62, output=None)
    lost = pick("conv4_x", -1, TS, 16, 2)
    shallow = pick("conv3_x", -1, "uniform", 8)
    measured = {probe.key: Measured(planner.shapes[probe.key], {**world(probe.variant)}),
                shallow.key: Measured(planner.shapes[shallow.key], {**world(shallow.variant)}),
                missed.key: Measured(planner.shapes[missed.key], {**world(missed.variant),
                                                                  "deployed_val_accuracy": 0.70}),
                lost.key: Measured(planner.shapes[lost.key], {**world(lost.variant), "deployed_val_accuracy": 0.75})}
    forecasts = {f.candidate.key: f for f in planner.forecasts(measured)}
    deeper = pick("conv4_x", 1, "uniform", 4, target=0.48, hold_iterations=30, output=0.9)
    shallower = pick("conv4_x", 0, "uniform", 8, target=0.32, hold_iterations=62, output=None)
    smaller = pick("conv4_x", -1, TS, 8, 1)
    larger = pick("conv4_x", -1, TS, 32, 2)
    assert not forecasts[deeper.key].possible and "sparser" in forecasts[deeper.key].why
    assert forecasts[shallower.key].possible
    assert not forecasts[smaller.key].possible and forecasts[larger.key].possible
    # a shallower split codes no better: the loss rules the same coding out there too, but not at a deeper split
    assert not forecasts[pick("conv3_x", -1, TS, 16, 2).key].possible
    assert forecasts[pick("conv3_x", -1, TS, 32, 2).key].possible
    # the same coding trained otherwise is a family apart: the loss says nothing of it
    assert forecasts[pick("conv4_x", -1, CHEAP_TS, 16, 2).key].possible
    # a coding measured at a split gives its bits there to every pruning
    pruned = pick("conv4_x", 1, TS, 16, 2, target=0.48, hold_iterations=30, output=None)
    assert forecasts[pruned.key].bits == pytest.approx(world(lost.variant)["bits_actual"])


def test_a_missed_pruning_rules_out_only_sparser_runs_allocated_alike() -> None:
    """The quick space's runs allocate by sensitivity; a uniform run that missed at the same sparsity says nothing of
    them (it prunes other groups), a sensitivity run that missed rules out the sparser ones."""
    env = Environment(DEVICES.get("pi3"), DEVICES.get("rtx2080ti"), 40e3 * 8)
    planner = Planner(SPACE, "quick", env, THRESHOLD)

    def pick(level: int, **run: object) -> object:
        return next(c for c in planner.candidates if (s := planner.shapes[c.key]).split == "conv4_x"
                    and s.level == level and s.reference
                    and all(dict(c.variant.knobs).get(n) == v for n, v in run.items()))

    probe = next(c for c in planner.candidates if (s := planner.shapes[c.key]).split == "conv4_x" and s.level < 0
                 and s.reference)
    missed = pick(0, target=0.32, hold_iterations=62, output=None)
    sparser = pick(1, target=0.48, hold_iterations=30, output=None)
    shape = planner.shapes[missed.key]
    assert shape.allocation == "sensitivity" == planner.shapes[sparser.key].allocation

    def uniform(knobs: tuple) -> tuple:
        return tuple((k, "uniform" if k == "allocation" else v) for k, v in knobs)

    other = dataclasses.replace(shape, pruning=uniform(shape.pruning), run=uniform(shape.run))
    low = {**world(missed.variant), "deployed_val_accuracy": 0.70}
    measured = {probe.key: Measured(planner.shapes[probe.key], world(probe.variant)),
                ("uniform run",): Measured(other, low)}
    assert {f.candidate.key: f for f in planner.forecasts(measured)}[sparser.key].possible
    measured[missed.key] = Measured(shape, low)
    forecast = {f.candidate.key: f for f in planner.forecasts(measured)}[sparser.key]
    assert not forecast.possible and "no sparser pruning" in forecast.why


def test_every_trial_s_params_are_one_candidate_s_key() -> None:
    keys = [c.key for c in SPACE]
    assert len(keys) == len(set(keys))
    assert len({c.variant.id for c in SPACE}) == len(SPACE)
    c = SPACE[len(SPACE) // 2]
    assert params_key(dict(reversed(c.params))) == c.key


def test_nothing_left_to_beat_the_best_stops_the_planner() -> None:
    env = Environment(DEVICES.get("pi3"), DEVICES.get("rtx2080ti"), 40e3 * 8)
    planner = Planner(SPACE, "quick", env, THRESHOLD)
    measured: Mapping = {}
    choice, exhausted = planner.next(measured, (), 0.0)  # nothing is forecast below 0 s; no split is known either
    assert choice is None and exhausted


def test_a_study_names_what_proposes_its_trials_and_tpe_studies_keep_their_names() -> None:
    env = Environment(DEVICES.get("pi3"), DEVICES.get("rtx2080ti"), 40e3 * 8)
    auto, tpe = SearchConfig("quick", BASE, env), SearchConfig("quick", BASE, env, sampler="tpe")
    assert auto.proposer == "forecast" and auto.key()["sampler"] == "forecast"
    assert tpe.proposer == "tpe" and "sampler" not in tpe.key() and tpe.name != auto.name
    assert SearchConfig("quick", BASE, env, objective="front").proposer == "tpe"
    assert SearchConfig("quick", BASE, env, methods=("three_step", "original")).proposer == "tpe"
    with pytest.raises(UserError, match="--sampler tpe"):
        SearchConfig("quick", BASE, env, objective="front", sampler="forecast")
    with pytest.raises(UserError, match="--sampler is one of"):
        SearchConfig("quick", BASE, env, sampler="cmaes")


def test_a_second_worker_is_not_sent_to_wait_on_the_first_s_pruning_run() -> None:
    env = Environment(DEVICES.get("pi3"), DEVICES.get("rtx2080ti"), 40e3 * 8)
    planner = Planner(SPACE, "quick", env, THRESHOLD)
    measured: dict = {}
    for c in planner.candidates:
        s = planner.shapes[c.key]
        if s.level < 0:  # every coding measured on every unpruned split: what comes next needs a pruning run
            measured[c.key] = Measured(s, world(c.variant))
    first, _ = planner.next(measured)
    assert first is not None and first.shape.level >= 0 and first.shape.reference
    second, _ = planner.next(measured, [first.candidate.key])
    assert second is not None and (second.shape.split, second.shape.run) != (first.shape.split, first.shape.run)


def test_a_second_worker_does_not_measure_what_the_first_s_trial_will_decide() -> None:
    env = Environment(DEVICES.get("pi3"), DEVICES.get("rtx2080ti"), 40e3 * 8)
    planner = Planner(SPACE, "quick", env, THRESHOLD)
    measured = {c.key: Measured(s, world(c.variant)) for c in planner.candidates
                if (s := planner.shapes[c.key]).level < 0 and s.reference}
    first, _ = planner.next(measured)
    assert first is not None and first.shape.level < 0 and not first.shape.reference
    second, _ = planner.next(measured, [first.candidate.key])
    assert second is not None
    told = (second.shape.family == first.shape.family and second.shape.level < 0
            and planner.depth[second.shape.split] <= planner.depth[first.shape.split]
            and all(a <= b for a, b in zip(second.shape.capacity, first.shape.capacity, strict=True)))
    assert not told, (first.shape, second.shape)
    # a learned coding of another family at the same split waits too: what the first loses, it is expected to lose
    assert first.shape.family != "uniform"
    assert not (second.shape.split == first.shape.split and second.shape.level < 0
                and second.shape.family != "uniform"), (first.shape, second.shape)


def test_a_coding_s_trial_is_forecast_to_cost_what_its_family_s_trials_cost() -> None:
    """A cheaply trained encoder costs a fraction of a fine-tuned one: each family's own median, the median of every
    coding for a family not timed yet."""
    env = Environment(DEVICES.get("pi3"), DEVICES.get("rtx2080ti"), 40e3 * 8)
    planner = Planner(SPACE, "quick", env, THRESHOLD)

    def unpruned(family: str, *capacity: float) -> object:
        return next(c for c in planner.candidates if (s := planner.shapes[c.key]).split == "conv4_x"
                    and (s.level, s.family, s.capacity) == (-1, family, capacity))

    measured = {c.key: Measured(s, world(c.variant), seconds=10.0) for c in planner.candidates
                if (s := planner.shapes[c.key]).level < 0 and s.reference}
    for c, seconds in ((unpruned(CHEAP_TS, 16, 2), 100.0), (unpruned(TS, 32, 2), 400.0)):
        measured[c.key] = Measured(planner.shapes[c.key], world(c.variant), seconds=seconds)
    forecasts = {f.candidate.key: f for f in planner.forecasts(measured)}
    assert forecasts[unpruned(CHEAP_TS, 8, 1).key].seconds == pytest.approx(100.0)
    assert forecasts[unpruned(TS, 8, 1).key].seconds == pytest.approx(400.0)
    assert forecasts[unpruned(VQ, 16).key].seconds == pytest.approx(250.0)


def test_a_coded_trial_stopped_while_its_encoder_trained_rules_out_its_coding() -> None:
    env = Environment(DEVICES.get("pi3"), DEVICES.get("rtx2080ti"), 40e3 * 8)
    planner = Planner(SPACE, "quick", env, THRESHOLD)
    measured = {c.key: Measured(s, world(c.variant)) for c in planner.candidates
                if (s := planner.shapes[c.key]).level < 0 and s.reference}
    stopped = next(c for c in planner.candidates if (s := planner.shapes[c.key]).level < 0 and s.split == "conv3_x"
                   and s.family == VQ and s.capacity == (256.0,))
    measured[stopped.key] = Measured(planner.shapes[stopped.key], None, {}, stopped=True)
    forecasts = planner.forecasts(measured)
    vector = [f for f in forecasts if f.shape.family == VQ and f.shape.split in ("stem", "conv2_x", "conv3_x")]
    assert vector and not any(f.possible for f in vector)
    assert any(f.possible for f in forecasts if f.shape.family == VQ and f.shape.split == "conv4_x")
    failed = dict(measured)  # a trial that failed (an error) tells nothing
    failed[stopped.key] = Measured(planner.shapes[stopped.key], None, {}, stopped=False)
    assert any(f.possible for f in planner.forecasts(failed) if f.shape.family == VQ
               and f.shape.split == "conv3_x")


def test_a_second_worker_does_not_start_a_pruning_a_run_in_flight_will_rule_out() -> None:
    env = Environment(DEVICES.get("pi3"), DEVICES.get("rtx2080ti"), 40e3 * 8)
    planner = Planner(SPACE, "quick", env, THRESHOLD)
    measured = {c.key: Measured(s, world(c.variant)) for c in planner.candidates
                if (s := planner.shapes[c.key]).level < 0}
    flying: list = []
    for _ in range(3):  # three workers ask in turn, none of their runs ruling another's out
        choice, _ = planner.next(measured, [f.candidate.key for f in flying])
        assert choice is not None and choice.shape.level >= 0
        for t in (f.shape for f in flying):
            first = (t.sparsity / (t.level + 1), t.output / (t.level + 1))
            s = choice.shape
            assert not (s.split == t.split and s.run != t.run and t.hold >= s.hold and first[0] <= s.sparsity
                        and first[1] <= s.output), (t, s)
        flying.append(choice)


def test_a_level_of_a_run_below_the_threshold_rules_out_its_deeper_levels() -> None:
    env = Environment(DEVICES.get("pi3"), DEVICES.get("rtx2080ti"), 40e3 * 8)
    planner = Planner(SPACE, "quick", env, THRESHOLD)
    measured = {c.key: Measured(s, world(c.variant)) for c in planner.candidates
                if (s := planner.shapes[c.key]).level < 0}
    stopped = next(c for c in planner.candidates if (s := planner.shapes[c.key]).split == "conv4_x" and s.level == 1
                   and s.reference and s.hold == 30 and s.sparsity == pytest.approx(0.48))
    # its first level validated within the margin below the threshold: the study's pruner stopped it there
    measured[stopped.key] = Measured(planner.shapes[stopped.key], None, {0: THRESHOLD - 0.003}, stopped=True)
    same_run = [f for f in planner.forecasts(measured) if f.shape.split == "conv4_x"
                and f.shape.run == planner.shapes[stopped.key].run]
    assert same_run and not any(f.possible for f in same_run)
    assert all("no deeper missed" in f.why for f in same_run if f.shape.level >= 0)


def compounding(variant: object) -> dict:
    """The made-up world, where a learned coding on a pruned snapshot loses a point more than on the unpruned split
    (as the quick study's codings did on conv4_x's first level)."""
    row, s = world(variant), shape_of(variant, "quick")
    if s.level >= 0 and s.family.split("/")[0] in ("two_step", "vector"):
        row["deployed_val_accuracy"] -= 0.01
    return row


@pytest.mark.parametrize("rate", [10e3 * 8, 40e3 * 8])
def test_the_planner_finds_the_fastest_early_where_codings_lose_more_on_a_snapshot(rate: float) -> None:
    """Ruling out takes longer there (a coding's loss on the unpruned split bounds too little), but the order by
    expected gain, which carries the extra loss measured on a snapshot to the others, reaches the optimum within
    the first 5 % of the space (a latency order needed about 300 trials, 13 %)."""
    env = Environment(DEVICES.get("pi3"), DEVICES.get("rtx2080ti"), rate)
    planner = Planner(SPACE, "quick", env, THRESHOLD)
    measured, _ = run(planner, compounding, env, limit=int(0.05 * len(planner.candidates)))
    best = min(latency_of(m.row, env)["latency"] for m in measured.values()
               if m.row["deployed_val_accuracy"] >= THRESHOLD)
    truth = min(latency_of(r, env)["latency"] for c in planner.candidates
                if (r := compounding(c.variant))["deployed_val_accuracy"] >= THRESHOLD)
    assert best == pytest.approx(truth)


def test_estimates_carry_a_snapshot_s_extra_loss_and_a_pruning_s_fitted_loss() -> None:
    env = Environment(DEVICES.get("pi3"), DEVICES.get("rtx2080ti"), 40e3 * 8)
    planner = Planner(SPACE, "quick", env, THRESHOLD)

    def find(split: str, level: int, family: str, capacity: tuple, **run: object) -> object:
        return next(c for c in planner.candidates if (s := planner.shapes[c.key]).split == split
                    and (s.level, s.family, s.capacity) == (level, family, capacity)
                    and all(dict(c.variant.knobs).get(n) == v for n, v in run.items()))

    snapshot = {"target": 0.32, "hold_iterations": 62, "output": None}
    measured = {c.key: Measured(s, world(c.variant)) for c in planner.candidates
                if (s := planner.shapes[c.key]).level < 0 and (s.reference or s.split == "conv4_x")}
    ref = find("conv4_x", 0, "uniform", (8.0,), **snapshot)
    coded = find("conv4_x", 0, VQ, (16.0,), **snapshot)
    for c in (ref, coded):
        measured[c.key] = Measured(planner.shapes[c.key], compounding(c.variant))
    forecasts = {f.candidate.key: f for f in planner.forecasts(measured, best_latency=1.0)}
    wide = find("conv4_x", 0, TS, (32.0, 2.0), **snapshot)
    ref_val = world(ref.variant)["deployed_val_accuracy"]
    unpruned_loss = BASE_VAL - world(find("conv4_x", -1, TS, (32.0, 2.0)).variant)["deployed_val_accuracy"]
    assert forecasts[wide.key].estimate == pytest.approx(ref_val - unpruned_loss - 0.01)
    assert forecasts[wide.key].val > forecasts[wide.key].estimate  # the bound stays optimistic
    # another run's snapshot: the split's loss fitted as a s^2 to the one measured pruning, held 62 where it is held
    # 30 (no split measured both holds: the loss inversely proportional to the hold)
    other = find("conv4_x", 1, "uniform", (8.0,), target=0.48, hold_iterations=30, output=None)
    s0, s1 = planner.shapes[ref.key].sparsity, planner.shapes[other.key].sparsity
    assert forecasts[other.key].estimate == pytest.approx(BASE_VAL - (BASE_VAL - ref_val) * (s1 / s0) ** 2 * 62 / 30)


def test_a_run_not_trained_yet_costs_its_run_s_seconds_besides_the_coding() -> None:
    env = Environment(DEVICES.get("pi3"), DEVICES.get("rtx2080ti"), 40e3 * 8)
    planner = Planner(SPACE, "quick", env, THRESHOLD)
    probes = [c for c in planner.candidates if (s := planner.shapes[c.key]).level < 0 and s.reference]
    measured = {c.key: Measured(planner.shapes[c.key], world(c.variant), seconds=20.0) for c in probes}
    coding = next(c for c in planner.candidates if (s := planner.shapes[c.key]).level < 0 and not s.reference
                  and s.split == "conv4_x")
    run_ref = next(c for c in planner.candidates if (s := planner.shapes[c.key]).level == 0 and s.reference
                   and s.split == "conv4_x")
    measured[coding.key] = Measured(planner.shapes[coding.key], world(coding.variant), seconds=90.0)
    measured[run_ref.key] = Measured(planner.shapes[run_ref.key], world(run_ref.variant), seconds=400.0)
    k = _Knowledge(measured.values(), THRESHOLD, planner.depth)
    same_run = next(c for c in planner.candidates if (s := planner.shapes[c.key]).run == planner.shapes[
        run_ref.key].run and s.split == "conv4_x" and s.level == 0 and not s.reference)  # the row's level
    deeper_level = next(c for c in planner.candidates if (s := planner.shapes[c.key]).run == planner.shapes[
        run_ref.key].run and s.split == "conv4_x" and s.level == 1 and not s.reference)
    assert k.cost(planner.shapes[same_run.key]) == pytest.approx(90.0)  # the run is trained there
    assert k.cost(planner.shapes[deeper_level.key]) == pytest.approx(490.0)


def test_the_planner_proposes_nothing_forecast_to_overrun_the_budget() -> None:
    """Before any trial is timed, a coding is forecast at `CODING_SECONDS` and a pruning at more: a budget of less
    proposes nothing and `over_budget` says why; a trial in flight is paid its forecast before the next is chosen."""
    env = Environment(DEVICES.get("pi3"), DEVICES.get("rtx2080ti"), 40e3 * 8)
    planner = Planner(SPACE, "quick", env, THRESHOLD)
    measured, _ = run(planner, world, env, limit=0)
    free, _ = planner.next(measured, (), math.inf)
    assert free is not None and free.seconds == CODING_SECONDS and not planner.over_budget
    assert planner.next(measured, (), math.inf, budget_s=CODING_SECONDS)[0] == free
    assert planner.next(measured, (), math.inf, budget_s=CODING_SECONDS - 1) == (None, True)
    assert planner.over_budget
    after = planner.next(measured, [free.candidate.key], math.inf, budget_s=2 * CODING_SECONDS - 1)
    assert after == (None, False) and planner.over_budget  # it waits: the trial in flight may free the budget
    after, _ = planner.next(measured, [free.candidate.key], math.inf, budget_s=2 * CODING_SECONDS)
    assert after is not None and after.candidate.key != free.candidate.key


def test_an_unmeasured_coding_is_estimated_from_the_nearest_larger_one_scaled_by_capacity() -> None:
    """With only the d = 32, 2-bit encoder measured at conv4_x, the d = 16, 2-bit one (half the bits) is expected to
    lose twice as much; the rules' bound for it stays the larger one's loss (optimistic)."""
    env = Environment(DEVICES.get("pi3"), DEVICES.get("rtx2080ti"), 40e3 * 8)
    planner = Planner(SPACE, "quick", env, THRESHOLD)

    def unpruned(family: str, capacity: tuple) -> object:
        return next(c for c in planner.candidates if (s := planner.shapes[c.key]).split == "conv4_x"
                    and (s.level, s.family, s.capacity) == (-1, family, capacity))

    measured = {c.key: Measured(s, world(c.variant)) for c in planner.candidates
                if (s := planner.shapes[c.key]).level < 0 and s.reference}
    wide, narrow = unpruned(TS, (32.0, 2.0)), unpruned(TS, (16.0, 2.0))
    measured[wide.key] = Measured(planner.shapes[wide.key], world(wide.variant))
    loss = BASE_VAL - world(wide.variant)["deployed_val_accuracy"]
    f = {f.candidate.key: f for f in planner.forecasts(measured, best_latency=1.0)}[narrow.key]
    assert f.estimate == pytest.approx(BASE_VAL - 2 * loss)
    assert f.val == pytest.approx(BASE_VAL - loss)


def test_a_learned_coding_that_lost_at_a_split_lowers_the_others_expected_there_and_shallower() -> None:
    """The quick study's conv2_x: after its 16-codeword codebook kept 17.5 %, the planner tried seven other codings
    there. A coding of another family is expected to lose about as much (scaled by the square root of the capacity
    ratio) at that split and every shallower one; a deeper split keeps its own estimate, and the rules' bound (`val`)
    stays what the family alone says."""
    env = Environment(DEVICES.get("pi3"), DEVICES.get("rtx2080ti"), 40e3 * 8)
    planner = Planner(SPACE, "quick", env, THRESHOLD)

    def unpruned(split: str, family: str, capacity: tuple) -> object:
        return next(c for c in planner.candidates if (s := planner.shapes[c.key]).split == split
                    and (s.level, s.family, s.capacity) == (-1, family, capacity))

    measured = {c.key: Measured(s, world(c.variant)) for c in planner.candidates
                if (s := planner.shapes[c.key]).level < 0 and s.reference}
    lost = unpruned("conv2_x", CHEAP_TS.replace("two_step", "vector"), (16.0,))
    measured[lost.key] = Measured(planner.shapes[lost.key], {**world(lost.variant), "deployed_val_accuracy": 0.175})
    forecasts = {f.candidate.key: f for f in planner.forecasts(measured, best_latency=1.0)}
    for split in ("stem", "conv2_x"):
        wide = forecasts[unpruned(split, TS, (32.0, 2.0)).key]
        loss = (BASE_VAL - 0.175) * math.sqrt(4.0 / 64.0)
        assert wide.estimate == pytest.approx(BASE_VAL - loss) and wide.val == pytest.approx(BASE_VAL)
        assert wide.value < 1e-9
    deeper = forecasts[unpruned("conv3_x", TS, (32.0, 2.0)).key]
    assert deeper.estimate == pytest.approx(BASE_VAL) and deeper.value > 0
    choice, _ = planner.next(measured, (), 1.0)
    assert choice is not None and choice.shape.split not in ("stem", "conv2_x"), choice.shape
    # a trial stopped while its encoder trained counts as lost at least its margin over the threshold and one more
    stopped = unpruned("conv3_x", VQ, (256.0,))
    measured[stopped.key] = Measured(planner.shapes[stopped.key], None, {}, stopped=True)
    other = {f.candidate.key: f for f in planner.forecasts(measured, best_latency=1.0)}[
        unpruned("conv3_x", TS, (8.0, 1.0)).key]
    assert other.estimate == pytest.approx(BASE_VAL - (BASE_VAL - (THRESHOLD - 0.01)) * math.sqrt(8.0 / 8.0))


def test_a_learned_coding_measured_at_a_split_stands_for_the_others_before_a_pruned_one() -> None:
    """Before a pruned and coded variant, a learned coding other than its own measured on the unpruned split is
    enough (a quick study measured 15 codings alone at conv5_x, 35 of its charged minutes, before pruned ones); a
    uniform coding still needs its own."""
    env = Environment(DEVICES.get("pi3"), DEVICES.get("rtx2080ti"), 10e3 * 8)
    planner = Planner(SPACE, "quick", env, THRESHOLD)

    def find(level: int, family: str, capacity: tuple, **run: object) -> object:
        return next(c for c in planner.candidates if (s := planner.shapes[c.key]).split == "conv4_x"
                    and (s.level, s.family, s.capacity) == (level, family, capacity)
                    and all(dict(c.variant.knobs).get(n) == v for n, v in run.items()))

    run = {"target": 0.32, "hold_iterations": 62, "output": None}
    measured = {c.key: Measured(s, world(c.variant)) for c in planner.candidates
                if (s := planner.shapes[c.key]).level < 0 and s.reference}
    for c in (find(-1, TS, (32.0, 2.0)), find(0, "uniform", (8.0,), **run)):
        measured[c.key] = Measured(planner.shapes[c.key], world(c.variant))
    coded = find(0, VQ, (16.0,), **run)
    assert planner._first(coded, planner.shapes[coded.key], measured) is None
    uniform = find(0, "uniform", (4.0,), **run)
    needed = planner._first(uniform, planner.shapes[uniform.key], measured)
    assert needed is not None and (s := planner.shapes[needed.key]).level < 0 and s.capacity == (4.0,)


def test_a_split_without_pruned_rows_takes_the_pruning_loss_fitted_to_the_others() -> None:
    """A run to 0.48 that missed at conv4_x was followed by two at conv5_x that missed alike: where a split has no
    pruned row, a pruning's expected loss is fitted to every split's (each carried to the candidate's hold)."""
    env = Environment(DEVICES.get("pi3"), DEVICES.get("rtx2080ti"), 40e3 * 8)
    planner = Planner(SPACE, "quick", env, THRESHOLD)

    def reference(split: str, target: float, hold: int) -> object:
        return next(c for c in planner.candidates if (s := planner.shapes[c.key]).split == split and s.reference
                    and s.level == 1 and dict(c.variant.knobs).get("output") is None
                    and dict(c.variant.knobs).get("target") == target
                    and dict(c.variant.knobs).get("hold_iterations") == hold)

    measured = {c.key: Measured(s, world(c.variant)) for c in planner.candidates
                if (s := planner.shapes[c.key]).level < 0 and s.reference}
    missed = reference("conv4_x", 0.48, 30)
    measured[missed.key] = Measured(planner.shapes[missed.key], {**world(missed.variant),
                                                                 "deployed_val_accuracy": BASE_VAL - 0.05})
    forecasts = {f.candidate.key: f for f in planner.forecasts(measured, best_latency=1.0)}
    other = reference("conv5_x", 0.32, 62)
    ratio = planner.shapes[other.key].sparsity / planner.shapes[missed.key].sparsity
    assert forecasts[other.key].estimate == pytest.approx(BASE_VAL - 0.05 * ratio ** 2 * 30 / 62)


def _planner() -> Planner:
    return Planner(SPACE, "quick", Environment(DEVICES.get("pi3"), DEVICES.get("rtx2080ti"), 40e3 * 8), THRESHOLD)


def _probes(planner: Planner) -> dict[tuple, Measured]:
    return {c.key: Measured(s, world(c.variant)) for c in planner.candidates
            if (s := planner.shapes[c.key]).level < 0 and s.reference}


def _find(planner: Planner, split: str, level: int, family: str, capacity: tuple, **knobs: object) -> object:
    return next(c for c in planner.candidates if (s := planner.shapes[c.key]).split == split
                and (s.level, s.family, s.capacity) == (level, family, capacity)
                and all(dict(c.variant.knobs).get(n) == v for n, v in knobs.items()))


def test_a_pruning_s_loss_is_interpolated_in_the_square_of_its_sparsity_between_the_nearest() -> None:
    """At the quick study's conv4_x, 0.24 and 0.48 held 62 iterations lost 0.7 and 3.8 points and 0.32 lost 1.0: one
    fit a s^2 to these and the runs held 30 forecast 1.8 and kept the planner off the grid's winning run."""
    top = 0.857
    points = [(0.24, top - 0.007), (0.48, top - 0.038)]
    between = (0.32 ** 2 - 0.24 ** 2) / (0.48 ** 2 - 0.24 ** 2)
    assert _interpolated_loss(points, 0.32, top) == pytest.approx(0.007 + between * 0.031)
    assert _interpolated_loss(points, 0.12, top) == pytest.approx(0.007 * 0.25)  # from the unpruned split's point
    assert _interpolated_loss(points, 0.60, top) == pytest.approx(0.038 * (0.60 / 0.48) ** 2)  # beyond the deepest
    assert _interpolated_loss([(0.24, top - 0.006), (0.24, top - 0.008)], 0.24, top) == pytest.approx(0.007)
    assert _interpolated_loss([(0.24, top + 0.002)], 0.24, top) == 0.0  # a pruning that validated higher lost none


def test_a_pruning_s_expected_loss_reads_the_runs_held_as_long_at_its_split() -> None:
    """Runs held 30 iterations lost more than runs held 62 at every split of the quick study: a run's expected loss
    reads the split's runs held as long, all of them only where none was."""
    planner = _planner()
    measured = _probes(planner)
    for target, hold, level, lost in ((0.48, 30, 0, 0.010), (0.48, 30, 1, 0.045), (0.48, 62, 0, 0.007)):
        c = _find(planner, "conv4_x", level, "uniform", (8.0,), target=target, hold_iterations=hold, output=None)
        row = {**world(c.variant), "deployed_val_accuracy": BASE_VAL - lost}
        measured[c.key] = Measured(planner.shapes[c.key], row)
    forecasts = {f.candidate.key: f for f in planner.forecasts(measured, best_latency=1.0)}
    held = _find(planner, "conv4_x", 1, "uniform", (8.0,), target=0.32, hold_iterations=62, output=None)
    short = _find(planner, "conv4_x", 1, "uniform", (8.0,), target=0.32, hold_iterations=30, output=None)
    assert planner.shapes[held.key].sparsity == pytest.approx(0.32)
    assert forecasts[held.key].estimate == pytest.approx(BASE_VAL - 0.007 * (0.32 / 0.24) ** 2)
    between = (0.32 ** 2 - 0.24 ** 2) / (0.48 ** 2 - 0.24 ** 2)
    assert forecasts[short.key].estimate == pytest.approx(BASE_VAL - (0.010 + between * 0.035))


def _measure_losses(planner: Planner, measured: dict, split: str, runs: Iterable[tuple]) -> None:
    for target, hold, level, lost in runs:
        c = _find(planner, split, level, "uniform", (8.0,), target=target, hold_iterations=hold, output=None)
        row = {**world(c.variant), "deployed_val_accuracy": BASE_VAL - lost}
        measured[c.key] = Measured(planner.shapes[c.key], row)


def test_a_hold_s_loss_is_carried_to_a_split_that_measured_only_another_hold() -> None:
    """The 1-worker quick study at 100 kB/s measured runs held 30 at conv4_x for 40 minutes, each forecasting a run
    held 62 to lose as much, before it measured the one that won (0.32 held 62 lost 1.0 point, held 30 1.8): a split
    measured at one hold reads another hold's loss through the ratio of the two where a split measured both, else
    through the ratio of the holds."""
    planner = _planner()
    measured = _probes(planner)
    _measure_losses(planner, measured, "conv4_x", [(0.48, 30, 0, 0.010), (0.48, 30, 1, 0.045)])
    k = _Knowledge(measured.values(), THRESHOLD, planner.depth)
    assert k.hold_ratio(62, 30, 0.32) == pytest.approx(30 / 62)  # no split measured both holds
    assert k.hold_ratio(30, 62, 0.32) == pytest.approx(62 / 30)
    held = _find(planner, "conv4_x", 1, "uniform", (8.0,), target=0.32, hold_iterations=62, output=None)
    between = (0.32 ** 2 - 0.24 ** 2) / (0.48 ** 2 - 0.24 ** 2)
    estimate = {f.candidate.key: f for f in planner.forecasts(measured, best_latency=1.0)}[held.key].estimate
    assert estimate == pytest.approx(BASE_VAL - (0.010 + between * 0.035) * 30 / 62)
    # conv5_x measured both: held 62 lost a third of what held 30 lost at 0.32 (0.48's first level: 0.24)
    _measure_losses(planner, measured, "conv5_x", [(0.32, 30, 1, 0.021), (0.32, 62, 1, 0.007)])
    k = _Knowledge(measured.values(), THRESHOLD, planner.depth)
    assert k.hold_ratio(62, 30, 0.32) == pytest.approx(1 / 3)
    estimate = {f.candidate.key: f for f in planner.forecasts(measured, best_latency=1.0)}[held.key].estimate
    assert estimate == pytest.approx(BASE_VAL - (0.010 + between * 0.035) / 3)
    # a longer hold that measured worse is taken to lose as much, never more (more fine-tuning only helps)
    _measure_losses(planner, measured, "conv3_x", [(0.32, 30, 1, 0.005), (0.32, 62, 1, 0.009)])
    _measure_losses(planner, measured, "conv2_x", [(0.32, 30, 1, 0.005), (0.32, 62, 1, 0.009)])
    assert _Knowledge(measured.values(), THRESHOLD, planner.depth).hold_ratio(62, 30, 0.32) == 1.0


def test_a_snapshot_s_flops_come_from_a_coded_row_on_it_before_its_8_bit_row() -> None:
    """A coded row on a snapshot tells its device part's FLOPs (less its encoder's): the quick study forecast every
    coding on conv4_x's first level at 1.31 ms while each measured took 1.40 or more, and measured nine."""
    planner = _planner()
    measured = _probes(planner)
    run = {"target": 0.48, "hold_iterations": 62, "output": None}
    coded = _find(planner, "conv4_x", 0, TS, (32.0, 2.0), **run)
    measured[coded.key] = Measured(planner.shapes[coded.key], {**world(coded.variant), "device_flops": 2.0e7,
                                                                "encoder_flops": 2e5})
    k = _Knowledge(measured.values(), THRESHOLD, planner.depth)
    other = planner.shapes[_find(planner, "conv4_x", 0, VQ, (16.0,), **run).key]
    assert Planner._figures(other, k.probe["conv4_x"], k)["device_flops"] == pytest.approx(1.98e7)
    deeper = planner.shapes[_find(planner, "conv4_x", 1, "uniform", (8.0,), **run).key]  # scaled like the measured
    factor = 1.98e7 / (DEVICE_FLOPS["conv4_x"] * (1 - 0.24) ** 2)
    assert Planner._figures(deeper, k.probe["conv4_x"], k)["device_flops"] == pytest.approx(
        DEVICE_FLOPS["conv4_x"] * (1 - 0.48) ** 2 * factor)


def test_the_value_of_a_learned_coding_reads_the_bits_it_is_expected_to_send() -> None:
    """The floor a learned coding cannot undercut (a byte) bounds the search; what measuring it is worth reads the
    bits it is expected to send: what it sent at another split, else its fixed-length form times what the study's
    learned codings sent of theirs."""
    planner = _planner()
    measured = _probes(planner)
    sent = _find(planner, "conv5_x", -1, TS, (32.0, 2.0))
    measured[sent.key] = Measured(planner.shapes[sent.key], {**world(sent.variant), "bits_actual": 57.6})
    forecasts = {f.candidate.key: f for f in planner.forecasts(measured, best_latency=1.0)}
    k = _Knowledge(measured.values(), THRESHOLD, planner.depth)
    same = planner.shapes[_find(planner, "conv4_x", -1, TS, (32.0, 2.0)).key]
    smaller = planner.shapes[_find(planner, "conv4_x", -1, TS, (16.0, 1.0)).key]
    assert (same.fixed_bits, smaller.fixed_bits) == (64.0, 16.0)
    assert k.expected_bits(same, 8.0) == pytest.approx(57.6)  # as it sent at conv5_x
    assert k.expected_bits(smaller, 8.0) == pytest.approx(16.0 * 57.6 / 64.0)  # its fixed length, as sent
    at_its_split = planner.shapes[_find(planner, "conv5_x", -1, TS, (16.0, 1.0)).key]
    assert k.expected_bits(at_its_split, 9.0) == pytest.approx(16.0 * 57.6 / 64.0)
    assert k.expected_bits(planner.shapes[sent.key], 57.6) == 57.6
    f = forecasts[_find(planner, "conv4_x", -1, TS, (32.0, 2.0)).key]
    assert f.bits == pytest.approx(8.0) and f.expected == pytest.approx(f.latency + (57.6 - 8.0) / (40e3 * 8))
    assert f.value == pytest.approx((1.0 - f.expected) * 0.5 * math.erfc(
        (THRESHOLD - f.estimate) / (0.005 * math.sqrt(2.0))) / f.seconds)
