"""A model of one's own: referenced by file, built for the data's shape, started from its own trained weights
(loaded with weights_only, their hash in the base model's id) instead of a trained base model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from engine.data import ImageData
from engine.errors import UserError
from engine.models import normalize_reference, part_info, split
from engine.profiles import PROFILES
from engine.train import load_or_train_base, make_model, weights_reference

USER_MODEL = str(Path(__file__).parents[1] / "user_model.py") + ":TinyNet"


def _data(n: int = 40) -> ImageData:
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=gen)
    y = torch.arange(n) % 3
    return ImageData("tiny", ["a", "b", "c"], x, y, x[:12].clone(), y[:12].clone(), fingerprint="tiny")


def test_given_weights_replace_training_and_name_the_base_model(tmp_path: Path) -> None:
    data = _data()
    ref = normalize_reference(USER_MODEL)
    plain = PROFILES.get("smoke").base_config(data.fingerprint, model=ref)
    model = make_model(plain, data)
    assert model.input_shape == (1, 28, 28) and model.head[-1].out_features == 3
    torch.save(model.state_dict(), tmp_path / "w.pt")
    sha, path = weights_reference(tmp_path / "w.pt")
    base = PROFILES.get("smoke").base_config(data.fingerprint, model=ref, weights=sha, weights_path=path)
    assert base.id != plain.id
    loaded, ckpt = load_or_train_base(base, data, tmp_path / "cache")
    assert ckpt["metrics"]["train_seconds"] == 0.0 and ckpt["metrics"]["epochs"] == 0
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    assert (tmp_path / "cache" / "models" / f"base-{base.id}.pt").exists()
    device, _ = split(loaded, "cat")
    assert part_info(device).input_shape == (1, 28, 28)
    (tmp_path / "w.pt").write_bytes(b"changed")
    with pytest.raises(UserError, match="missing or changed"):
        load_or_train_base(base, data, tmp_path / "other-cache")


def test_weights_that_do_not_fit_are_refused_in_one_line(tmp_path: Path) -> None:
    data = _data()
    torch.save({"stem.0.weight": torch.zeros(1)}, tmp_path / "bad.pt")
    sha, path = weights_reference(tmp_path / "bad.pt")
    base = PROFILES.get("smoke").base_config(data.fingerprint, model=normalize_reference(USER_MODEL), weights=sha,
                                             weights_path=path)
    with pytest.raises(UserError, match="do not fit model"):
        load_or_train_base(base, data, tmp_path / "cache")
    with pytest.raises(UserError, match="no weights file"):
        weights_reference(tmp_path / "missing.pt")
