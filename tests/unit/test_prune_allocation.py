"""Sensitivity allocation of per-group pruning targets (Li et al. 2017): the greedy walk, the FLOPs it reaches, the
per-level schedule a pruning run follows, and the run keys it leaves alone."""

from collections.abc import Mapping

import pytest
import torch

from engine.config import VariantConfig
from engine.errors import UserError
from engine.methods.three_step import LevelSchedule, check_run_knobs, run_key, run_knobs
from engine.models import build_model, split
from engine.profiles import PROFILES
from engine.prune import allocate, device_flops, prunable_groups, sensitivity
from engine.prune.groups import ChannelGroup

# each group's FLOPs per unit of sparsity, and a 100-FLOP part: an additive stand-in for `device_flops`
WEIGHTS = {"cheap": 40.0, "costly": 40.0, "small": 10.0}


def _flops(sparsity: Mapping[str, float]) -> float:
    return 100.0 - sum(WEIGHTS[k] * v for k, v in sparsity.items())


def test_the_walk_prunes_the_group_that_costs_least_per_flop_first() -> None:
    curves = {"cheap": [(0.25, 0.01), (0.5, 0.02)], "costly": [(0.25, 0.20), (0.5, 0.40)],
              "small": [(0.25, 0.001), (0.5, 0.002)]}
    # 0.4 / 10 FLOPs per step of `small` is cheaper per FLOP than `cheap`'s 1 / 10: small first, then cheap
    assert allocate(curves, _flops, 100.0) == {"cheap": 0.0, "costly": 0.0, "small": 0.0}
    assert allocate(curves, _flops, 97.5) == {"cheap": 0.0, "costly": 0.0, "small": 0.25}
    assert allocate(curves, _flops, 80.0) == {"cheap": 0.5, "costly": 0.0, "small": 0.5}
    # past what the cheap groups give, the costly one
    assert allocate(curves, _flops, 70.0) == {"cheap": 0.5, "costly": 0.25, "small": 0.5}


def test_an_unreachable_goal_takes_every_step() -> None:
    curves = {"cheap": [(0.25, 0.01)], "costly": [(0.25, 0.3)]}
    assert allocate(curves, _flops, 0.0) == {"cheap": 0.25, "costly": 0.25}


def test_a_loss_that_falls_with_more_pruning_is_not_a_gain() -> None:
    # `costly` measures less loss at 0.5 than at 0.25 (noise): its second step is read as free, its first is not
    curves = {"cheap": [(0.25, 0.05), (0.5, 0.10)], "costly": [(0.25, 0.08), (0.5, 0.02)]}
    assert allocate(curves, _flops, 90.0) == {"cheap": 0.25, "costly": 0.0}
    assert allocate(curves, _flops, 80.0) == {"cheap": 0.5, "costly": 0.0}
    assert allocate(curves, _flops, 65.0) == {"cheap": 0.5, "costly": 0.5}


def _group(name: str) -> ChannelGroup:
    return ChannelGroup(name, (name,), (name,), (), 8)


def test_a_level_schedule_ramps_from_each_levels_targets_to_the_next() -> None:
    levels = ({"a": 0.25}, {"a": 0.5, "b": 0.25})
    schedule = LevelSchedule(0.5, ramp_iterations=2, iteration_steps=1, ramp="linear", levels=2, hold_iterations=1,
                             level_targets=levels)
    a, b = _group("a"), _group("b")
    assert [schedule.sparsity(a, i) for i in range(6)] == [0.125, 0.25, 0.25, 0.375, 0.5, 0.5]
    assert [schedule.sparsity(b, i) for i in range(6)] == [0.0, 0.0, 0.0, 0.125, 0.25, 0.25]
    assert schedule.level_targets == ((("a", 0.25),), (("a", 0.5), ("b", 0.25)))
    with pytest.raises(UserError, match="gives 1 levels, the schedule has 2"):
        LevelSchedule(0.5, levels=2, level_targets=({"a": 0.5},))


def test_device_flops_fall_with_the_sparsity_of_any_group() -> None:
    device = split(build_model("resnet18", 0.25, 10, 3).eval(), "conv4_x")[0]
    groups = prunable_groups(device)
    full = device_flops(device, {}, groups)
    for g in groups:
        assert device_flops(device, {g.name: 0.5}, groups) < full


def test_sensitivity_measures_each_group_alone_on_a_copy() -> None:
    torch.manual_seed(0)
    model = build_model("resnet18", 0.25, 10, 3).eval()
    for m in model.modules():  # no zero-initialised residual branch: every group's channels reach the output
        if isinstance(m, torch.nn.BatchNorm2d):
            torch.nn.init.uniform_(m.weight, 0.5, 1.5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(8, 3, 32, 32)
    reference = model(x).detach()

    def evaluate(m: torch.nn.Module) -> float:  # how far the logits moved: 0 for the untouched model
        with torch.no_grad():
            return -float((m(x) - reference).abs().mean())

    curves = sensitivity(model, lambda m: split(m, "conv4_x")[0], evaluate, steps=(0.25, 0.5))
    assert set(curves) == {g.name for g in prunable_groups(split(model, "conv4_x")[0])}
    assert all([s for s, _ in c] == [0.25, 0.5] and all(loss > 0 for _, loss in c) for c in curves.values())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_runs_of_the_uniform_allocation_keep_their_keys() -> None:
    base = PROFILES.get("smoke").base_config("d")
    plain = VariantConfig.make("three_step", "conv4_x", base, **PROFILES.get("smoke").prune.knobs())
    uniform = VariantConfig.make("three_step", "conv4_x", base, **PROFILES.get("smoke").prune.knobs(),
                                 allocation="uniform")
    sensitive = VariantConfig.make("three_step", "conv4_x", base, **PROFILES.get("smoke").prune.knobs(),
                                   allocation="sensitivity")
    key = run_key(plain, run_knobs(plain, "smoke"))
    assert run_key(uniform, run_knobs(uniform, "smoke")) == key != run_key(sensitive, run_knobs(sensitive, "smoke"))
    wrong = VariantConfig.make("three_step", "conv4_x", base, allocation="greedy")
    with pytest.raises(UserError, match="allocation must be one of uniform, sensitivity"):
        check_run_knobs(run_knobs(wrong, "smoke"), base)


def test_a_variant_without_run_knobs_follows_its_profile_s_allocation() -> None:
    """The quick budget allocates by sensitivity: a variant that names no run knobs prunes as the budget says, one
    that names `allocation=uniform` does not; a budget at the paper's uniform targets carries no `allocation` knob."""
    base = PROFILES.get("quick").base_config("d")
    bare = VariantConfig.make("three_step", "conv4_x", base, snapshot=1)
    assert run_knobs(bare, "quick")["allocation"] == "sensitivity"
    assert PROFILES.get("quick").prune.knobs()["allocation"] == "sensitivity"
    uniform = VariantConfig.make("three_step", "conv4_x", base, snapshot=1, allocation="uniform")
    assert run_knobs(uniform, "quick")["allocation"] == "uniform"
    assert "allocation" not in PROFILES.get("smoke").prune.knobs()
    assert run_knobs(VariantConfig.make("three_step", "conv4_x", base), "smoke")["allocation"] == "uniform"
