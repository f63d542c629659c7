"""Config ids: the hash of the canonical JSON, stable across releases for configs that do not use later fields."""

from __future__ import annotations

import dataclasses
import json

import pytest

from engine.config import PROFILES, BaseModelConfig, VariantConfig, config_id
from engine.errors import UserError


def test_a_later_optional_field_changes_no_id_until_it_is_set() -> None:
    base = PROFILES.get("quick").base_config("45b041e867f5a40f")
    assert base.id == "5ce18a3797658519"  # the quick base model of the CIFAR-10 JPEG copy, as measured before
    released = {k: v for k, v in dataclasses.asdict(base).items() if k != "sizes"}
    assert base.id == config_id(released) and "sizes" not in repr(base)
    variant = VariantConfig.make("three_step", "conv4_x", base, sparsity=0.5, bits=4)
    as_released = dataclasses.asdict(variant)
    del as_released["base"]["sizes"]
    assert variant.id == config_id(as_released)

    resized = dataclasses.replace(base, epochs=3, sizes=(16, 24, 32))
    assert resized.id != dataclasses.replace(base, epochs=3).id and "sizes=(16, 24, 32)" in repr(resized)
    assert VariantConfig.make("three_step", "conv4_x", resized, sparsity=0.5, bits=4).id != variant.id
    again = BaseModelConfig(**json.loads(json.dumps(resized.__dict__)))  # a checkpoint's or a job's copy
    assert again == resized and again.id == resized.id and again.sizes == (16, 24, 32)


@pytest.mark.parametrize("sizes", [(16, 32), (16, 0, 32)])
def test_sizes_name_one_positive_size_per_epoch(sizes: tuple[int, ...]) -> None:
    with pytest.raises(UserError, match="--sizes 16x6,24x4,32x3"):
        BaseModelConfig("d", epochs=3, sizes=sizes)


@pytest.mark.parametrize(("field", "value", "message"), [("width", 0.0, "width must be > 0"),
                                                         ("epochs", 0, "positive integers"),
                                                         ("val_fraction", 1.0, "val_fraction must be in")])
def test_a_bad_base_config_is_a_user_error(field: str, value: float, message: str) -> None:
    with pytest.raises(UserError, match=message):
        BaseModelConfig("d", **{field: value})
