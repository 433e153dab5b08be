"""training/compare_policies.py: the policy table from tte-eval results files."""

import json

import pytest

from training.compare_policies import main


def results(think: str, mean: float, generated: int, tokens: int, seconds: float) -> dict:
    query = {"inputs": 4, "generated": generated, "cache_hits": 0, "given": 0, "without_trace": 4 - generated,
             "gate_skips": 0, "generated_tokens": tokens, "trace_tokens": tokens, "cut_traces": 0, "generation_seconds": seconds,
             "embedding_seconds": 1.0, "think_rate": generated / 4}  # fmt: skip
    return {"metadata": {"model_settings": {"think": think}}, "cost": {"query": query},
            "user_tasks": {"mean": mean, "tasks": {"a": {"score": mean}}}}  # fmt: skip


def test_the_table_has_a_row_per_policy_with_its_cost(tmp_path, capsys):
    for think, row in {"never": results("never", 0.25, 0, 0, 0.0), "auto": results("auto", 0.5, 2, 40, 3.0)}.items():
        (tmp_path / f"{think}.json").write_text(json.dumps(row))
    rows = main(["--results", f"never={tmp_path / 'never.json'}", f"auto={tmp_path / 'auto.json'}",
                 "--output", str(tmp_path / "out")])  # fmt: skip
    assert rows["auto"]["think_rate"] == 0.5 and rows["auto"]["trace_tokens_per_query"] == 10.0
    assert rows["auto"]["seconds_per_query"] == 1.0 and rows["never"]["accuracy"] == 25.0
    table = (tmp_path / "out" / "policies.md").read_text()
    assert "| never | 25.0 | 0% | 0.0 | 0.250 |" in table and "| auto | 50.0 | 50% | 10.0 | 1.000 |" in table
    assert table in capsys.readouterr().out
    assert json.loads((tmp_path / "out" / "policies.json").read_text())["auto"]["tasks"] == {"a": 50.0}
    cached = results("always", 0.5, 0, 0, 0.0)  # an older tte-eval: no trace_tokens, and the traces came from the cache
    del cached["cost"]["query"]["trace_tokens"]
    cached["cost"]["query"]["cache_hits"] = 4
    (tmp_path / "cached.json").write_text(json.dumps(cached))
    main(["--results", f"cached={tmp_path / 'cached.json'}", "--output", str(tmp_path / "out")])
    assert "| cached | 50.0 | 0% | not recorded (cached traces) |" in (tmp_path / "out" / "policies.md").read_text()
    older = results("queries", 0.5, 4, 40, 1.0)
    del older["cost"]  # written before tte-eval recorded the cost
    (tmp_path / "older.json").write_text(json.dumps(older))
    main(["--results", f"older={tmp_path / 'older.json'}", "--output", str(tmp_path / "out")])
    assert "| older | 50.0 | not recorded | not recorded | not recorded |" in (tmp_path / "out" / "policies.md").read_text()
    (tmp_path / "bad.json").write_text(json.dumps({"metadata": {"model_settings": {"think": "never"}}, "user_tasks": None}))
    with pytest.raises(ValueError, match=r"bad.json: not a tte-eval results file with user tasks"):
        main(["--results", f"bad={tmp_path / 'bad.json'}", "--output", str(tmp_path / "out")])
