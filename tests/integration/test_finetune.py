"""The fine-tuning loop: step budget, seeded batches, hooks, frozen parameters, and resume after an interruption."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from engine.data import ImageData
from engine.errors import UserError
from engine.finetune import FinetuneConfig, TrainHooks, _batches, finetune, lr_factor
from engine.models import CifarResNet18, split

CPU = torch.device("cpu")


class Interrupt(Exception):
    pass


class Recorder(TrainHooks):
    """Records the step indices it sees; its count is resumable state; raises at `fail_at` (a step)."""

    def __init__(self, fail_at: int | None = None, stop_after: int | None = None) -> None:
        self.steps: list[int] = []
        self.count = 0
        self.fail_at, self.stop_after = fail_at, stop_after

    def before_step(self, step: int) -> None:
        if step == self.fail_at:
            raise Interrupt
        self.steps.append(step)
        self.count += 1

    def end_epoch(self, epochs_done: int) -> bool:
        return self.stop_after is not None and epochs_done >= self.stop_after

    def state_dict(self) -> dict[str, Any]:
        return {"count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.count = state["count"]


@pytest.fixture(scope="module")
def tiny(small_data: ImageData) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return small_data.train_x[:96], small_data.train_y[:96], small_data.mean, small_data.std


def _model() -> CifarResNet18:
    torch.manual_seed(0)
    return CifarResNet18(0.125)


CFG = FinetuneConfig(epochs=3, steps_per_epoch=2, batch_size=16, lr=0.05, lr_schedule="cosine", seed=3)


def test_batches_are_full_and_cover_each_permutation() -> None:
    batches = list(_batches(10, 6, 4, torch.Generator().manual_seed(0)))
    assert [len(b) for b in batches] == [4] * 6
    for first, second in ((0, 1), (2, 3), (4, 5)):  # two full batches per permutation of 10, the rest dropped
        assert len(set(batches[first].tolist()) | set(batches[second].tolist())) == 8
    again = list(_batches(10, 6, 4, torch.Generator().manual_seed(0)))
    assert all(torch.equal(a, b) for a, b in zip(batches, again, strict=True))
    assert FinetuneConfig(batch_size=32).steps(100) == 3


def test_resume_after_an_interruption_gives_the_uninterrupted_weights(tiny: tuple, tmp_path: Path) -> None:
    x, y, mean, std = tiny
    straight = _model()
    rec = Recorder()
    result = finetune(straight, x, y, mean, std, CFG, hooks=rec, device=CPU)
    assert rec.steps == list(range(6)) and result.steps == 6 and not result.stopped

    ckpt = tmp_path / "ft.partial.pt"
    broken = _model()
    with pytest.raises(Interrupt):  # dies in the third epoch, after the checkpoint of epoch 2
        finetune(broken, x, y, mean, std, CFG, hooks=Recorder(fail_at=5), checkpoint=ckpt, device=CPU)
    assert ckpt.exists()
    resumed = _model()  # a fresh process: initial weights, the checkpoint on disk
    rec2 = Recorder()
    result = finetune(resumed, x, y, mean, std, CFG, hooks=rec2, checkpoint=ckpt, device=CPU)
    assert result.resumed_from == 2 and result.epochs == 3
    assert rec2.steps == [4, 5]  # only the last epoch ran again
    assert rec2.count == 6  # the hooks' state came back with the weights
    assert not ckpt.exists()
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), name
    assert not torch.equal(straight.stem[0].weight, _model().stem[0].weight)  # it did train


def test_a_checkpoint_of_another_budget_is_not_resumed(tiny: tuple, tmp_path: Path) -> None:
    x, y, mean, std = tiny
    ckpt = tmp_path / "ft.partial.pt"
    with pytest.raises(Interrupt):
        finetune(_model(), x, y, mean, std, CFG, hooks=Recorder(fail_at=3), checkpoint=ckpt, device=CPU)
    rec = Recorder()
    other = FinetuneConfig(epochs=2, steps_per_epoch=2, batch_size=16, lr=0.05, seed=3)
    finetune(_model(), x, y, mean, std, other, hooks=rec, checkpoint=ckpt, device=CPU)
    assert rec.steps == [0, 1, 2, 3]


def test_hooks_stop_training_and_frozen_parameters_stay(tiny: tuple) -> None:
    x, y, mean, std = tiny
    model = _model()
    device, server = split(model, "conv3_x")
    before = copy.deepcopy(device.state_dict())
    rec = Recorder(stop_after=1)
    calls = []

    def loss_fn(m: nn.Module, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        calls.append(len(xb))
        return nn.functional.cross_entropy(m(xb), yb)

    result = finetune(model, x, y, mean, std, CFG, hooks=rec, loss_fn=loss_fn,
                      parameters=list(server.parameters()), device=CPU)
    assert result.stopped and result.epochs == 1 and rec.steps == [0, 1] and calls == [16, 16]
    after = device.state_dict()
    for k, v in before.items():
        if "running" in k or "num_batches" in k:
            continue  # BN statistics follow the data in train mode; parameters must not move
        assert torch.equal(v, after[k]), k
    assert not model.training


def test_learning_rate_schedules() -> None:
    restarts = lr_factor("cosine_restarts", 6, 3)  # each epoch of 3 steps decays from the full rate
    assert [round(restarts(i), 4) for i in range(6)] == [1.0, 0.75, 0.25, 1.0, 0.75, 0.25]
    once = lr_factor("cosine", 4, 2)
    assert [round(once(i), 4) for i in range(5)] == [1.0, 0.8536, 0.5, 0.1464, 0.0]
    assert lr_factor("constant", 4, 2)(3) == 1.0


def test_bad_budgets_are_user_errors() -> None:
    with pytest.raises(UserError):
        FinetuneConfig(epochs=0)
    with pytest.raises(UserError):
        FinetuneConfig(lr_schedule="step")


def test_the_precision_sets_autocast(tiny: tuple) -> None:
    x, y, mean, std = tiny
    seen = []

    def loss_fn(m: nn.Module, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        logits = m(xb)
        seen.append(logits.dtype)
        return nn.functional.cross_entropy(logits.float(), yb)

    for precision in ("bf16", "auto"):
        cfg = FinetuneConfig(steps_per_epoch=1, batch_size=8, precision=precision)
        finetune(_model(), x, y, mean, std, cfg, loss_fn=loss_fn, device=CPU)
    assert seen == [torch.bfloat16, torch.float32]
