import itertools

import pytest

from embedforge.training.schedule import resume_ramp, warmup_cosine


def test_warmup_rises_linearly_then_cosine_decays_to_the_floor():
    values = [warmup_cosine(step, total_steps=110, warmup_steps=10) for step in range(110)]
    assert values[:3] == pytest.approx([0.1, 0.2, 0.3])
    assert values[9] == pytest.approx(1.0) and values[10] == pytest.approx(1.0)
    assert values[60] == pytest.approx(0.5)
    assert all(a >= b for a, b in itertools.pairwise(values[10:]))
    assert warmup_cosine(110, 110, 10, floor=0.1) == pytest.approx(0.1)


def test_no_warmup_starts_at_full_rate():
    assert warmup_cosine(0, total_steps=100, warmup_steps=0) == pytest.approx(1.0)


def test_resume_ramp_goes_from_20_to_100_percent_over_three_epochs():
    assert resume_ramp(0.0) == pytest.approx(0.2)
    assert resume_ramp(1.5) == pytest.approx(0.6)
    assert resume_ramp(3.0) == pytest.approx(1.0) and resume_ramp(7.0) == pytest.approx(1.0)
    assert resume_ramp(1.0, ramp_epochs=0) == 1.0
