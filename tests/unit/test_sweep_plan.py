"""Sweep plans: grids per profile and method discovered from the METHODS registry, cheapest first; every variant
the engine proposes passes its method's check, and a knob a method cannot use is refused before it is queued."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine import sweep
from engine.config import BaseModelConfig, VariantConfig
from engine.errors import UserError
from engine.methods import METHODS, check_variant
from engine.models import split_names
from engine.profiles import PROFILES, Grid, MethodGrid
from engine.store import ResultsStore

FAKE_BASE = BaseModelConfig(dataset="fake-fingerprint", width=0.125, epochs=1)


class Pricey:
    """A registered method the sweep has never heard of: it must still be swept, after the known ones."""

    def variants(self, base: BaseModelConfig, splits: list[str]) -> list[VariantConfig]:
        return [VariantConfig.make("zz_pricey", s, base, ratio=0.5) for s in splits]

    def run(self, cfg: VariantConfig, ctx) -> dict:  # noqa: ANN001
        raise NotImplementedError


class Cheap(Pricey):
    cost = -1  # a method may declare its own cost rank

    def variants(self, base: BaseModelConfig, splits: list[str]) -> list[VariantConfig]:
        return [VariantConfig.make("aa_cheap", s, base) for s in splits]


@pytest.fixture()
def extra_methods() -> Iterator[None]:
    METHODS.add("zz_pricey", Pricey())
    METHODS.add("aa_cheap", Cheap())
    yield
    for name in ("zz_pricey", "aa_cheap"):
        METHODS._items.pop(name, None)


def test_the_bf16_profile_plans_the_quick_grid_in_bf16() -> None:
    quick = sweep.plan("quick", PROFILES.get("quick").base_config("d"))
    in_bf16 = sweep.plan("quick-bf16", PROFILES.get("quick-bf16").base_config("d"))
    assert [(p.spec.method, p.spec.split) for p in in_bf16] == [(p.spec.method, p.spec.split) for p in quick]
    assert [dict(p.spec.knobs) for p in in_bf16] == [dict(p.spec.knobs) for p in quick]
    assert all(p.spec.profile == "quick-bf16" and p.spec.variant().base.precision == "bf16" for p in in_bf16)
    assert not {p.id for p in in_bf16} & {p.id for p in quick}


def test_plan_covers_every_registered_method_cheapest_first(extra_methods: None) -> None:
    planned = sweep.plan("smoke", FAKE_BASE)
    methods = list(dict.fromkeys(p.spec.method for p in planned))
    assert set(methods) == set(METHODS)
    assert methods[0] == "aa_cheap" and methods[1] == "original"
    trains = [sweep.trains_encoder(p.spec.variant()) for p in planned]
    assert any(trains) and trains == sorted(trains)  # every encoder-training variant after all the others
    assert {p.spec.method for p, t in zip(planned, trains, strict=True) if t} == {"bottlenet_pp", "three_step"}
    cheap = list(dict.fromkeys(p.spec.method for p, t in zip(planned, trains, strict=True) if not t))
    assert cheap == ["aa_cheap", "original", "two_step_pruning", "three_step", "zz_pricey"]
    priorities = [p.priority for p in planned]
    assert priorities == sorted(priorities) and len(set(priorities)) == len(priorities)
    original = [(p.spec.split, p.spec.knobs["bits"]) for p in planned if p.spec.method == "original"]
    # the smoke grid, end points first; inner splits also at the 4-bit depth three_step crosses its snapshots with
    assert original == [("server_only", 8), ("device_only", 8), ("conv4_x", 8), ("conv4_x", 4)]
    assert [p.spec.split for p in planned if p.spec.method == "zz_pricey"] == ["conv4_x"]  # the default grid
    assert all(p.spec.profile == "smoke" and p.spec.base_id == FAKE_BASE.id for p in planned)
    quick = sweep.plan("quick", FAKE_BASE, methods=["original"])
    inner = [s for s in split_names() if s not in ("server_only", "device_only")]
    assert [(p.spec.split, p.spec.knobs["bits"]) for p in quick] == [
        ("server_only", 8), ("device_only", 8), *[(s, 8) for s in inner], *[(s, 4) for s in inner]]


def test_grid_knobs_cross_the_method_s_variants() -> None:
    grid = Grid("mine", methods=(("original", MethodGrid.of(["stem", "conv4_x"], bits=(4, 8))),))
    planned = sweep.plan("smoke", FAKE_BASE, methods=["original"], grid=grid)
    got = [(p.spec.split, p.spec.knobs["bits"]) for p in planned]
    assert got == [("stem", 4), ("stem", 8), ("conv4_x", 4), ("conv4_x", 8)]
    assert len({p.id for p in planned}) == 4
    assert sweep.plan("smoke", FAKE_BASE, methods=["original"], splits=["conv2_x"])[0].spec.split == "conv2_x"


@pytest.mark.parametrize("profile", list(PROFILES))
def test_every_variant_the_engine_proposes_passes_its_check(profile: str) -> None:
    from engine.fig5 import fig5_variants
    from engine.methods import check_variant

    base = PROFILES.get(profile).base_config("fake-fingerprint")
    budget = PROFILES.get(profile).budget_name
    variants = [p.spec.variant() for p in sweep.plan(profile, base)] + fig5_variants(base, budget)
    assert {v.method for v in variants} == set(METHODS)
    for cfg in variants:
        check_variant(cfg, budget)


@pytest.mark.parametrize(("method", "split", "knobs", "message"), [
    ("original", "conv3_x", {"bits": "abc"}, "knob bits must be a whole number, got 'abc'"),
    ("original", "conv3_x", {"bits": 99}, r"knob bits must be in \[1, 16\], got 99"),
    ("original", "conv3_x", {"bits": 4.5}, "knob bits must be a whole number"),
    ("original", "conv3_x", {"sparsity": 0.5}, "original has no knob 'sparsity'; its knobs: bits"),
    ("three_step", "conv4_x", {"target": 2}, r"knob target must be in \[0, 1\]"),
    ("three_step", "conv4_x", {"levels": True}, "knob levels must be a whole number"),
    ("three_step", "conv4_x", {"snapshot": 2}, "knob snapshot is a level from 0 to 1, 'threshold' or 'none', got 2"),
    ("three_step", "conv4_x", {"stop": "yes"}, "knob stop must be true or false"),
    ("three_step", "conv4_x", {"lr_schedule": "step"}, "unknown lr_schedule 'step'"),
    ("three_step", "conv4_x", {"per_stage": 3}, "a knob cannot be used"),
    ("three_step", "conv4_x", {"encoder": "zip"}, "unknown feature coding 'zip'"),
    ("three_step", "conv4_x", {"enc_d": 16}, "knob enc_d does not apply to encoder=none"),
    ("three_step", "conv4_x", {"encoder": "two_step", "enc_d": "x"}, "encoding knob enc_d must be int, got 'x'"),
    ("three_step", "conv4_x", {"encoder": "two_step", "enc_lr": True}, "encoding knob enc_lr must be float"),
    ("three_step", "conv4_x", {"encoder": "jscc", "snapshot": "none", "jscc_uses": 0}, "uses"),
    ("three_step", "server_only", {}, "use the `original` method for the end points"),
    ("two_step_pruning", "conv4_x", {"step1": 0.3}, "is not one of step1_levels"),
    ("two_step_pruning", "conv4_x", {"step2_steps": 0}, "knob step2_steps must be at least 1, got 0"),
    ("two_step_pruning", "device_only", {}, "use the `original` method for the end points"),
    ("bottlenet_pp", "conv4_x", {"ratio": 0}, "knob ratio must be > 0"),
    ("bottlenet_pp", "conv4_x", {"enc_codec": "zip"}, "unknown codec 'zip'"),
    ("bottlenet_pp", "conv4_x", {"bits": 4}, "bottlenet_pp has no knob 'bits'"),
    ("original", "conv4_x", {"split": 3}, "original has no knob 'split'"),  # not taken for an argument
    ("original", "conv4_x", {"data": 3}, "original has no knob 'data'"),
])
def test_a_variant_with_a_knob_it_cannot_use_is_refused_before_it_is_queued(method: str, split: str, knobs: dict,
                                                                            message: str) -> None:
    with pytest.raises(UserError, match=message):
        sweep.one_variant(method, split, "quick", FAKE_BASE, **knobs)


def test_hand_added_variants_a_user_would_submit_pass() -> None:
    pruned = sweep.one_variant("three_step", "conv4_x", "quick", FAKE_BASE, target=0.32, levels=2, iteration_steps=64,
                               hold_iterations=30, snapshot=1)
    assert pruned.spec.knobs["levels"] == 2
    assert sweep.one_variant("three_step", "conv4_x", "quick", FAKE_BASE, snapshot="1").spec.knobs["snapshot"] == "1"
    assert sweep.one_variant("two_step_pruning", "conv3_x", "quick", FAKE_BASE, step1=0.25).spec.knobs["step1"] == 0.25
    assert sweep.one_variant("bottlenet_pp", "conv5_x", "quick", FAKE_BASE, ratio=64,
                             enc_codec="huffman").spec.knobs["enc_codec"] == "huffman"
    assert sweep.default_knobs("original", "stem", FAKE_BASE) == {"bits": 8}
    # the defaults come from the proposal that matches: the grid's encoded variant for encoder="two_step"
    grid = [v for v in METHODS.get("three_step").variants(FAKE_BASE, ["conv4_x"])]
    encoded = next(v for v in grid if v.knob("encoder") == "two_step")
    assert sweep.one_variant("three_step", "conv4_x", "quick", FAKE_BASE, encoder="two_step").id == encoded.id
    level1 = next(v for v in grid if v.knob("snapshot") == 1 and v.knob("output") is None)  # the budget's run
    assert sweep.one_variant("three_step", "conv4_x", "quick", FAKE_BASE, snapshot=1).id == level1.id
    threshold = sweep.one_variant("three_step", "conv4_x", "quick", FAKE_BASE, snapshot="threshold").spec.knobs
    assert threshold == {**dict(grid[0].knobs), "snapshot": "threshold"}  # still 8-bit + Huffman
    assert sweep.default_knobs("three_step", "server_only", FAKE_BASE) == {}


def test_one_variant_at_a_time() -> None:
    p = sweep.one_variant("original", "conv3_x", "quick", FAKE_BASE, bits=4)
    assert p.spec.knobs == {"bits": 4} and p.spec.split == "conv3_x"
    assert p.id == VariantConfig.make("original", "conv3_x", FAKE_BASE, bits=4).id
    assert sweep.one_variant("original", "conv3_x", "quick", FAKE_BASE).spec.knobs == {"bits": 8}  # its default
    with pytest.raises(UserError, match="unknown split point"):
        sweep.one_variant("original", "conv9_x", "quick", FAKE_BASE)
    with pytest.raises(UserError, match="unknown method"):
        sweep.plan("smoke", FAKE_BASE, methods=["nope"])
    with pytest.raises(UserError, match="unknown profile 'huge'"):
        sweep.plan("huge", FAKE_BASE)
    assert all(isinstance(PROFILES.get(name).grid, Grid) for name in PROFILES)  # a grid for each profile


# -- the three steps crossed ----------------------------------------------------------------------------------

SMOKE_BASE = PROFILES.get("smoke").base_config("fake-fingerprint")


def snapshot_row(level: int, val: float, need: float = 0.78, base: BaseModelConfig = SMOKE_BASE,
                 **knobs: object) -> dict:
    """A measured 8-bit + Huffman snapshot row of a smoke pruning run."""
    cfg = VariantConfig.make("three_step", "conv4_x", base, encoder="none", bits=8, snapshot=level,
                             **{**PROFILES.get("smoke").prune.knobs(), **knobs})
    return {"id": cfg.id, "method": "three_step", "split": "conv4_x", "base_id": base.id, "knobs": dict(cfg.knobs),
            "val_accuracy": val, "val_threshold": need}


def test_snapshots_that_hold_the_threshold_are_crossed_with_every_coding() -> None:
    rows = [snapshot_row(0, 0.80), snapshot_row(1, 0.781), snapshot_row(2, 0.70),  # levels 0 and 1 hold
            snapshot_row(0, 0.90, base=FAKE_BASE),  # another base model's
            {**snapshot_row(0, 0.95), "knobs": {**snapshot_row(0, 0.95)["knobs"], "bits": 4}}]  # a coded row
    crossed = METHODS.get("three_step").followups(SMOKE_BASE, rows)
    codings = PROFILES.get("smoke").codings
    assert len(codings) == 2 and len(crossed) == 3 * len(codings)  # levels 0, 1 and the unpruned split
    assert sorted({v.knob("snapshot") for v in crossed}, key=str) == [0, 1, "none"]
    assert len({v.id for v in crossed}) == len(crossed)
    for v in crossed:
        check_variant(v, "smoke")
        coding = dict(next(c for c in codings if all(v.knob(k) == x for k, x in c)))
        assert v.split == "conv4_x" and v.base == SMOKE_BASE
        if coding["encoder"] == "two_step":  # trained the profile's way
            assert v.knob("enc_backbone") == "server" and v.knob("enc_epochs") == 1
        if v.knob("snapshot") != "none":  # the same pruning run as the snapshot's row
            assert v.knob("target") == 0.5 and v.knob("levels") == 3
    below = METHODS.get("three_step").followups(SMOKE_BASE, [snapshot_row(0, 0.5)])  # nothing holds: unpruned only
    assert [v.knob("snapshot") for v in below] == ["none"] * len(codings)


def test_only_snapshots_of_the_grid_s_runs_are_crossed() -> None:
    """A run added by hand with other knobs (another target, allocation, output target or seed) is not the grid's:
    its holding snapshots are not crossed; the grid's own run is, its stored knobs read back from JSON."""
    stored = snapshot_row(1, 0.80)
    stored = {**stored, "knobs": json.loads(json.dumps(stored["knobs"]))}
    rows = [snapshot_row(0, 0.80, target=0.4), snapshot_row(0, 0.80, allocation="sensitivity"),
            snapshot_row(0, 0.80, output=0.8), snapshot_row(0, 0.80, replicate=1), stored]
    crossed = METHODS.get("three_step").followups(SMOKE_BASE, rows)
    pruned = [v for v in crossed if v.knob("snapshot") != "none"]
    assert len(pruned) == len(PROFILES.get("smoke").codings)
    assert all(v.knob("snapshot") == 1 and v.knob("target") == 0.5 and v.knob("output") is None for v in pruned)


def test_the_sweep_plans_only_unmeasured_followups_after_the_planned_grid(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path / "results.sqlite")
    row = {**snapshot_row(0, 0.80), "accuracy": 0.79, "deployed_val_accuracy": 0.80, "device_flops": 1.0,
           "bits_actual": 8.0}
    store.put(row)
    first = sweep.followups("smoke", SMOKE_BASE, store, methods=["three_step"])
    assert len(first) == 4 and all(p.spec.method == "three_step" for p in first)
    planned = sweep.plan("smoke", SMOKE_BASE, methods=["three_step"])
    tiers = {sweep.trains_encoder(p.spec.variant()) for p in first}
    assert tiers == {True, False}
    for p in first:  # after the up-front variants of its own cost tier
        same_tier = [q.priority for q in planned
                     if sweep.trains_encoder(q.spec.variant()) == sweep.trains_encoder(p.spec.variant())]
        assert p.priority > max(same_tier)
    done = first[0].spec.variant()
    store.put({**row, "id": done.id, "knobs": dict(done.knobs)})
    assert [p.id for p in sweep.followups("smoke", SMOKE_BASE, store)] == [p.id for p in first[1:]]
    assert sweep.followups("smoke", SMOKE_BASE, store, splits=["conv3_x"]) == []


def test_the_output_sparsity_is_a_grid_axis_of_its_own() -> None:
    """Each activation-pruning target of the profile is a pruning run of its own at every split, beside the budget's
    (whose output group follows the global target), with every snapshot level."""
    quick = PROFILES.get("quick")
    planned = [p.spec for p in sweep.plan("quick", quick.base_config("d"), methods=["three_step"])]
    snapshots = [s for s in planned if s.knobs.get("encoder") == "none"]
    splits = {s.split for s in snapshots}
    for output in (None, *quick.output_sparsities):
        run = [s for s in snapshots if s.knobs.get("output") == output]
        assert {s.split for s in run} == splits and len(run) == len(splits) * quick.prune.levels
    assert quick.output_sparsities and all(o > quick.prune.target for o in quick.output_sparsities)


def test_crossed_variants_a_measured_row_provably_dominates_are_left_out() -> None:
    """A qualifying row at 8 bits with fewer device FLOPs than a snapshot beats every learned encoder of that
    snapshot (no payload is under a byte); codings whose bound proves nothing stay, and the rest come fewest FLOPs
    first."""
    level0 = {**snapshot_row(0, 0.80), "device_flops": 200.0, "base_device_flops": 300.0}
    level1 = {**snapshot_row(1, 0.79), "device_flops": 100.0, "base_device_flops": 300.0}
    method = METHODS.get("three_step")
    before = method.followups(SMOKE_BASE, [level0, level1])
    order = [v.knob("snapshot") for v in before]
    assert order[:2] == ["none", "none"] and order[2:4] == [1, 1]  # the unpruned split, then the most pruned first
    coded = method._coded("conv4_x", SMOKE_BASE, {**{k: v for k, v in level1["knobs"].items() if k != "bits"},
                                                    "snapshot": 1}, PROFILES.get("smoke").codings[1])
    winner = {"id": coded.id, "method": "three_step", "split": "conv4_x", "base_id": SMOKE_BASE.id,
              "knobs": dict(coded.knobs), "device_flops": 150.0, "bits_actual": 8.0, "deployed_val_accuracy": 0.80,
              "base_val_accuracy": 0.81}
    after = method.followups(SMOKE_BASE, [level0, level1, winner])
    left_out = {v.id for v in before} - {v.id for v in after}
    assert {(v.knob("snapshot"), v.knob("encoder")) for v in before if v.id in left_out} == \
        {(0, "two_step"), ("none", "two_step")}
    below = {**winner, "deployed_val_accuracy": 0.70}  # under the threshold: dominates nothing
    assert len(method.followups(SMOKE_BASE, [level0, level1, below])) == len(before)


def _coded_row(level: int | str, val: float, snapshot_val: float, flops: float, **coding: object) -> dict:
    """A measured learned coding at conv4_x on a smoke snapshot (`level`, or "none": unpruned) of `flops` device
    FLOPs (its encoder's 1 more)."""
    run = {k: v for k, v in snapshot_row(0, 0.8)["knobs"].items() if k not in ("bits", "snapshot", "encoder")}
    pruning = {"snapshot": "none"} if level == "none" else {**run, "snapshot": level}
    cfg = METHODS.get("three_step")._coded("conv4_x", SMOKE_BASE, pruning, tuple(coding.items()))
    return {"id": cfg.id, "method": "three_step", "split": "conv4_x", "base_id": SMOKE_BASE.id,
            "knobs": dict(cfg.knobs), "deployed_val_accuracy": val, "base_val_accuracy": 0.80,
            **({"base_val_accuracy": snapshot_val} if level == "none" else {"val_accuracy": snapshot_val}),
            "device_flops": flops + 1.0, "encoder_flops": 1.0, "bits_actual": 9.0}


def test_learned_codings_a_larger_one_shows_cannot_hold_are_left_out() -> None:
    """A learned coding at a split that lost more than a snapshot's margin over the threshold (and the half point a
    coding may win back) rules out, on that snapshot and every one with no more device FLOPs, each learned coding
    that reaches no further (no more fixed-length bits, trained no more); one that reaches further, one on a larger
    snapshot, or a uniform coding, stays."""
    method = METHODS.get("three_step")
    snaps = [{**snapshot_row(level, val), "base_val_accuracy": 0.80, "device_flops": flops, "base_device_flops": 300.0}
             for level, val, flops in ((0, 0.80, 200.0), (1, 0.79, 100.0))]
    learned = [v for v in method.followups(SMOKE_BASE, snaps) if v.knob("encoder") == "two_step"]
    assert {v.knob("snapshot") for v in learned} == {0, 1, "none"}  # margins 0.02, 0.01 and 0.02
    assert all((v.knob("enc_d"), v.knob("enc_bits")) == (8, 1) for v in learned)  # smoke's: 8 bits fixed-length

    def left(*measured: dict) -> set:
        after = {v.id for v in method.followups(SMOKE_BASE, [*snaps, *measured])}
        return {v.knob("snapshot") for v in learned if v.id not in after and v.id not in {r["id"] for r in measured}}

    large = {"encoder": "two_step", "enc_d": 16, "enc_bits": 2, "enc_backbone": "finetune", "enc_epochs": 2}
    assert left(_coded_row("none", 0.70, 0.80, 300.0, **large)) == {0, 1, "none"}  # lost 10 points unpruned
    assert left(_coded_row(1, 0.70, 0.79, 100.0, **large)) == {1}  # on level 1: says nothing of larger snapshots
    assert left(_coded_row("none", 0.776, 0.80, 300.0, **large)) == {1}  # lost 2.4: over 1 + 0.5, not 2 + 0.5
    small = {"encoder": "two_step", "enc_d": 4, "enc_bits": 1, "enc_backbone": "finetune", "enc_epochs": 2}
    assert left(_coded_row("none", 0.60, 0.80, 300.0, **small)) == set()  # fewer bits than 8: says nothing of d = 8
    cheaper = {**large, "enc_backbone": "frozen"}
    assert left(_coded_row("none", 0.60, 0.80, 300.0, **cheaper)) == set()  # trained less: nothing of a trained one
    uniform = [v for v in method.followups(SMOKE_BASE, [*snaps, _coded_row("none", 0.70, 0.80, 300.0, **large)])
               if v.knob("encoder") == "none"]
    assert len(uniform) == 3  # a uniform coding is never ruled out so


def test_a_sweep_plans_one_encoder_per_split_and_round(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path / "results.sqlite")
    for level in (0, 1):
        store.put({**snapshot_row(level, 0.80), "accuracy": 0.79, "deployed_val_accuracy": 0.80,
                   "device_flops": 100.0 * (2 - level), "base_device_flops": 300.0, "bits_actual": 800.0})
    every = sweep.followups("smoke", SMOKE_BASE, store, methods=["three_step"])
    wave = sweep.take(every)
    encoders = [p for p in wave if sweep.trains_encoder(p.spec.variant())]
    assert len(encoders) == 1 and encoders[0].spec.variant().knob("snapshot") == "none"  # the unpruned split first
    assert len(every) - len(wave) == sum(sweep.trains_encoder(p.spec.variant()) for p in every) - 1


def _planned(split: str, encoder: bool, n: int) -> sweep.Planned:
    knobs = {"encoder": "two_step", "enc_d": 8 * (n + 1), "enc_bits": 1} if encoder else {"bits": 4 + n}
    return sweep.Planned(sweep.JobSpec.for_variant(VariantConfig.make("three_step", split, SMOKE_BASE, **knobs),
                                                   "smoke", None), n)


def test_take_queues_one_encoder_per_free_split_and_more_only_for_idle_workers() -> None:
    plan = [_planned("conv3_x", True, 0), _planned("conv3_x", True, 1), _planned("conv3_x", False, 0),
            _planned("conv4_x", True, 0), _planned("conv4_x", True, 1), _planned("conv5_x", True, 0)]
    c3a, c3b, c3_cheap, c4a, c4b, c5a = plan
    assert sweep.take(plan) == [c3a, c3_cheap, c4a, c5a]  # rounds: the first encoder of each split, every cheap one
    assert sweep.take(plan, busy={"conv3_x", "conv5_x"}) == [c3_cheap, c4a]  # an encoder still runs there
    # two workers with nothing to run, one filled by conv4_x's first: the other takes the next in line, conv3_x's
    assert sweep.take(plan, busy={"conv3_x", "conv5_x"}, idle=2) == [c3a, c3_cheap, c4a]
    assert sweep.take(plan, idle=5) == [c3a, c3b, c3_cheap, c4a, c4b, c5a]
    assert sweep.take(plan, busy={"conv3_x", "conv4_x", "conv5_x"}, idle=1) == [c3a, c3_cheap]
    assert sweep.take([]) == []


def test_every_pruning_run_starts_before_any_run_s_second_level() -> None:
    """Level-major: with the quick grid's two runs per split, a worker that takes a second level while its run
    still trains waits on it; every run's first level comes first, so the next job is another run's training."""
    base = PROFILES.get("quick").base_config("synthetic-fingerprint")
    pruned = [p.spec.variant() for p in sweep.plan("quick", base, methods=["three_step"])
              if p.spec.knobs.get("encoder") == "none"]
    levels = [v.knob("snapshot") for v in pruned]
    runs = {(v.split, v.knob("output")) for v in pruned}
    assert len(runs) >= 4  # the budget's run and its output target's, per pruned split
    assert levels == sorted(levels) and levels[:len(runs)] == [0] * len(runs)


def test_a_variant_added_by_hand_is_the_crossing_s_own() -> None:
    """An unpruned coded variant queued by hand carries no pruning run's knobs (the grid's encoded variant it starts
    from has them), so it is the crossing's id and is read from the store, not trained again."""
    crossed = METHODS.get("three_step").followups(SMOKE_BASE, [snapshot_row(1, 0.80)])
    for unpruned in [v for v in crossed if v.knob("snapshot") == "none"]:
        coding = {k: x for k, x in unpruned.knobs if k in ("encoder", "bits", "enc_d", "enc_bits")}
        queued = sweep.one_variant("three_step", unpruned.split, "smoke", SMOKE_BASE, snapshot="none", **coding)
        assert queued.id == unpruned.id


def test_a_pruned_and_coded_variant_names_its_parents() -> None:
    row = snapshot_row(1, 0.80)
    method = METHODS.get("three_step")
    crossed = method.followups(SMOKE_BASE, [row])
    pruned_coded = next(v for v in crossed if v.knob("snapshot") == 1)
    parents = method.parents(pruned_coded)
    assert parents["uncoded"].id == row["id"]  # the snapshot's own row
    unpruned = next(v for v in crossed if v.knob("snapshot") == "none" and v.knob("encoder") ==
                    pruned_coded.knob("encoder") and v.knob("bits") == pruned_coded.knob("bits"))
    assert parents["unpruned"].id == unpruned.id  # the same coding on the unpruned split, as crossed
    assert parents["neither"].method == "original" and parents["neither"].knob("bits") == 8
    assert method.parents(unpruned) == {} and method.parents(VariantConfig.make(
        "three_step", "conv4_x", SMOKE_BASE, **dict(row["knobs"]))) == {}


def test_a_followed_sweep_queues_its_next_round_once_its_jobs_are_done(tmp_path: Path) -> None:
    """What the dashboard does between rounds: nothing while the base's jobs run, the next follow-ups once they
    are done, and it stops following when nothing is left to cross."""
    from engine.queue import JobQueue

    queue, store = JobQueue(tmp_path / "jobs.sqlite"), ResultsStore(tmp_path / "results.sqlite")
    assert sweep.next_round(queue, store, SMOKE_BASE) is None  # not followed
    store.put({**snapshot_row(0, 0.80), "accuracy": 0.79, "deployed_val_accuracy": 0.80, "device_flops": 100.0,
               "base_device_flops": 300.0, "bits_actual": 800.0})
    queue.follow(SMOKE_BASE.id, {"profile": "smoke", "data": None, "methods": ["three_step"]})
    first = sweep.next_round(queue, store, SMOKE_BASE)
    expected = sweep.take(sweep.followups("smoke", SMOKE_BASE, store, methods=["three_step"]))
    assert first == [p.id for p in expected] and len(first) >= 2
    assert sweep.next_round(queue, store, SMOKE_BASE) == []  # its jobs are queued: wait for them
    for job_id in first:  # the round fails: its variants are not planned again
        queue.cancel(job_id)
    rest = sweep.next_round(queue, store, SMOKE_BASE)
    assert rest and not set(rest) & set(first)
    for job_id in rest:
        queue.cancel(job_id)
    while (ids := sweep.next_round(queue, store, SMOKE_BASE)) is not None:
        for job_id in ids:
            queue.cancel(job_id)
    assert queue.following(SMOKE_BASE.id) is None
