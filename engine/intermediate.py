"""Figures a job reports while it trains (a pruning level's or an encoder epoch's validation accuracy), so that
whoever queued it can act before it ends: a search's pruner stops a trial that cannot meet its threshold any more.

A training loop calls `report(kind, step, value)` wherever it has a validated figure; it goes nowhere unless the
job runs under `reporting_to` (`engine.queue.execute` sends it to the job's lease, and the heartbeat writes it to
the job table). Loops stay free of any queue or search code.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator

Sink = Callable[[str, int, float], None]

# What the kinds mean: a validation accuracy (the fraction of validation images classified right) ...
PRUNE_LEVEL = "prune_level"  # after pruning level `step` (0-based) of a `three_step` pruning run
ENCODER_EPOCH = "encoder_epoch"  # after epoch `step` (1-based) of a learned encoder's training
# ... or the training seconds a pruning run had spent when its level `step` ended, summed over resumes: a job that
# reads the run from the cache (or resumes it) took less than that, and a study charges it in full
PRUNE_SECONDS = "prune_seconds"

_SINK: contextvars.ContextVar[Sink | None] = contextvars.ContextVar("coinfer_report_sink", default=None)


def report(kind: str, step: int, value: float) -> None:
    """Report a figure of the running job (nothing happens outside `reporting_to`).

    Args:
        kind: what it is (`PRUNE_LEVEL`, `ENCODER_EPOCH`).
        step: where in the training it was measured.
        value: the figure.
    """
    sink = _SINK.get()
    if sink is not None:
        sink(kind, int(step), float(value))


@contextlib.contextmanager
def reporting_to(sink: Sink | None) -> Iterator[None]:
    """Send every `report` inside the block to `sink` (None: nowhere)."""
    token = _SINK.set(sink)
    try:
        yield
    finally:
        _SINK.reset(token)
