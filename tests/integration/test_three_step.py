"""`three_step` pruning (Shao & Zhang 2020): snapshot rows from one cached run, physical removal, activation and
per-stage pruning, the threshold-driven mode, and resuming an interrupted pruning run."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

import engine.methods.three_step as three_step
from engine.config import VariantConfig
from engine.data import ImageData, normalize
from engine.errors import UserError
from engine.methods import METHODS, RunContext
from engine.methods.three_step import LevelSchedule, ThreeStep, pruned_split, pruning_run, threshold_level
from engine.models import split
from engine.profile import profile_split
from engine.profiles import PROFILES
from engine.provenance import describe_environments, training_environment
from engine.prune import prunable_groups
from engine.training import load_checkpoint, save_checkpoint

SPLIT = "conv4_x"  # 32 output channels at the smoke width 0.125


@pytest.fixture(scope="module")
def ctx(small_data: ImageData, tmp_path_factory: pytest.TempPathFactory) -> RunContext:
    return RunContext(small_data, PROFILES.get("smoke"), tmp_path_factory.mktemp("three_step"))


@pytest.fixture(scope="module")
def base(ctx: RunContext):  # noqa: ANN201
    return ctx.profile.base_config(ctx.data.fingerprint)


@pytest.fixture(scope="module")
def reference(ctx: RunContext, base) -> dict:  # noqa: ANN001
    """The unpruned base at SPLIT, profiled like `original`."""
    model, _ = ctx.base(base)
    return profile_split(model, SPLIT, (3, 32, 32), 10, time_device=False)


@pytest.fixture(scope="module")
def rows(ctx: RunContext, base, monkeypatch_module: pytest.MonkeyPatch) -> list[dict]:  # noqa: ANN001
    """The smoke grid at SPLIT: the first variant trains the run, the others must come from its cache."""
    variants = METHODS.get("three_step").variants(base, ["server_only", SPLIT, "device_only"])
    assert [v.split for v in variants] == [SPLIT] * 4 and [v.knob("snapshot") for v in variants] == [0, 1, 2,
                                                                                                      "threshold"]
    assert [v.knob("encoder") for v in variants] == ["none"] * 3 + ["two_step"]
    variants = variants[:3]
    out = [METHODS.get("three_step").run(variants[0], ctx)]

    def no_training(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("a snapshot variant retrained its pruning run")

    monkeypatch_module.setattr(three_step, "finetune", no_training)
    fresh = RunContext(ctx.data, ctx.profile, ctx.cache)  # a new process: only the disk cache is shared
    out += [ThreeStep().run(v, fresh) for v in variants[1:]]
    monkeypatch_module.undo()
    return out


@pytest.fixture(scope="module")
def monkeypatch_module() -> Iterator[pytest.MonkeyPatch]:
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def test_level_schedule_ramps_to_each_level_and_holds() -> None:
    s = LevelSchedule(0.6, {"output": 0.9}, ramp_iterations=2, iteration_steps=5, ramp="linear", levels=3,
                      hold_iterations=1)
    assert s.level_steps == 15
    assert [round(s.fraction(i), 6) for i in range(10)] == [round(v, 6) for v in
                                                            (1 / 6, 1 / 3, 1 / 3, 1 / 2, 2 / 3, 2 / 3, 5 / 6, 1, 1, 1)]
    cubic = LevelSchedule(0.6, levels=2, ramp_iterations=2)
    assert cubic.fraction(0) == pytest.approx(0.5 * 0.875) and cubic.fraction(1) == 0.5


def test_snapshots_are_distinct_rows_of_one_run(rows: list[dict], reference: dict) -> None:
    assert [r["level"] for r in rows] == [0, 1, 2]
    # conv4_x's 32 channels: floor(s * 32) pruned at s = 1/6, 1/3, 1/2 of the 0.5 target
    assert [r["feature_shape"] for r in rows] == [[27, 8, 8], [22, 8, 8], [16, 8, 8]]
    assert [r["output_sparsity"] for r in rows] == [5 / 32, 10 / 32, 16 / 32]
    assert len({r["id"] for r in rows}) == 3 and len({r["prune_run"] for r in rows}) == 1
    flops = [r["device_flops"] for r in rows]
    assert reference["device_flops"] > flops[0] > flops[1] > flops[2]
    assert all(r["base_device_flops"] == reference["device_flops"] for r in rows)
    assert rows[2]["flops_reduction"] == pytest.approx(reference["device_flops"] / flops[2])
    assert flops[2] < 0.5 * reference["device_flops"]  # half of every group's channels: about a quarter of FLOPs
    params = [r["device_params_bytes"] for r in rows]
    assert reference["device_params_bytes"] > params[0] > params[1] > params[2]
    for r in rows:
        assert r["method"] == "three_step" and r["split"] == SPLIT and 0.0 <= r["accuracy"] <= 1.0
        assert r["bits_raw"] == 8 * np.prod(r["feature_shape"])
        assert r["bits_ideal"] <= r["bits_actual"] <= r["bits_raw"] + 8
        assert r["test_images"] == 400 and r["prune_steps"] == 4 * (r["level"] + 1)


def test_deployed_parts_compute_the_masked_model(ctx: RunContext, base, rows: list[dict]) -> None:  # noqa: ANN001
    cfg = VariantConfig.make("three_step", SPLIT, base, **{k: v for k, v in rows[1]["knobs"].items()})
    pruned = pruned_split(cfg, ctx)
    x = normalize(ctx.data.test_x[:64], ctx.data.mean, ctx.data.std)
    with torch.no_grad():
        masked = pruned.masked_model(x)
        deployed = pruned.server(pruned.device(x))
    assert torch.allclose(masked, deployed, atol=1e-4)
    device_part, _ = split(pruned.masked_model, SPLIT)
    for g in prunable_groups(device_part):  # the masked channels are exactly the zero filters
        norms = sum(device_part.get_submodule(c).weight.flatten(1).norm(dim=1) for c in g.producers)
        assert torch.equal(norms > 0, pruned.masks[g.name]), g.name
    assert pruned.info["sparsity"] == pytest.approx(rows[1]["sparsity"])
    with torch.no_grad():
        q_free = float((pruned.server(pruned.device(normalize(ctx.data.test_x, ctx.data.mean, ctx.data.std)))
                        .argmax(1) == ctx.data.test_y).float().mean())
    assert abs(q_free - rows[1]["accuracy"]) <= 0.02  # 8-bit quantisation costs little


def test_activation_pruning_off_and_per_stage_targets(ctx: RunContext, base, reference: dict) -> None:  # noqa: ANN001
    cfg = VariantConfig.make("three_step", SPLIT, base, snapshot=2, output=0.0, per_stage=(("conv2_x", 0.0),))
    row = ThreeStep().run(cfg, ctx)
    assert row["feature_shape"] == reference["feature_shape"] == [32, 8, 8]
    assert row["output_sparsity"] == 0.0
    masks = pruned_split(cfg, ctx).masks
    assert masks.kept("conv2_x") == 8 and masks.kept("conv2_x.0.conv1") == 8  # stage target 0
    assert masks.kept("conv3_x.0.conv1") == 16 - 8  # global 0.5
    assert reference["device_flops"] > row["device_flops"]


def test_a_sensitivity_allocated_run_matches_the_uniform_flops(ctx: RunContext, base,  # noqa: ANN001
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    uniform = ThreeStep().run(VariantConfig.make("three_step", SPLIT, base, snapshot=2, output=0.0), ctx)
    cfg = VariantConfig.make("three_step", SPLIT, base, snapshot=2, output=0.0, allocation="sensitivity")
    run = pruning_run(cfg, ctx)
    levels = run["allocation"]
    assert len(levels) == len(run["snapshots"]) and run["allocation_seconds"] > 0
    assert all(levels[k][g] <= levels[k + 1][g] for k in range(len(levels) - 1) for g in levels[k])  # nested
    assert levels[-1]["conv4_x"] == 0.0  # the split output, named by `output`, keeps its target
    assert len({v for v in levels[-1].values() if v}) > 1  # not one target for every group
    row = ThreeStep().run(cfg, ctx)
    assert row["device_flops"] <= uniform["device_flops"]  # at least as cheap as the uniform target's
    assert pruned_split(cfg, ctx).masks.kept("conv4_x") == 32

    def measured_again(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("a run at the same split measured the sensitivity again")

    monkeypatch.setattr(three_step, "sensitivity", measured_again)
    other = pruning_run(VariantConfig.make("three_step", SPLIT, base, snapshot=2, output=0.0, hold_iterations=2,
                                           allocation="sensitivity"), ctx)
    assert other["allocation"] == levels  # the same curves and FLOPs goals: the same targets


def _fake_validation(monkeypatch: pytest.MonkeyPatch, values: list[float]) -> list[float]:
    seq = iter(values)
    seen: list[float] = []

    def fake(*args, **kwargs) -> float:  # noqa: ANN002, ANN003
        seen.append(next(seq))
        return seen[-1]

    monkeypatch.setattr(three_step, "validation_accuracy", fake)
    return seen


def test_threshold_mode_stops_at_the_right_snapshot(ctx: RunContext, base, reference: dict,  # noqa: ANN001
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    # base 0.50 -> threshold 0.48 (2 points); levels hold at 0.495 and 0.485, fall to 0.47 at level 2
    seen = _fake_validation(monkeypatch, [0.50, 0.495, 0.485, 0.47, 0.49])
    knobs = {"levels": 4, "stop": True}
    cfg = VariantConfig.make("three_step", SPLIT, base, snapshot="threshold", **knobs)
    run = pruning_run(cfg, ctx)
    assert seen == [0.50, 0.495, 0.485, 0.47]  # stopped: level 3 never trained or validated
    assert run["stopped"] and len(run["snapshots"]) == 3 and run["threshold"] == pytest.approx(0.48)
    assert run["steps"] == 3 * 4
    row = ThreeStep().run(cfg, ctx)
    assert row["level"] == 1 and row["threshold_pick"] and row["val_accuracy"] == 0.485
    assert row["feature_shape"] == [24, 8, 8]  # level 1 of 4: output sparsity 0.25 -> floor(8) = 8 pruned
    with pytest.raises(UserError, match="not reached"):
        ThreeStep().run(VariantConfig.make("three_step", SPLIT, base, snapshot=3, **knobs), ctx)
    below = ThreeStep().run(VariantConfig.make("three_step", SPLIT, base, snapshot=2, **knobs), ctx)
    assert below["level"] == 2 and not below["threshold_pick"]


def test_sweep_mode_picks_the_last_level_before_the_first_drop(ctx: RunContext, base,  # noqa: ANN001
                                                               reference: dict,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_validation(monkeypatch, [0.50, 0.47, 0.49, 0.49])  # level 0 already below 0.48; 1 and 2 recover
    cfg = VariantConfig.make("three_step", SPLIT, base, snapshot="threshold", threshold_drop=2.0, ramp="linear")
    run = pruning_run(cfg, ctx)
    assert not run["stopped"] and len(run["snapshots"]) == 3
    assert threshold_level(run["snapshots"], run["threshold"]) == -1
    row = ThreeStep().run(cfg, ctx)  # nothing holds the accuracy: the unpruned base is kept
    assert row["level"] == -1 and row["sparsity"] == 0.0
    assert row["device_flops"] == reference["device_flops"] and row["feature_shape"] == [32, 8, 8]


def test_an_interrupted_pruning_run_resumes_exactly(ctx: RunContext, base, rows: list[dict],  # noqa: ANN001
                                                    tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fresh(name: str) -> RunContext:  # a cache holding only the base model
        (tmp_path / name / "models").mkdir(parents=True)
        for f in (ctx.cache / "models").glob(f"base-{base.id}.pt*"):
            shutil.copy(f, tmp_path / name / "models" / f.name)
        return RunContext(ctx.data, ctx.profile, tmp_path / name)

    monkeypatch.setattr(three_step, "pick_device", lambda: torch.device("cpu"))  # bitwise-repeatable steps
    cfg = VariantConfig.make("three_step", SPLIT, base, **rows[0]["knobs"])
    straight = pruning_run(cfg, fresh("straight"))
    other = fresh("interrupted")
    real = three_step.validation_accuracy
    calls = []

    def dies_at_level_two(*args, **kwargs) -> float:  # noqa: ANN002, ANN003
        calls.append(1)
        if len(calls) == 3:  # base, level 0, then the end of level 1 (before its checkpoint)
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(three_step, "validation_accuracy", dies_at_level_two)
    with pytest.raises(KeyboardInterrupt):
        pruning_run(cfg, other)
    assert list((other.cache / "models").glob("three_step-*.partial.pt"))
    monkeypatch.setattr(three_step, "validation_accuracy", real)
    resumed = pruning_run(cfg, other)
    assert resumed["key"] == straight["key"] == rows[0]["prune_run"] and len(resumed["snapshots"]) == 3
    for a, b in zip(resumed["snapshots"], straight["snapshots"], strict=True):
        assert a["masks"] == b["masks"] and a["val_accuracy"] == b["val_accuracy"]
        for k, v in a["state_dict"].items():
            assert torch.allclose(v.float(), b["state_dict"][k].float(), atol=1e-5), k
    assert not list((other.cache / "models").glob("three_step-*.partial.pt"))


def test_end_points_and_bad_snapshots_are_user_errors(ctx: RunContext, base) -> None:  # noqa: ANN001
    with pytest.raises(UserError, match="original"):
        ThreeStep().run(VariantConfig.make("three_step", "server_only", base), ctx)
    with pytest.raises(UserError, match="out of range"):
        ThreeStep().run(VariantConfig.make("three_step", SPLIT, base, snapshot=7), ctx)
    with pytest.raises(UserError, match="feature coding"):
        ThreeStep().run(VariantConfig.make("three_step", SPLIT, base, snapshot=0, encoder="no-such-encoder"), ctx)


def test_the_whole_framework_encodes_the_pruned_split(ctx: RunContext, base, rows: list[dict]) -> None:  # noqa: ANN001
    """Step 3 on top of steps 1-2: the learned encoder trains between the threshold snapshot's pruned parts; the row
    keeps the pruning columns, sends far fewer bits than 8-bit + Huffman and adds the encoder's FLOPs."""
    cfg = VariantConfig.make("three_step", SPLIT, base, encoder="two_step", snapshot="threshold", enc_d=8,
                             **dict((k, v) for k, v in rows[0]["knobs"].items() if k not in ("snapshot", "encoder")))
    row = METHODS.get("three_step").run(cfg, ctx)
    pruned = [r for r in rows if r["level"] == row["level"]]
    assert row["threshold_pick"] and row["sparsity"] == (pruned[0]["sparsity"] if pruned else 0.0)
    assert row["bits_raw"] == 8 * 2 and row["bits_actual"] < min(r["bits_actual"] for r in rows) / 10
    assert row["encoder_d"] == 8 and 0.0 <= row["accuracy"] <= 1.0
    here = describe_environments([[training_environment(torch.device("cpu"))]])
    assert row["trained_on"] == here and not any(k.endswith("_trained_on") for k in row)  # one column for all parts
    if pruned:
        assert row["device_flops"] > pruned[0]["device_flops"]  # the encoder runs on the device


def test_a_pruning_run_cached_before_environments_were_recorded_says_so(ctx: RunContext, base,  # noqa: ANN001
                                                                          rows: list[dict]) -> None:
    cfg = VariantConfig.make("three_step", SPLIT, base, **rows[1]["knobs"])
    path = ctx.cache / "models" / f"three_step-{rows[1]['prune_run']}.pt"
    run = load_checkpoint(path)
    here = describe_environments([run["trained_on"]])
    assert rows[1]["trained_on"] == here
    del run["trained_on"]  # as an earlier release saved it
    save_checkpoint(run, path)
    try:
        row = ThreeStep().run(cfg, RunContext(ctx.data, ctx.profile, ctx.cache))
    finally:
        save_checkpoint({**run, "trained_on": [training_environment(torch.device("cpu"))]}, path)
    assert row["trained_on"] == f"{here} + not recorded"
    for key in ("id", "accuracy", "bits_actual", "device_flops", "sparsity", "prune_seconds"):
        assert row[key] == rows[1][key], key  # the same run, read the same way
