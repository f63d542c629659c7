"""The study's pruner: it stops a trial once the validation accuracy it reports while training shows that it can no
longer meet the study's accuracy threshold, so that its worker moves on to a trial that can.

A trial reports at steps that say what they measured (`step_of`): the levels of its pruning run up to the snapshot it
uses, then its encoder's epochs. The l2 schedule only raises sparsity from level to level, so a level below the
threshold is final; an encoder still learns, so an epoch is hopeless only when even the largest gain from that epoch
to the end seen in the study's finished trials that trained as many epochs (and a margin) would leave it below, and
never before such a trial has shown that gain: the quick profile's encoders validate at 33-47 % after their first
epoch (the quantiser switches on at its end) and at 81-84 % after their second, and one of 4 epochs still gained
2.4 points after its second, where one of 2 epochs has ended.
"""

from __future__ import annotations

import math

import optuna
from optuna.pruners import BasePruner
from optuna.trial import FrozenTrial, TrialState

from engine import intermediate

ENCODER_STEP = 100  # steps from here on are encoder epochs (step - ENCODER_STEP); below, pruning levels
THRESHOLD_ATTR = "threshold"  # the study's user attribute holding its validation-accuracy threshold
FINAL_ATTR = "val_accuracy"  # a finished trial's user attribute: its row's validation accuracy
LAST_STEP_ATTR = "last_step"  # a trial's user attribute: the step of its encoder's last epoch (none: no encoder)


def step_of(kind: str, step: int) -> int:
    """The study step of a figure a job reported (`engine.intermediate`): a pruning level as it is, an encoder epoch
    from `ENCODER_STEP` on."""
    return int(step) + (ENCODER_STEP if kind == intermediate.ENCODER_EPOCH else 0)


class HopelessPruner(BasePruner):
    """Stops a trial whose reported validation accuracy can no longer reach the study's threshold (the user attribute
    `threshold`; nothing is stopped before it is known).

    Args:
        margin: accuracy (a fraction) an encoder epoch is given beyond the largest gain seen from that epoch on.
        default_gain: the gain assumed from an epoch on before any finished trial has shown one (inf: no encoder
            epoch is judged before then).
    """

    def __init__(self, margin: float = 0.01, default_gain: float = math.inf) -> None:
        self.margin, self.default_gain = float(margin), float(default_gain)

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        threshold = study.user_attrs.get(THRESHOLD_ATTR)
        step = trial.last_step
        if threshold is None or step is None:
            return False
        value = trial.intermediate_values[step]
        if not math.isfinite(value):
            return False
        if step < ENCODER_STEP:
            return value < threshold
        return value + self._gain(study, step, trial.user_attrs.get(LAST_STEP_ATTR)) + self.margin < threshold

    def _gain(self, study: optuna.Study, step: int, last: object) -> float:
        """The largest rise of validation accuracy from `step` to the finished row among the study's complete trials
        whose encoder trained as many epochs (its last reported step is `last`; any, when `last` is not known)."""
        gains = [float(t.user_attrs[FINAL_ATTR]) - t.intermediate_values[step]
                 for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                 if step in t.intermediate_values and isinstance(t.user_attrs.get(FINAL_ATTR), float)
                 and (last is None or max(t.intermediate_values) == last)]
        return max(gains) if gains else self.default_gain
