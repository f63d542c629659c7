"""`sweep` with several local workers trains a missing base model in its own process first (on every thread), not
inside the first worker's job while the others wait; a trained one, or trained weights, are left alone."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

import engine.train
from engine.cli import queue as queue_cli
from engine.profiles import PROFILES
from engine.train import base_checkpoint_path

BASE = PROFILES.get("smoke").base_config("synthetic-fingerprint")


def test_a_missing_base_model_is_trained_before_the_workers_start(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    trained: list = []
    monkeypatch.setattr(queue_cli, "writable_cache", lambda: tmp_path)
    monkeypatch.setattr(engine.train, "load_or_train_base",
                        lambda base, data, cache, progress=None: trained.append((base.id, cache)))
    queue_cli._train_base_first(BASE, object())  # type: ignore[arg-type]
    assert trained == [(BASE.id, tmp_path)]

    path = base_checkpoint_path(BASE, tmp_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"trained")
    queue_cli._train_base_first(BASE, object())  # type: ignore[arg-type]
    assert len(trained) == 1  # a trained base model is read by the jobs, not trained again

    from_weights = dataclasses.replace(BASE, weights="ab" * 32, weights_path="w.pt")
    queue_cli._train_base_first(from_weights, object())  # type: ignore[arg-type]
    assert len(trained) == 1  # trained weights are adopted by the jobs
