"""Base-model training: seeded, cached by config id, corrupt checkpoints detected and retrained, resumable."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import pytest
import torch

import engine.train as train_mod
from engine.data import ImageData, resize_batch
from engine.profiles import PROFILES
from engine.train import base_checkpoint_path, load_or_train_base
from engine.training import autocast, load_checkpoint, save_checkpoint


@pytest.fixture()
def base_cfg(small_data: ImageData):
    return PROFILES.get("smoke").base_config(small_data.fingerprint)


def test_training_is_seeded_and_cached(small_data: ImageData, base_cfg, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    model_a, ckpt_a = load_or_train_base(base_cfg, small_data, tmp_path / "a")
    _, ckpt_b = load_or_train_base(base_cfg, small_data, tmp_path / "b")
    for key, value in ckpt_a["state_dict"].items():
        assert torch.equal(value, ckpt_b["state_dict"][key]), key
    assert 0.0 <= ckpt_a["metrics"]["test_accuracy"] <= 1.0
    assert ckpt_a["metrics"]["train_images"] == 1080  # 10 % of the 1,200 held out for validation

    def no_training(*args, **kwargs):
        raise AssertionError("trained again instead of loading the cache")

    monkeypatch.setattr(train_mod, "train_base", no_training)
    model_c, ckpt_c = load_or_train_base(base_cfg, small_data, tmp_path / "a")
    assert ckpt_c["metrics"] == ckpt_a["metrics"]
    assert all(torch.equal(p, q) for p, q in zip(model_a.state_dict().values(), model_c.state_dict().values(),
                                                 strict=True))


@pytest.mark.parametrize("damage", ["truncate", "flip", "sidecar"])
def test_corrupt_checkpoint_is_detected_and_retrained(small_data: ImageData, base_cfg, tmp_path: Path,
                                                      caplog: pytest.LogCaptureFixture, damage: str) -> None:
    _, first = load_or_train_base(base_cfg, small_data, tmp_path)
    path = base_checkpoint_path(base_cfg, tmp_path)
    raw = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(raw[: len(raw) // 2])
    elif damage == "flip":
        path.write_bytes(raw[:-100] + bytes([raw[-100] ^ 0xFF]) + raw[-99:])
    else:
        path.with_suffix(".pt.sha256").write_text("0" * 64)
    with caplog.at_level(logging.WARNING):
        assert load_checkpoint(path) is None
    assert any("corrupt checkpoint" in r.message for r in caplog.records)
    _, again = load_or_train_base(base_cfg, small_data, tmp_path)
    assert load_checkpoint(path) is not None
    assert again["metrics"]["test_accuracy"] == first["metrics"]["test_accuracy"]  # seeded: same model again


def test_checkpoints_load_weights_only(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "x.pt"
    save_checkpoint({"ok": torch.zeros(1)}, path)
    assert load_checkpoint(path)["ok"].shape == (1,)
    save_checkpoint({"evil": Evil()}, path)
    assert load_checkpoint(path) is None  # a pickled object is refused, not executed


@pytest.mark.parametrize("ema", [0.0, 0.5])
def test_interrupted_training_resumes(small_data: ImageData, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      ema: float) -> None:
    cfg = PROFILES.get("smoke").base_config(small_data.fingerprint)
    cfg = type(cfg)(**{**cfg.__dict__, "epochs": 2, "ema": ema})  # with ema the average must resume too
    _, straight = load_or_train_base(cfg, small_data, tmp_path / "straight")

    calls = {"n": 0}
    real_accuracy = train_mod.accuracy

    def crash_after_first_epoch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # the validation pass after epoch 2
            raise KeyboardInterrupt
        return real_accuracy(*args, **kwargs)

    monkeypatch.setattr(train_mod, "accuracy", crash_after_first_epoch)
    with pytest.raises(KeyboardInterrupt):
        load_or_train_base(cfg, small_data, tmp_path / "resumed")
    partial = base_checkpoint_path(cfg, tmp_path / "resumed").with_suffix(".partial.pt")
    assert load_checkpoint(partial)["epoch"] == 1
    monkeypatch.setattr(train_mod, "accuracy", real_accuracy)
    _, resumed = load_or_train_base(cfg, small_data, tmp_path / "resumed")
    assert not partial.exists()
    for key, value in straight["state_dict"].items():
        assert torch.allclose(value.float(), resumed["state_dict"][key].float(), atol=1e-5), key


@pytest.mark.parametrize(("field", "schedule"), [("sizes", (16, 24, 32)), ("scales", (0.5, 0.75, 1.0))])
def test_progressive_resizing_trains_each_epoch_at_its_size(small_data: ImageData, base_cfg, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch, field: str,
                                                            schedule: tuple) -> None:
    cfg = dataclasses.replace(base_cfg, epochs=3, **{field: schedule})
    seen = []

    def recording_resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        out = resize_batch(x, size)
        seen.append((x.shape[-1], tuple(out.shape[-2:])))
        return out

    evaluated, accuracy = [], train_mod.accuracy

    def recording_accuracy(model, x: torch.Tensor, *args) -> float:  # noqa: ANN001
        evaluated.append(len(x))
        return accuracy(model, x, *args)

    monkeypatch.setattr(train_mod, "resize_batch", recording_resize)
    monkeypatch.setattr(train_mod, "accuracy", recording_accuracy)
    _, ckpt = load_or_train_base(cfg, small_data, tmp_path)
    steps = -(-1080 // cfg.batch_size)  # batches per epoch
    assert seen == [(32, (16, 16))] * steps + [(32, (24, 24))] * steps + [(32, (32, 32))] * steps
    assert evaluated == [120, 400]  # validation after the last epoch only (the others ran at 16 and 24), then test
    assert ckpt["config"][field] == list(schedule) and cfg.id != base_cfg.id
    assert 0.0 <= ckpt["metrics"]["val_accuracy"] <= 1.0 and 0.0 <= ckpt["metrics"]["test_accuracy"] <= 1.0


def test_weight_averaging_keeps_the_better_on_validation(small_data: ImageData, base_cfg, tmp_path: Path) -> None:
    cfg = dataclasses.replace(base_cfg, epochs=2, ema=0.9)
    model, ckpt = load_or_train_base(cfg, small_data, tmp_path)
    m = ckpt["metrics"]
    assert cfg.id != base_cfg.id and "ema=0.9" in repr(cfg)
    assert m["averaged"] == (m["val_accuracy_averaged"] > m["val_accuracy_trained"])
    assert m["val_accuracy"] == max(m["val_accuracy_averaged"], m["val_accuracy_trained"])
    _, plain = load_or_train_base(dataclasses.replace(cfg, ema=0.0), small_data, tmp_path)
    same = all(torch.equal(v, plain["state_dict"][k]) for k, v in ckpt["state_dict"].items())
    assert same != m["averaged"]  # the averaged weights differ from the trained ones, which equal a plain run's
    assert "averaged" not in plain["metrics"]


def test_weight_average_moves_by_its_warmed_up_decay() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    start = {k: v.clone() for k, v in model.state_dict().items()}
    average = train_mod.WeightAverage(model, 0.99)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    model[1].num_batches_tracked += 5
    average.update(model)
    d = 2 / 11  # min(0.99, (1 + 1) / (10 + 1)) after one update
    assert torch.allclose(average.state["0.weight"], start["0.weight"] + (1 - d))
    assert torch.equal(average.state["1.num_batches_tracked"], torch.tensor(5))  # integers are copied
    assert torch.equal(average.state["1.running_mean"], start["1.running_mean"])  # unchanged buffers stay


def test_resize_batch() -> None:
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    assert resize_batch(x, 4) is x
    assert torch.equal(resize_batch(x, 2), torch.nn.functional.avg_pool2d(x, 2))  # an exact half: 2x2 means
    assert resize_batch(x, 3).shape == (2, 3, 3, 3) and resize_batch(x, 6).shape == (2, 3, 6, 6)


def test_autocast_follows_the_precision() -> None:
    cpu = torch.device("cpu")
    for precision, enabled in (("auto", False), ("fp32", False), ("bf16", True)):
        with autocast(cpu, precision):
            assert torch.is_autocast_enabled("cpu") is enabled
            assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == (torch.bfloat16 if enabled else torch.float32)


@pytest.mark.parametrize(("precision", "trained_in"), [("auto", torch.float32), ("bf16", torch.bfloat16)])
def test_a_bf16_base_model_trains_under_autocast_and_is_evaluated_in_fp32(
        small_data: ImageData, base_cfg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture, precision: str, trained_in: torch.dtype) -> None:
    cfg = dataclasses.replace(base_cfg, precision=precision)
    seen: set[tuple[bool, torch.dtype]] = set()
    make_model = train_mod.make_model

    def recording_model(*args):  # noqa: ANN202
        model = make_model(*args)
        model.stem[0].register_forward_hook(lambda m, i, out: seen.add((m.training, out.dtype)))
        return model

    monkeypatch.setattr(train_mod, "make_model", recording_model)
    monkeypatch.setattr(train_mod, "native_bf16", lambda device: False)
    with caplog.at_level(logging.WARNING):
        _, ckpt = load_or_train_base(cfg, small_data, tmp_path)
    assert seen == {(True, trained_in), (False, torch.float32)}  # evaluation as deployed: fp32 on a CPU
    assert ckpt["metrics"]["precision"] == precision and ckpt["config"]["precision"] == precision
    assert ("no native bf16" in caplog.text) is (precision == "bf16")
    assert all(v.dtype != torch.bfloat16 for v in ckpt["state_dict"].values())  # fp32 weights either way
