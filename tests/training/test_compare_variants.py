"""training/compare_variants.py without a run: the latency statistic and the rows of a gated model."""

from types import SimpleNamespace

import pytest

from training import compare_variants
from training.compare_variants import markdown, measure_costs


class _FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class _TimedModel:
    """Stands in for a TTE model: each query 'takes' the seconds its text names, on the fake clock."""

    def __init__(self, clock: _FakeClock):
        self.clock = clock
        self.processor = SimpleNamespace(tokenizer=lambda text, add_special_tokens: {"input_ids": text.split()})

    def encode_query(self, items, return_reasoning):
        (item,) = items
        self.clock.now += float(item["text"])
        return None, ["a trace" if float(item["text"]) > 1 else None]

    def parameters(self):
        return []


def test_latency_is_the_mean_over_queries_of_each_querys_median(monkeypatch):
    """A gated model thinks about some queries only: one slow query in three must weigh in the latency (a median over
    all timings would report the fast ones' 1 s alone)."""
    clock = _FakeClock()
    monkeypatch.setattr(compare_variants.time, "perf_counter", clock)
    queries = [{"text": "1"}, {"text": "1"}, {"text": "10"}]
    costs = measure_costs({"gated": _TimedModel(clock)}, queries, queries, rounds=3)
    assert costs["gated"]["latency_ms_per_query"] == pytest.approx(1000 * (1 + 1 + 10) / 3)
    assert costs["gated"]["think_tokens_per_query"] == pytest.approx(2 / 3)


def _entry(overall: float, think: str, think_rate: float) -> dict:
    return {"scores": {"overall": overall}, "settings": {"model_settings": {"think": think}}, "think_rate": think_rate}


@pytest.mark.parametrize("policy", ["auto", "tasks"])
def test_an_adaptive_variant_is_labelled_and_shows_its_every_query_thinking_score_and_think_rates(policy):
    """A model at an adaptive policy (the gate's, or per task family) says so in its row, the second table adds its
    think=queries score, and each row gives the share of test queries that thought."""
    gated = {**_entry(40.0, policy, 0.25), "think_tokens_per_query": 9.0, "latency_ms_per_query": 800.0,
             "parameters": 151e6, "without_thinking": _entry(30.0, "never", 0.0),
             "queries_thinking": _entry(42.5, "queries", 1.0)}  # fmt: skip
    student = {**_entry(41.0, "queries", 1.0), "think_tokens_per_query": 36.0, "latency_ms_per_query": 2900.0,
               "parameters": 274e6, "without_thinking": _entry(25.0, "never", 0.0)}  # fmt: skip
    teacher = {**_entry(66.0, "queries", 0.0), "think_tokens_per_query": 41.0, "latency_ms_per_query": 180.0,
               "parameters": 137e6, "without_thinking": _entry(21.0, "never", 0.0)}  # fmt: skip
    comparison = {"variants": {"student": student, "teacher": teacher, "unified": gated}, "overall": "mean", "seed": 1,
                  "sizes": {"head_layers": 4}, "embedder_start": "sft", "teacher": "oracle", "latency": "mean",
                  "baselines": {"minilm": {"model": "m", "input": "text", "scores": {}}}}  # fmt: skip
    lines = markdown(comparison).splitlines()
    assert any(line.startswith(f"| unified, think={policy} | 40.0 |") and "| 9.0 | 800 | 151.0 |" in line
               for line in lines)  # fmt: skip
    assert f"| unified, think={policy} | 40.0 | 30.0 | +10.0 | 25 |" in lines
    assert "| unified, think=queries | 42.5 | 30.0 | +12.5 | 100 |" in lines
    assert "| student | 41.0 | 25.0 | +16.0 | 100 |" in lines
    # the oracle's traces are given: the model made none, which a think rate of 0 would misstate
    assert "| teacher (oracle teacher) | 66.0 | 21.0 | +45.0 | given |" in lines
