import pytest

from embedforge.errors import DataError
from embedforge.evaluation import speed


class ScriptedClock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


class TimedModel:
    """Advances the clock by its next scripted cost on each timed encode; records the call order."""

    def __init__(self, name, costs, clock, calls):
        self.name, self.costs, self.clock, self.calls = name, list(costs), clock, calls

    def encode(self, sentences, batch_size):
        self.calls.append((self.name, len(sentences)))
        if len(sentences) > speed.WARMUP_SENTENCES:
            self.clock.now += self.costs.pop(0)


def test_rounds_interleave_and_the_best_round_counts(monkeypatch):
    clock, calls = ScriptedClock(), []
    monkeypatch.setattr(speed.time, "perf_counter", clock)
    models = {
        "teacher": TimedModel("teacher", [4.0, 3.0, 5.0], clock, calls),
        "student": TimedModel("student", [1.5, 2.0, 1.0], clock, calls),
    }
    sentences = [f"sentence {i}" for i in range(300)]

    result = speed.encode_speed(models, sentences, rounds=3)

    assert calls[:2] == [("teacher", speed.WARMUP_SENTENCES), ("student", speed.WARMUP_SENTENCES)]
    assert [name for name, _ in calls[2:]] == ["teacher", "student"] * 3
    assert result["teacher"].best_seconds == 3.0 and result["student"].best_seconds == 1.0
    assert result["student"].sentences_per_s == pytest.approx(300.0)
    assert result["student"].sentences_per_s / result["teacher"].sentences_per_s == pytest.approx(3.0)


def test_no_sentences_is_an_error():
    with pytest.raises(DataError, match="no sentences"):
        speed.encode_speed({}, [])
