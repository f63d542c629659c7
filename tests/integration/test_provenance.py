"""Where trained parts were computed: environments recorded by every training run (over resumes) and named in rows."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from test_finetune import Interrupt, Recorder

from engine.data import ImageData
from engine.finetune import FinetuneConfig, finetune
from engine.models import CifarResNet18
from engine.provenance import (
    NOT_RECORDED,
    add_environment,
    describe_environments,
    merge_environments,
    training_environment,
)

CPU = torch.device("cpu")


@pytest.fixture
def threads() -> Iterator[None]:
    """Restores torch's thread count after a test that changes it."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_environment_of_a_cpu_run_names_its_thread_count(threads: None) -> None:
    torch.set_num_threads(1)
    one = training_environment(CPU)
    assert one == {"device": "cpu", "torch": torch.__version__, "threads": 1} and type(one["torch"]) is str
    torch.set_num_threads(2)
    assert training_environment(CPU)["threads"] == 2
    assert add_environment([one], CPU) == [one, {**one, "threads": 2}]
    assert add_environment([one, {**one, "threads": 2}], CPU) == [one, {**one, "threads": 2}]  # not twice
    assert add_environment(None, CPU) == [{**one, "threads": 2}]


def test_rows_name_every_distinct_environment_in_order() -> None:
    one = {"device": "cpu", "torch": "2.14.1", "threads": 1}
    two = {**one, "threads": 2}
    gpu = {"device": "cuda", "torch": "2.14.1", "gpu": "NVIDIA H100 80GB HBM3"}
    assert describe_environments([[one]]) == "cpu, 1 thread"
    assert describe_environments([[one], [two, one], [one]]) == "cpu, 1 thread + cpu, 2 threads"
    assert describe_environments([[gpu], None]) == "cuda, NVIDIA H100 80GB HBM3 + not recorded"
    assert describe_environments([None, None]) == "not recorded"
    assert merge_environments([one], None, [one, two]) == [one, NOT_RECORDED, two]


def test_a_fine_tuning_resumed_with_another_thread_count_records_both(small_data: ImageData, tmp_path: Path,
                                                                      threads: None) -> None:
    x, y = small_data.train_x[:64], small_data.train_y[:64]
    cfg = FinetuneConfig(epochs=2, steps_per_epoch=1, batch_size=16, lr=0.05, seed=3)
    ckpt = tmp_path / "ft.partial.pt"
    torch.set_num_threads(1)
    with pytest.raises(Interrupt):  # dies in the second epoch, after the first epoch's checkpoint
        finetune(CifarResNet18(0.125), x, y, small_data.mean, small_data.std, cfg, hooks=Recorder(fail_at=1),
                 checkpoint=ckpt, device=CPU)
    torch.set_num_threads(2)
    result = finetune(CifarResNet18(0.125), x, y, small_data.mean, small_data.std, cfg, hooks=Recorder(),
                      checkpoint=ckpt, device=CPU)
    assert result.resumed_from == 1
    assert [e["threads"] for e in result.trained_on] == [1, 2]
    fresh = finetune(CifarResNet18(0.125), x, y, small_data.mean, small_data.std, cfg, device=CPU)
    assert [e["threads"] for e in fresh.trained_on] == [2]
