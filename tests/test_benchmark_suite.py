"""The benchmark suite runs end to end on a tiny unified model with a real BPE tokenizer and reports every ratio.

Only that it runs and what it reports is tested here: its timings are measured by running it (README, Performance).
"""

import json
import math
import os
import runpy
import sys

import pytest

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


def test_policy_benchmark_times_the_task_family_policy_too(export_folder, tmp_path, capsys, monkeypatch):
    from tte.modeling_tte import TTEModel

    model = TTEModel.from_pretrained(export_folder)
    model.config.think_tasks = ["retrieval"]  # the user tasks' queries name no family: retrieval, so they think
    model.save_pretrained(tmp_path / "model")
    output = tmp_path / "policies.json"
    run_benchmark("bench_policies.py", ["--model", str(tmp_path / "model"), "--tasks-dir", user_tasks(tmp_path),
                                        "--queries", "4", "--repeats", "1", "--output", str(output)], monkeypatch)
    rows = json.loads(output.read_text())["rows"]
    assert list(rows) == ["never", "queries", "tasks"] and rows["tasks"]["think_rate"] == 1
    assert "| tasks |" in capsys.readouterr().out


def test_policy_benchmark_refuses_a_model_without_an_adaptive_policy(export_folder, tmp_path, monkeypatch, capsys):
    with pytest.raises(SystemExit):
        run_benchmark("bench_policies.py", ["--model", export_folder, "--tasks-dir", user_tasks(tmp_path)], monkeypatch)
    assert "has neither a gate nor think_tasks" in capsys.readouterr().err


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


def test_the_student_cost_stand_in_writes_the_unified_models_traces_with_a_full_embedder(tiny_tte):
    """`bench_unified_vs_student.py --model`: the stand-in's reasoner is the unified backbone (TTE-mini's student
    reasoner), so it generates the same traces, and its embedder runs every backbone layer, as a student's does."""
    bench = runpy.run_path(os.path.join(os.path.dirname(SUITE), "bench_unified_vs_student.py"))
    unified = tiny_tte("qwen2_vl", "unified")
    student = bench["student_cost_stand_in"](unified)
    assert student.config.variant == "student" and student.config.think == "queries"
    queries = ["a red square left of a blue circle", {"text": "how many shapes ?", "task": "vqa"}]
    assert student.embed(queries, return_reasoning="ids")[1] == unified.embed(queries, return_reasoning="ids")[1]
    layers = unified.config.backbone_config.get_text_config().num_hidden_layers
    assert len(student.backbone.language_model.layers) == layers > unified.config.head_num_layers
    with pytest.raises(ValueError, match="must be a unified model"):
        bench["student_cost_stand_in"](student)


def test_the_unified_vs_student_benchmark_times_a_published_model_against_the_stand_in(export_folder, tmp_path,
                                                                                       monkeypatch, capsys):  # fmt: skip
    from training.scene_tasks import write_test_tasks

    write_test_tasks(str(tmp_path / "test"), rows_per_task=1, seed=3)
    output = tmp_path / "rows.json"
    run_benchmark("bench_unified_vs_student.py", ["--model", export_folder, "--tasks_dir", str(tmp_path / "test"),
                                                  "--extra_tokens", "0", "--queries", "2", "--rounds", "1",
                                                  "--output", str(output)], monkeypatch)  # fmt: skip
    # (the tiny tokenizer cannot spell the benchmark's passage: lengthening is tested on TTE-mini's smoke run)
    (row,) = json.loads(output.read_text())
    assert row["student"] == "cost stand-in" and row["ratio"] == row["unified_ms"] / row["student_ms"]
    assert row["think_tokens"]["student"] == row["think_tokens"]["unified"] > 0  # the same traces
    assert "the student: cost stand-in" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        run_benchmark("bench_unified_vs_student.py", ["--model", export_folder], monkeypatch)
