"""Distillation in a pruning run: the loss, and the run keys it leaves alone."""

import torch
from torch import nn

from engine.config import VariantConfig
from engine.methods.three_step import distillation_loss, run_key, run_knobs
from engine.profiles import PROFILES


def _pair() -> tuple[nn.Module, nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    teacher, student = nn.Linear(6, 4), nn.Linear(6, 4)
    return teacher, student, torch.randn(16, 6), torch.randint(0, 4, (16,))


def test_weight_zero_is_the_label_loss() -> None:
    teacher, student, x, y = _pair()
    ce = nn.CrossEntropyLoss(label_smoothing=0.1)(student(x), y)
    assert torch.allclose(distillation_loss(teacher, 0.0, 0.1)(student, x, y), ce)


def test_a_student_equal_to_its_teacher_has_no_distillation_term() -> None:
    teacher, _, x, y = _pair()
    loss = distillation_loss(teacher, 1.0, 0.1)(teacher, x, y)
    assert abs(float(loss)) < 1e-5


def test_distillation_pulls_the_student_towards_the_teacher() -> None:
    teacher, student, x, y = _pair()
    loss_fn = distillation_loss(teacher, 1.0, 0.0)
    before = float(loss_fn(student, x, y))
    opt = torch.optim.SGD(student.parameters(), lr=0.5)
    for _ in range(50):
        opt.zero_grad()
        loss_fn(student, x, y).backward()
        opt.step()
    assert float(loss_fn(student, x, y)) < 0.2 * before
    assert all(p.grad is None for p in teacher.parameters())


def test_runs_without_distillation_keep_their_keys() -> None:
    base = PROFILES.get("smoke").base_config("d")
    plain = VariantConfig.make("three_step", "conv4_x", base, **PROFILES.get("smoke").prune.knobs())
    assert "distill" not in dict(plain.knobs)
    knobs = run_knobs(plain, "smoke")
    assert knobs["distill"] == 0.0
    explicit = VariantConfig.make("three_step", "conv4_x", base, **PROFILES.get("smoke").prune.knobs(), distill=0.0)
    assert run_key(explicit, run_knobs(explicit, "smoke")) == run_key(plain, knobs)
    distilled = VariantConfig.make("three_step", "conv4_x", base, **PROFILES.get("smoke").prune.knobs(), distill=0.5)
    assert run_key(distilled, run_knobs(distilled, "smoke")) != run_key(plain, knobs)

