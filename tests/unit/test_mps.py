"""The development pipeline's train and evaluate on Apple Silicon's GPU; skipped where there is no MPS (as on CI)."""

import pytest

from embedforge import devices
from embedforge.stages import evaluate, train

pytestmark = pytest.mark.skipif(not devices.mps_available(), reason="no Apple Silicon GPU (MPS) on this machine")


@pytest.mark.parametrize("precision", ["auto", "fp32"])
def test_train_and_evaluate_run_on_mps(ready, precision):
    cfg = ready("train.device=mps", "evaluate.device=mps", f"train.precision={precision}")
    results = train.run(cfg)
    assert results["result.device_used"] == "mps" and results["result.steps"] > 0
    assert results["result.peak_mps_mb"] > 0
    scores = evaluate.run(cfg)
    assert scores["eval.device_used"] == "mps"
    spearman = [value for key, value in scores.items() if key.startswith("eval.sts.") and key.endswith(".spearman")]
    assert spearman and all(-1 <= value <= 1 for value in spearman)
