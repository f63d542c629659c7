import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from engine.errors import UserError
from engine.models import CifarResNet18, build_model, normalize_reference, split
from engine.profile import count_flops, param_bytes
from engine.prune import (
    ChannelMasks,
    ExpandChannels,
    IncrementalPruner,
    SparsitySchedule,
    apply_masks,
    compute_masks,
    prunable_groups,
    remove_pruned_channels,
)
from engine.prune.groups import masked_tensors

WIDTH = 0.125  # 8/16/32/64 channels


def _randomise_norms(model: nn.Module) -> nn.Module:
    """Non-trivial BN parameters and statistics (in place), so a wrongly kept or dropped channel shows."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return model


def _model(seed: int = 0) -> CifarResNet18:
    """A tiny model with non-trivial BN parameters and statistics, so a wrongly kept or dropped channel shows."""
    torch.manual_seed(seed)
    return _randomise_norms(CifarResNet18(WIDTH))


def _producer_tensors(device: nn.Module) -> dict[str, torch.Tensor]:
    """Every tensor indexed by a prunable group's output channel, cloned, keyed by path."""
    out = {}
    for g in prunable_groups(device):
        for conv in g.producers:
            out[f"{g.name}|{conv}.weight"] = device.get_submodule(conv).weight.detach().clone()
        for bn in g.norms:
            out[f"{g.name}|{bn}.weight"] = device.get_submodule(bn).weight.detach().clone()
            out[f"{g.name}|{bn}.bias"] = device.get_submodule(bn).bias.detach().clone()
    return out


def test_groups_couple_the_residual_streams() -> None:
    device, _ = split(_model(), "conv3_x")
    groups = {g.name: g for g in prunable_groups(device)}
    assert list(groups) == ["conv2_x.0.conv1", "conv2_x.1.conv1", "conv2_x", "conv3_x.0.conv1", "conv3_x.1.conv1",
                            "conv3_x"]
    assert groups["conv2_x"].producers == ("stem.0", "conv2_x_0.conv2", "conv2_x_1.conv2")
    assert groups["conv2_x"].norms == ("stem.1", "conv2_x_0.bn2", "conv2_x_1.bn2")
    assert groups["conv2_x"].stages == ("stem", "conv2_x")
    assert groups["conv3_x"].producers == ("conv3_x_0.conv2", "conv3_x_0.shortcut.0", "conv3_x_1.conv2")
    assert groups["conv3_x"].norms == ("conv3_x_0.bn2", "conv3_x_0.shortcut.1", "conv3_x_1.bn2")
    assert groups["conv3_x"].is_output and not groups["conv2_x"].is_output
    assert [g.name for g in prunable_groups(split(_model(), "stem")[0])] == ["stem"]
    assert prunable_groups(split(_model(), "server_only")[0]) == []


def test_smallest_summed_norm_channels_are_masked() -> None:  # (c)
    device, _ = split(_model(), "conv3_x")
    groups = {g.name: g for g in prunable_groups(device)}
    gen = torch.Generator().manual_seed(1)
    # internal group: one producer, filter norms set to a known permutation
    conv = device.get_submodule("conv2_x_0.conv1")
    norms = torch.tensor([5.0, 1.0, 7.0, 3.0, 2.0, 8.0, 4.0, 6.0])
    with torch.no_grad():
        conv.weight.copy_(torch.nn.functional.normalize(conv.weight.flatten(1), dim=1).view_as(conv.weight)
                          * norms.view(-1, 1, 1, 1))
    # output group: three producers whose summed norms rank differently from the first producer's alone
    per_conv = torch.rand(3, 16, generator=gen) + 0.1
    with torch.no_grad():
        for path, n in zip(groups["conv3_x"].producers, per_conv, strict=True):
            w = device.get_submodule(path).weight
            w.copy_(torch.nn.functional.normalize(w.flatten(1), dim=1).view_as(w) * n.view(-1, 1, 1, 1))
    masks = compute_masks(device, 0.5)
    assert set(masks.pruned_indices("conv2_x.0.conv1").tolist()) == {1, 4, 3, 6}
    expected = set(torch.argsort(per_conv.sum(0))[:8].tolist())
    assert set(masks.pruned_indices("conv3_x").tolist()) == expected
    assert expected != set(torch.argsort(per_conv[0])[:8].tolist())  # the sum, not the first conv, decides
    assert masks.kept("conv3_x") == 8 and masks.sparsity() == 0.5


def test_per_stage_targets_and_output_key() -> None:
    device, _ = split(_model(), "conv3_x")
    masks = compute_masks(device, 0.25, {"conv2_x": 0.5, "output": 0.75, "conv3_x.1.conv1": 0.0})
    assert masks.kept("conv2_x") == 4 and masks.kept("conv2_x.0.conv1") == 4  # 8 channels at 0.5
    assert masks.kept("conv3_x.0.conv1") == 12  # 16 at the global 0.25
    assert masks.kept("conv3_x.1.conv1") == 16
    assert masks.kept("conv3_x") == 4  # the transmitted feature, 16 at 0.75
    stem_only = compute_masks(split(_model(), "stem")[0], 0.0, {"stem": 0.5})
    assert stem_only.kept("stem") == 4
    with pytest.raises(UserError, match="unknown sparsity key"):
        compute_masks(device, 0.5, {"conv9_x": 0.5})
    with pytest.raises(UserError, match=r"must be in \[0, 1\)"):
        compute_masks(device, 1.0)


@pytest.mark.parametrize("point", ["stem", "conv2_x", "conv3_x", "conv4_x", "conv5_x", "conv3_x.0", "device_only"])
def test_physical_removal_matches_the_masked_model(point: str) -> None:  # (a), (e)
    model = _model().eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        dense = model(x)
    device, server = split(model, point)
    masks = compute_masks(device, 0.5)
    apply_masks(device, masks)
    with torch.no_grad():
        masked_feature = device(x)
        masked_out = server(masked_feature)
        assert (masked_out - dense).abs().max() > 1e-3  # masking changed the model, so the comparison means something
        small_device, small_server = remove_pruned_channels(device, masks, server)
        small_device.eval()
        small_server.eval()
        feature = small_device(x)
        out = small_server(feature)
    assert (out - masked_out).abs().max().item() < 1e-5
    assert count_flops(small_device, x[:1]) < count_flops(device, x[:1])
    assert param_bytes(small_device) < param_bytes(device)
    if point != "device_only":
        out_group = next(g for g in prunable_groups(device) if g.is_output)
        assert feature.shape[1] == masks.kept(out_group.name) == masked_feature.shape[1] // 2  # (e)
        kept, pruned = masks.kept_indices(out_group.name), masks.pruned_indices(out_group.name)
        assert masked_feature[:, pruned].abs().max() == 0  # the masked model sends zeros there
        assert (feature - masked_feature[:, kept]).abs().max().item() < 1e-5
        # only the first server layer is adapted: an identity first block gets a zero-fill, the rest is sliced
        assert isinstance(small_server[0], ExpandChannels) == (point in ("stem", "conv3_x.0"))


def test_flops_and_params_after_removal_follow_the_kept_channel_counts() -> None:  # (b)
    device, _ = split(_model(), "conv3_x")
    masks = compute_masks(device, 0.25, {"conv2_x": 0.5, "output": 0.75, "conv3_x.1.conv1": 0.0})
    small, _ = remove_pruned_channels(device, masks)
    c0, c3 = masks.kept("conv2_x"), masks.kept("conv3_x")  # the stem + conv2_x stream, the transmitted channels
    m20, m21, m30, m31 = (masks.kept(f"conv{s}_x.{b}.conv1") for s, b in ((2, 0), (2, 1), (3, 0), (3, 1)))

    def conv(cout: int, cin: int, k: int, hw: int) -> int:
        return 2 * cout * cin * k * k * hw * hw  # 2 * Cout * Cin * k * k * Hout * Wout

    expected = (conv(c0, 3, 3, 32)
                + conv(m20, c0, 3, 32) + conv(c0, m20, 3, 32) + conv(m21, c0, 3, 32) + conv(c0, m21, 3, 32)
                + conv(m30, c0, 3, 16) + conv(c3, m30, 3, 16) + conv(c3, c0, 1, 16)
                + conv(m31, c3, 3, 16) + conv(c3, m31, 3, 16))
    assert (c0, c3, m20, m30, m31) == (4, 4, 4, 12, 16)
    assert count_flops(small, torch.zeros(1, 3, 32, 32)) == expected
    weights = (c0 * 3 * 9 + 2 * (m20 + m21) * c0 * 9 + m30 * c0 * 9 + c3 * m30 * 9 + c3 * c0
               + 2 * m31 * c3 * 9)
    bn = 2 * (3 * c0 + m20 + m21 + m30 + 3 * c3 + m31)  # gamma and beta of all 10 BNs, the shortcut's included
    assert param_bytes(small) == 4 * (weights + bn)


def test_schedule_ramps_to_the_target() -> None:
    cubic = SparsitySchedule(0.8, {"output": 0.4}, ramp_iterations=4, iteration_steps=1)
    linear = SparsitySchedule(0.8, ramp_iterations=4, iteration_steps=1, ramp="linear")
    assert [linear.fraction(i) for i in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert [round(cubic.fraction(i), 6) for i in range(4)] == [0.578125, 0.875, 0.984375, 1.0]
    group = next(g for g in prunable_groups(split(_model(), "conv2_x")[0]) if g.is_output)
    assert cubic.sparsity(group, 3) == 0.4 and cubic.sparsity(group, 9) == 0.4
    frozen = SparsitySchedule(per_stage={"stem": 0.3, "conv2_x": 0.2})
    assert frozen.per_stage == (("conv2_x", 0.2), ("stem", 0.3)) and hash(frozen)
    with pytest.raises(UserError, match="unknown sparsity ramp"):
        SparsitySchedule(ramp="exp")


def _train_setup(point: str = "conv2_x") -> tuple[nn.Module, nn.Module, nn.Module, torch.optim.Optimizer]:
    model = _model()
    device, server = split(model, point)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    return model, device, server, opt


def _sgd_step(model: nn.Module, opt: torch.optim.Optimizer, gen: torch.Generator) -> None:
    x = torch.randn(8, 3, 32, 32, generator=gen)
    y = torch.randint(0, 10, (8,), generator=gen)
    loss = nn.functional.cross_entropy(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()


def test_incremental_iteration_masks_trains_and_restores() -> None:  # (d), (f)
    model, device, _, opt = _train_setup()
    gen = torch.Generator().manual_seed(0)
    pruner = IncrementalPruner(device, SparsitySchedule(0.5, ramp_iterations=2, iteration_steps=3, ramp="linear"))
    # a first iteration, so the optimizer carries momentum into the one under test
    for _ in range(3):
        pruner.before_step()
        _sgd_step(model, opt, gen)
        pruner.after_step()
    assert pruner.iteration == 0 and not pruner.active
    start = _producer_tensors(device)
    pruner.before_step()
    masks = pruner.masks
    assert pruner.iteration == 1 and pruner.active and masks.sparsity("conv2_x") == 0.5
    for step in range(3):
        if step:
            pruner.before_step()
        _sgd_step(model, opt, gen)
        pruner.after_step()
        for g in prunable_groups(device):  # (f) masked entries get no gradient...
            pruned = masks.pruned_indices(g.name)
            for _, p in masked_tensors(device, g, stats=False):
                assert p.grad[pruned].abs().max() == 0 and p.grad.abs().max() > 0, g.name
        if step < 2:  # ... and stay 0 within the iteration, momentum and weight decay notwithstanding
            for key, t in _producer_tensors(device).items():
                pruned = masks.pruned_indices(key.split("|")[0])
                assert t[pruned].abs().max() == 0, key
    assert not pruner.active  # the third after_step ended the iteration
    end = _producer_tensors(device)
    changed = 0
    for key, t in end.items():
        name = key.split("|")[0]
        pruned, kept = masks.pruned_indices(name), masks.kept_indices(name)
        assert torch.equal(t[pruned], start[key][pruned]), key  # (d) restored exactly
        assert start[key][pruned].abs().max() > 0, key  # ... to non-zero values, so the restore did something
        changed += int(not torch.allclose(t[kept], start[key][kept]))
    assert changed == len(end)  # (f) every unmasked tensor trained


def test_step_index_protocol_and_finalize_make_masks_permanent() -> None:
    model, device, server, opt = _train_setup("conv3_x")
    gen = torch.Generator().manual_seed(1)
    schedule = SparsitySchedule(0.5, {"output": 0.75}, ramp_iterations=2, iteration_steps=2, ramp="linear")
    pruner = IncrementalPruner(device, schedule)
    seen = []
    for i in range(5):
        pruner.step(i)
        seen.append((pruner.iteration, pruner.masks.kept("conv3_x")))
        _sgd_step(model, opt, gen)
        pruner.after_step()
    assert seen == [(0, 10), (0, 10), (1, 4), (1, 4), (2, 4)]  # 16 channels: 6 masked at 0.75 / 2, then 12
    assert pruner.at_target
    masks = pruner.finalize()
    assert torch.equal(masks["conv3_x"], pruner.masks["conv3_x"]) and masks.kept("conv3_x") == 4
    _sgd_step(model, opt, gen)  # fine-tuning after finalize keeps the pruned channels at 0
    pruner.after_step()
    for key, t in _producer_tensors(device).items():
        assert t[masks.pruned_indices(key.split("|")[0])].abs().max() == 0, key
    model.eval()
    small_device, small_server = remove_pruned_channels(device, masks, server)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert small_device.eval()(x).shape[1] == 4
        assert (small_server.eval()(small_device(x)) - model(x)).abs().max() < 1e-5
    pruner.close()
    assert not any(p._backward_hooks for p in device.parameters())


def test_pruner_state_round_trips() -> None:
    _, device, _, _ = _train_setup()
    schedule = SparsitySchedule(0.5, ramp_iterations=2, iteration_steps=4)
    pruner = IncrementalPruner(device, schedule)
    pruner.step(0)
    state = pruner.state_dict()
    saved = copy.deepcopy(device.state_dict())
    other = IncrementalPruner(device, schedule)
    pruner.close()
    other.load_state_dict(state)
    other.end_iteration()
    assert not torch.equal(device.state_dict()["stem.0.weight"], saved["stem.0.weight"])  # restored the masked
    assert ChannelMasks.from_dict(state["masks"]).to_dict() == state["masks"]


def test_removal_rejects_foreign_masks() -> None:
    device, server = split(_model(), "stem")
    masks = compute_masks(split(_model(), "conv2_x")[0], 0.5)
    with pytest.raises(UserError, match="lacks: .*conv2_x"):
        remove_pruned_channels(device, masks, server)


USER_MODEL = str(Path(__file__).parents[1] / "user_model.py") + ":TinyNet"


@pytest.mark.parametrize(("ref", "point", "shape"), [
    ("mobilenetv2", "bottleneck1", (3, 32, 32)),  # a linear bottleneck ends the part: its output is a layer's
    ("mobilenetv2", "bottleneck3", (3, 32, 32)),  # depthwise convolutions and residual streams
    ("vgg11_bn", "block3", (3, 32, 32)),
    ("vgg11_bn", "device_only", (3, 32, 32)),  # the logits are not pruned
    ("user", "cat", (1, 28, 28)),  # a concatenation sent as it is
    ("user", "mix", (1, 28, 28)),  # a concatenation consumed on the device
])
def test_any_model_pruned_physically_computes_what_it_computes_masked(ref: str, point: str,
                                                                      shape: tuple[int, ...]) -> None:
    ref = normalize_reference(USER_MODEL) if ref == "user" else ref
    torch.manual_seed(0)
    model = _randomise_norms(build_model(ref, 0.25, 10, shape[0], shape))
    model.eval()
    x = torch.randn(2, *shape)
    device, server = split(model, point)
    groups = prunable_groups(device)
    masks = compute_masks(device, 0.5, {"output": 0.75}, groups)
    with torch.no_grad():
        dense = device(x)
        apply_masks(device, masks, groups)
        masked = server(device(x))
        small_device, small_server = remove_pruned_channels(device, masks, server)
        out = small_server.eval()(small_device.eval()(x))
        assert (device(x) - dense).abs().max() > 1e-3  # masking changed the part, so the comparison means something
    assert (out - masked).abs().max().item() < 1e-5
    assert count_flops(small_device, x[:1]) < count_flops(device, x[:1])
    sent = [g.name for g in groups if g.is_output]
    assert bool(sent) == (point != "device_only") and (point == "cat") == (len(sent) == 2)  # one group per branch
    if sent:
        assert small_device(x).shape[1] == sum(masks.kept(n) for n in sent) < dense.shape[1]
