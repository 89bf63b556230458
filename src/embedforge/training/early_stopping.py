"""Early stopping: whether an epoch's monitored score improved on the best so far, kept in the train state."""

from __future__ import annotations

import logging
import math

from embedforge.config import EarlyStoppingParams
from embedforge.training.checkpoint import TrainState

log = logging.getLogger(__name__)

HIGHER_IS_BETTER = {"sts_spearman"}  # every other monitor is a loss


def record_score(rule: EarlyStoppingParams, state: TrainState, scores: dict[str, float | None]) -> bool:
    """Record the monitored score in ``state``; True when it beats the best so far by more than ``min_delta``.
    An undefined score counts as an epoch without improvement."""
    score = scores.get(rule.monitor)
    if score is None or not math.isfinite(score):
        log.warning("epoch %d: %s is undefined, so it does not count as an improvement", state.epoch + 1, rule.monitor)
        state.epochs_without_improvement += 1
        return False
    sign = 1.0 if rule.monitor in HIGHER_IS_BETTER else -1.0
    if state.best_score is None or sign * (score - state.best_score) > rule.min_delta:
        state.best_score, state.best_epoch = score, state.epoch + 1
        state.epochs_without_improvement = 0
        return True
    state.epochs_without_improvement += 1
    return False


def should_stop(rule: EarlyStoppingParams, state: TrainState) -> bool:
    return state.epochs_without_improvement >= rule.patience
