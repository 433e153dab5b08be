"""The benchmark suite runs end to end on a tiny unified model with a real BPE tokenizer and reports every ratio.

Only that it runs and what it reports is tested here: its timings are measured by running it (README, Performance).
"""

import json
import math
import os
import runpy
import sys

from training.tiny_models import build_tte


SUITE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "suite.py")


def test_suite_reports_every_ratio_with_its_setting_and_goal(tmp_path, monkeypatch):
    model = build_tte("qwen2_vl", "unified", bpe=True, max_new_tokens=4)
    model.save_pretrained(tmp_path / "unified")
    output = tmp_path / "suite.json"
    arguments = ["--model", str(tmp_path / "unified"), "--cache-dir", str(tmp_path / "cache"), "--max-new-tokens", "3",
                 "--batch", "4", "--documents", "8", "--cache-queries", "6", "--corpus", "40", "--repeats", "1", "--copy-mib", "8",
                 "--output", str(output)]  # fmt: skip
    monkeypatch.setattr(sys, "argv", ["suite.py", *arguments])
    runpy.run_path(SUITE, run_name="__main__")
    rows = json.loads(output.read_text())["rows"]
    assert [row["name"] for row in rows] == ["P1", "P1", "P1", "P2", "P2", "P2", "P2", "P3", "P4", "P5", "P6", "P6",
                                             "floor", "peer", "memory"]  # fmt: skip
    assert rows[11]["setting"] == "8 thinking queries: cold trace cache / no cache (context)"
    assert not list((tmp_path / "cache").glob("p6-cold*"))  # each cold cache is removed after its call
    assert [row["setting"] for row in rows][4:6] == [f"unified / student {phase} seconds, batch 8 (profile)"
                                                     for phase in ("generation", "embedding")]  # fmt: skip
    assert [row["setting"] for row in rows][:3] == [f"unified embed(think) / generate, batch {b}" for b in (1, 8, 32)]
    for row in rows:
        assert row["goal"] and math.isfinite(row["ratio"]) and row["ratio"] > 0, row
        assert row["ratio"] == row["ours"] / row["reference"]
    assert (tmp_path / "cache" / "student" / "config.json").is_file()  # the twin is built by training.init_model


def user_tasks(tmp_path) -> str:
    """A tte-eval tasks folder of two small user tasks (a local-candidate and a global-corpus one)."""
    from tests.eval.test_user_tasks import GLOBAL_SPEC, LOCAL_SPEC, _global_rows, _local_rows
    from tte_eval import write_task

    write_task(str(tmp_path / "tasks" / "local"), LOCAL_SPEC, _local_rows(str(tmp_path / "tasks" / "local")))
    write_task(str(tmp_path / "tasks" / "global"), GLOBAL_SPEC, _global_rows())
    return str(tmp_path / "tasks")


def run_benchmark(script: str, arguments: list[str], monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", [script, *arguments])
    runpy.run_path(os.path.join(os.path.dirname(SUITE), script), run_name="__main__")


def test_policy_benchmark_times_never_queries_and_auto_side_by_side(gated_export_folder, tmp_path, capsys,
                                                                    monkeypatch):  # fmt: skip
    output = tmp_path / "policies.json"
    run_benchmark("bench_policies.py", ["--model", gated_export_folder, "--tasks-dir", user_tasks(tmp_path),
                                        "--queries", "4", "--repeats", "1", "--output", str(output)], monkeypatch)
    rows = json.loads(output.read_text())["rows"]
    assert list(rows) == ["never", "queries", "auto"]
    assert rows["never"]["think_rate"] == 0 and rows["queries"]["think_rate"] == 1
    assert rows["never"]["ratio_to_never"] == 1.0 and all(row["seconds_per_query"] > 0 for row in rows.values())
    assert "| auto |" in capsys.readouterr().out


def test_compaction_benchmark_compares_the_compacting_decode_with_generate(export_folder, tmp_path, capsys,
                                                                           monkeypatch):  # fmt: skip
    output = tmp_path / "compaction.json"
    run_benchmark("bench_compaction.py", ["--model", export_folder, "--tasks-dir", user_tasks(tmp_path), "--queries",
                                          "4", "--batch-size", "2", "--repeats", "1", "--output", str(output)],
                  monkeypatch)  # fmt: skip
    row = json.loads(output.read_text())
    assert row["same_tokens"] is True and row["queries"] == 4
    assert row["ratio"] == row["compacting_seconds"] / row["generate_seconds"] > 0
    assert "compacting decode" in capsys.readouterr().out
