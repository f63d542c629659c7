"""Where a trained part was computed. A seeded run repeats bit for bit only in the same environment: the device and,
on a CPU, torch's thread count set the floating-point reduction order. Every cached training run records the
environments it ran in (several when a run was resumed elsewhere), and every row names those of all the trained parts
it uses, so two rows that differ can be told apart from two rows that should not."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch

Environments = list[dict[str, Any]]
NOT_RECORDED: dict[str, Any] = {"device": "not recorded"}  # a part trained before environments were recorded


def training_environment(device: torch.device) -> dict[str, Any]:
    """This process's training environment on `device`: the device type, the GPU's name or the CPU thread count,
    and the torch version."""
    env: dict[str, Any] = {"device": device.type, "torch": str(torch.__version__)}  # str: weights_only loads it
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    else:
        env["threads"] = torch.get_num_threads()
    return env


def merge_environments(*runs: Sequence[Mapping[str, Any]] | None) -> Environments:
    """The distinct environments of `runs`, in order (a run saved before they were recorded: `NOT_RECORDED`)."""
    out: Environments = []
    for env in (e for run in runs for e in recorded(run)):
        if env not in out:
            out.append(env)
    return out


def add_environment(envs: Sequence[Mapping[str, Any]] | None, device: torch.device) -> Environments:
    """`envs` (those a resumed run was trained in so far, None for a fresh run) with this process's appended when it
    is not among them."""
    return merge_environments(envs or [], [training_environment(device)])


def recorded(envs: Sequence[Mapping[str, Any]] | None) -> Environments:
    """The environments of a cached run, `NOT_RECORDED` for one saved before they were recorded."""
    return [dict(e) for e in envs] if envs is not None else [dict(NOT_RECORDED)]


def describe_environment(env: Mapping[str, Any]) -> str:
    """One environment in words: "cpu, 2 threads", "cuda, NVIDIA H100 80GB HBM3"."""
    if "threads" in env:
        n = int(env["threads"])
        return f"{env['device']}, {n} thread{'s' if n != 1 else ''}"
    return f"{env['device']}, {env['gpu']}" if env.get("gpu") else str(env["device"])


def describe_environments(stages: Iterable[Sequence[Mapping[str, Any]] | None]) -> str:
    """The `trained_on` column: the distinct environments of a row's trained parts (base model, pruning run, encoder,
    in that order) joined by " + ", e.g. "cpu, 1 thread" or "cpu, 2 threads + cpu, 1 thread"; a part trained before
    environments were recorded (None) adds "not recorded"."""
    names: list[str] = []
    for stage in stages:
        for name in map(describe_environment, recorded(stage)):
            if name not in names:
                names.append(name)
    return " + ".join(names)
