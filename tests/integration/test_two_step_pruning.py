"""`two_step_pruning` (Shi et al. 2019): step 1 prunes the whole network once for every split, step 2 cuts the
channels sent at the split; pruned channels are removed on both sides."""

from __future__ import annotations

import pytest
import torch

import engine.methods.two_step_pruning as two_step
from engine.config import VariantConfig
from engine.data import ImageData, normalize
from engine.errors import UserError
from engine.methods import METHODS, RunContext
from engine.methods.two_step_pruning import TwoStepPruning, output_group, pruned_split, step1_run
from engine.models import CifarResNet18, split
from engine.profile import profile_split
from engine.profiles import PROFILES

SPLIT = "conv4_x"  # 32 output channels at the smoke width 0.125


@pytest.fixture(scope="module")
def ctx(small_data: ImageData, tmp_path_factory: pytest.TempPathFactory) -> RunContext:
    return RunContext(small_data, PROFILES.get("smoke"), tmp_path_factory.mktemp("two_step"))


@pytest.fixture(scope="module")
def base(ctx: RunContext):  # noqa: ANN201
    return ctx.profile.base_config(ctx.data.fingerprint)


@pytest.fixture(scope="module")
def rows(ctx: RunContext, base) -> list[dict]:  # noqa: ANN001
    variants = METHODS.get("two_step_pruning").variants(base, ["server_only", SPLIT])
    assert [(v.split, v.knob("step1")) for v in variants] == [(SPLIT, 0.25), (SPLIT, 0.5)]
    return [METHODS.get("two_step_pruning").run(v, ctx) for v in variants]


def _reference(ctx: RunContext, base, point: str) -> dict:  # noqa: ANN001
    model, _ = ctx.base(base)
    return profile_split(model, point, (3, 32, 32), 10, time_device=False)


def test_rows_shrink_device_server_and_feature(ctx: RunContext, base, rows: list[dict]) -> None:  # noqa: ANN001
    ref = _reference(ctx, base, SPLIT)
    # step 1 masks floor(s * 32) of conv4_x's channels, step 2 half of the rest: 32 -> 24 -> 12, 32 -> 16 -> 8
    assert [r["feature_shape"] for r in rows] == [[12, 8, 8], [8, 8, 8]]
    assert [r["output_sparsity"] for r in rows] == [20 / 32, 24 / 32]
    assert ref["device_flops"] > rows[0]["device_flops"] > rows[1]["device_flops"]
    assert ref["server_flops"] > rows[0]["server_flops"] > rows[1]["server_flops"]  # the server is pruned too
    assert ref["device_memory_bytes"] > rows[0]["device_memory_bytes"] > rows[1]["device_memory_bytes"]
    for r in rows:
        assert r["method"] == "two_step_pruning" and 0.0 <= r["accuracy"] <= 1.0
        assert r["bits_raw"] == 8 * 12 * 64 or r["bits_raw"] == 8 * 8 * 64
        assert r["bits_ideal"] <= r["bits_actual"] <= r["bits_raw"] + 8
        assert r["base_device_flops"] == ref["device_flops"]


def test_step2_prunes_only_the_split_layer_and_removal_is_exact(ctx: RunContext, base,  # noqa: ANN001
                                                                rows: list[dict]) -> None:
    knobs = rows[0]["knobs"]
    cfg = VariantConfig.make("two_step_pruning", SPLIT, base, **knobs)
    pruned = pruned_split(cfg, ctx)
    s1 = step1_run(cfg, ctx, two_step.knobs_of(cfg, "smoke"))
    masks1 = s1["snapshots"][0]["masks"]
    group = output_group(pruned.masked_model, SPLIT)
    assert group.name == "conv4_x"
    changed = [k for k, v in pruned.masks.to_dict().items() if v != masks1[k]]
    assert changed == ["conv4_x"]
    assert set(pruned.masks.kept_indices("conv4_x").tolist()) < set(masks1["conv4_x"]["kept"])
    x = normalize(ctx.data.test_x[:64], ctx.data.mean, ctx.data.std)
    with torch.no_grad():
        assert torch.allclose(pruned.masked_model(x), pruned.server(pruned.device(x)), atol=1e-4)


def test_step1_is_shared_by_every_split(ctx: RunContext, base, rows: list[dict],  # noqa: ANN001
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = two_step.finetune

    def counting(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        calls.append(kwargs["checkpoint"].name)
        return real(*args, **kwargs)

    monkeypatch.setattr(two_step, "finetune", counting)
    knobs = {k: v for k, v in rows[0]["knobs"].items()}
    row = TwoStepPruning().run(VariantConfig.make("two_step_pruning", "stem", base, **knobs), ctx)
    assert len(calls) == 1 and calls[0].startswith("two_step_pruning-") and "step1" not in calls[0]
    # the stem's 8 channels: step 1 masks 2 (through the conv2_x stream it feeds), step 2 half of the other 6
    assert row["feature_shape"] == [3, 32, 32]
    TwoStepPruning().run(VariantConfig.make("two_step_pruning", "stem", base, **knobs), ctx)
    assert len(calls) == 1  # step 2 is cached as well


def test_output_group_and_errors(ctx: RunContext, base) -> None:  # noqa: ANN001
    model = CifarResNet18(0.125)
    assert output_group(model, "stem").name == "conv2_x"  # tied to the stem by conv2_x's identity shortcuts
    assert output_group(model, "conv3_x.0").name == "conv3_x"
    assert output_group(model, "conv5_x").producers == (  # the residual stream: both blocks and the shortcut
        "layer4.0.conv2", "layer4.0.shortcut.0", "layer4.1.conv2")
    assert split(model, "stem")[0][0] is model.stem
    with pytest.raises(UserError, match="original"):
        TwoStepPruning().run(VariantConfig.make("two_step_pruning", "device_only", base), ctx)
    with pytest.raises(UserError, match="step1_levels"):
        TwoStepPruning().run(VariantConfig.make("two_step_pruning", SPLIT, base, step1=0.3), ctx)
