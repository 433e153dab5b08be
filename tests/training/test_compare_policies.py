"""training/compare_policies.py: the policy table from tte-eval results files."""

import json

import pytest

from training.compare_policies import main


def results(think: str, mean: float, generated: int, tokens: int, seconds: float) -> dict:
    query = {"inputs": 4, "generated": generated, "cache_hits": 0, "given": 0, "without_trace": 4 - generated,
             "gate_skips": 0, "generated_tokens": tokens, "cut_traces": 0, "generation_seconds": seconds,
             "embedding_seconds": 1.0, "think_rate": generated / 4}  # fmt: skip
    return {"metadata": {"think": think}, "cost": {"query": query},
            "user_tasks": {"mean": mean, "tasks": {"a": {"score": mean}}}}  # fmt: skip


def test_the_table_has_a_row_per_policy_with_its_cost(tmp_path, capsys):
    for think, row in {"never": results("never", 0.25, 0, 0, 0.0), "auto": results("auto", 0.5, 2, 40, 3.0)}.items():
        (tmp_path / f"{think}.json").write_text(json.dumps(row))
    rows = main(["--results", f"never={tmp_path / 'never.json'}", f"auto={tmp_path / 'auto.json'}",
                 "--output", str(tmp_path / "out")])  # fmt: skip
    assert rows["auto"]["think_rate"] == 0.5 and rows["auto"]["generated_tokens_per_query"] == 10.0
    assert rows["auto"]["seconds_per_query"] == 1.0 and rows["never"]["accuracy"] == 25.0
    table = (tmp_path / "out" / "policies.md").read_text()
    assert "| never | 25.0 | 0% | 0.0 | 0.250 |" in table and "| auto | 50.0 | 50% | 10.0 | 1.000 |" in table
    assert table in capsys.readouterr().out
    assert json.loads((tmp_path / "out" / "policies.json").read_text())["auto"]["tasks"] == {"a": 50.0}
    (tmp_path / "bad.json").write_text(json.dumps({"metadata": {"think": "never"}, "user_tasks": None}))
    with pytest.raises(ValueError, match="with user tasks .* and its cost is needed"):
        main(["--results", f"bad={tmp_path / 'bad.json'}", "--output", str(tmp_path / "out")])
