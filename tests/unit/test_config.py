"""Config ids: the hash of the canonical JSON, stable across releases for configs that do not use later fields."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

from engine.config import BaseModelConfig, VariantConfig, config_id, size_schedule
from engine.errors import UserError
from engine.profiles import PROFILES, profile_of


def test_a_later_optional_field_changes_no_id_until_it_is_set() -> None:
    # the quick profile's base model of the CIFAR-10 JPEG copy as first released and measured: 8 epochs at 32x32
    base = BaseModelConfig("45b041e867f5a40f", epochs=8, batch_size=128, lr=0.15)
    assert base.id == "5ce18a3797658519"
    later = ("sizes", "scales", "precision", "profile", "weights", "weights_path", "ema")
    released = {k: v for k, v in dataclasses.asdict(base).items() if k not in later}
    assert base.id == config_id(released) and not any(f"{k}=" in repr(base) for k in later)
    variant = VariantConfig.make("three_step", "conv4_x", base, sparsity=0.5, bits=4)
    as_released = dataclasses.asdict(variant)
    for k in later:
        del as_released["base"][k]
    assert variant.id == config_id(as_released)

    resized = dataclasses.replace(base, epochs=3, sizes=(16, 24, 32))
    assert resized.id != dataclasses.replace(base, epochs=3).id and "sizes=(16, 24, 32)" in repr(resized)
    assert VariantConfig.make("three_step", "conv4_x", resized, sparsity=0.5, bits=4).id != variant.id
    again = BaseModelConfig(**json.loads(json.dumps(resized.__dict__)))  # a checkpoint's or a job's copy
    assert again == resized and again.id == resized.id and again.sizes == (16, 24, 32)


def test_scales_follow_the_data_and_the_profile_carries_them() -> None:
    assert size_schedule((0.5, 2), (1.0, 1)) == (0.5, 0.5, 1.0)
    base = BaseModelConfig("d", epochs=3, scales=(0.5, 0.75, 1.0))
    assert [base.input_size(e, (32, 32)) for e in range(3)] == [(16, 16), (24, 24), (32, 32)]
    assert [base.input_size(e, (28, 20)) for e in range(3)] == [(14, 10), (21, 15), (28, 20)]
    assert BaseModelConfig("d", epochs=2, sizes=(8, 16)).input_size(0, (32, 32)) == (8, 8)
    assert BaseModelConfig("d").input_size(0, (28, 28)) == (28, 28)
    again = BaseModelConfig(**json.loads(json.dumps(base.__dict__)))
    assert again == base and again.id == base.id and "scales=(0.5, 0.75, 1.0)" in repr(base)
    for name in PROFILES:  # each profile's base config is recognised as that profile's
        profile = PROFILES.get(name)
        base = profile.base_config("d")
        assert base.scales == profile.scales and profile_of(base) is profile


def test_the_profile_is_recorded_but_names_the_same_model() -> None:
    """A base model records the profile it was trained for (its variants follow that profile's budgets, even with
    a hand-set size schedule); the label is in neither its id nor its repr, so every stored id stands."""
    paper = PROFILES.get("paper").base_config("d")
    resized = dataclasses.replace(paper, epochs=3, scales=(), sizes=(16, 24, 32))
    assert paper.profile == "paper" and profile_of(resized) is PROFILES.get("paper")
    unlabelled = dataclasses.replace(resized, profile="")
    assert unlabelled.id == resized.id and repr(unlabelled) == repr(resized) and unlabelled == resized
    assert profile_of(unlabelled) is PROFILES.get("quick")  # an old config's guess: no profile trains 3 epochs
    again = BaseModelConfig(**json.loads(json.dumps(resized.__dict__)))  # a job's copy keeps the label
    assert again.profile == "paper" and again.id == resized.id


@pytest.mark.parametrize(("scales", "message"), [((0.5, 1.0), "for each of the 3 epochs"),
                                                 ((0.5, 0.0, 1.0), r"fraction in \(0, 1\]"),
                                                 ((0.5, 1.5, 1.0), r"fraction in \(0, 1\]")])
def test_scales_name_one_fraction_per_epoch(scales: tuple[float, ...], message: str) -> None:
    with pytest.raises(UserError, match=message):
        BaseModelConfig("d", epochs=3, scales=scales)
    with pytest.raises(UserError, match="not both"):
        BaseModelConfig("d", epochs=2, sizes=(16, 32), scales=(0.5, 1.0))


@pytest.mark.parametrize("sizes", [(16, 32), (16, 0, 32)])
def test_sizes_name_one_positive_size_per_epoch(sizes: tuple[int, ...]) -> None:
    with pytest.raises(UserError, match="--sizes 16x6,24x4,32x3"):
        BaseModelConfig("d", epochs=3, sizes=sizes)


@pytest.mark.parametrize(("field", "value", "message"), [("width", 0.0, "width must be > 0"),
                                                         ("width", math.inf, "width must be between"),
                                                         ("width", 1e6, "width must be between"),
                                                         ("width", 1e-300, "width must be between"),
                                                         ("seed", -1, "seed must be a whole number"),
                                                         ("seed", 2**64, "seed must be a whole number"),
                                                         ("seed", 1.5, "seed must be a whole number"),
                                                         ("epochs", 0, "positive integers"),
                                                         ("val_fraction", 1.0, "val_fraction must be in"),
                                                         ("ema", 1.0, "ema must be a decay"),
                                                         ("ema", -0.1, "ema must be a decay")])
def test_a_bad_base_config_is_a_user_error(field: str, value: float, message: str) -> None:
    with pytest.raises(UserError, match=message):
        BaseModelConfig("d", **{field: value})


def test_precision_is_in_the_id_when_set_and_the_bf16_profile_is_quick_in_bf16() -> None:
    quick, bf16 = PROFILES.get("quick"), PROFILES.get("quick-bf16")
    base = quick.base_config("45b041e867f5a40f")
    assert base.id == "8908804af14e6974" and base.precision == "auto"  # the measured quick base model's id stands
    trained_bf16 = bf16.base_config("45b041e867f5a40f")
    assert trained_bf16 == dataclasses.replace(base, precision="bf16") and trained_bf16.id != base.id
    assert "precision='bf16'" in repr(trained_bf16) and profile_of(trained_bf16) is bf16 and profile_of(base) is quick
    assert bf16.budget_name == quick.budget_name == "quick"
    again = BaseModelConfig(**json.loads(json.dumps(trained_bf16.__dict__)))
    assert again == trained_bf16 and again.id == trained_bf16.id
    with pytest.raises(UserError, match="unknown precision 'fp16'; choose one of: auto, bf16, fp32"):
        BaseModelConfig("d", precision="fp16")


def test_the_cpu_paper_profile_trains_the_paper_s_width_with_weight_averaging() -> None:
    cpu, paper = PROFILES.get("paper-cpu"), PROFILES.get("paper")
    base = cpu.base_config("45b041e867f5a40f")
    assert (base.width, base.precision, base.ema, base.scales) == (1.0, "bf16", 0.999, ())
    assert "ema=0.999" in repr(base) and base.id != dataclasses.replace(base, ema=0.0).id
    assert profile_of(dataclasses.replace(base, profile="")) is cpu  # matched by its recipe, averaging included
    assert paper.base_config("d").ema == 0.0 and "ema" not in repr(paper.base_config("d"))  # ids kept
    assert cpu.budget_name == "paper-cpu" and cpu.prune.target > PROFILES.get("quick").prune.target


def test_trained_weights_join_the_id_by_their_hash_only() -> None:
    base = BaseModelConfig("45b041e867f5a40f", epochs=8, batch_size=128, lr=0.15)
    sha = "ab" * 32
    given = dataclasses.replace(base, weights=sha, weights_path="/somewhere/w.pt")
    assert given.id != base.id and f"weights={sha!r}" in repr(given) and "somewhere" not in repr(given)
    assert dataclasses.replace(given, weights_path="/elsewhere/w.pt").id == given.id  # the same weights elsewhere
    assert dataclasses.replace(base, weights_path="/somewhere/w.pt").id == base.id
    with pytest.raises(UserError, match="sha256 of a weights file"):
        dataclasses.replace(base, weights="not-a-hash")
