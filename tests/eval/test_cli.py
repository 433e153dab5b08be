"""Tests of `tte_eval/cli.py` (`tte-eval`, `python -m tte_eval`), called as `main([...])`."""

import json
import subprocess
import sys

import pytest
from tests.eval.golden import GOLDEN_FILE, GOLDEN_ROW, REPO_ROOT, needs_golden

from tte_eval.cli import expand_tasks, main


GOLDEN_LINE = "| VLM2Vec-V2.0-Qwen2VL-2B | " + " | ".join(f"{value:.2f}" for value in GOLDEN_ROW.values()) + " |"


def test_main_help_lists_subcommands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert "{evaluate,aggregate}" in capsys.readouterr().out


def test_module_entry_point_help():
    result = subprocess.run(
        [sys.executable, "-m", "tte_eval", "evaluate", "--help"], capture_output=True, text=True, cwd=REPO_ROOT
    )
    assert result.returncode == 0 and "--num-frames" in result.stdout


@needs_golden
def test_main_aggregate_golden_file(capsys, tmp_path):
    json_path, markdown_path = tmp_path / "rows.json", tmp_path / "table.md"
    main(["aggregate", GOLDEN_FILE, "--json", str(json_path), "--markdown", str(markdown_path)])
    assert GOLDEN_LINE in capsys.readouterr().out
    assert GOLDEN_LINE in markdown_path.read_text()
    (row,) = json.loads(json_path.read_text())
    assert (row["excluded"], row["missing"], round(row["scores"]["All-78"], 2)) == (["MomentSeeker_1k8"], {}, 57.89)


@needs_golden
def test_main_aggregate_refuses_partial_file(capsys, tmp_path):
    with open(GOLDEN_FILE) as f:
        data = json.load(f)
    del data["metrics"]["visdoc"]["ViDoRe_esg_reports_v2_multilingual"]
    path = tmp_path / "partial.json"
    path.write_text(json.dumps(data))
    with pytest.raises(SystemExit) as exit_info:
        main(["aggregate", str(path)])
    assert exit_info.value.code == 2
    assert "VDRv2: ['ViDoRe_esg_reports_v2_multilingual']" in capsys.readouterr().err


@needs_golden
def test_main_aggregate_allow_partial_marks_cells(capsys, tmp_path):
    with open(GOLDEN_FILE) as f:
        data = json.load(f)
    del data["metrics"]["visdoc"]["ViDoRe_esg_reports_v2_multilingual"]
    path = tmp_path / "partial.json"
    path.write_text(json.dumps(data))
    main(["aggregate", str(path), "--allow-partial"])
    assert "partial, missing VDRv2: ['ViDoRe_esg_reports_v2_multilingual']" in capsys.readouterr().out


def test_main_aggregate_results_file_of_evaluate(capsys, tmp_path):
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"metadata": {"model_name": "mine"}, "metrics": {"image": {"OK-VQA": {"hit@1": 0.25}}}}))
    main(["aggregate", str(path), "--benchmark", "mmeb-v1", "--allow-partial"])
    assert "| mine | — | 25.00* | — | — | 25.00* | 25.00* | — |" in capsys.readouterr().out


def test_main_evaluate_unknown_task_exits_with_message(capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", "--model", str(tmp_path), "--data", str(tmp_path), "--tasks", "OKVQA",
              "--output", str(tmp_path)])  # fmt: skip
    assert exit_info.value.code == 2
    assert "unknown task 'OKVQA'" in capsys.readouterr().err


def test_main_evaluate_model_folder_without_config_exits(capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", "--model", str(tmp_path), "--data", str(tmp_path), "--tasks", "OK-VQA",
              "--output", str(tmp_path)])  # fmt: skip
    assert exit_info.value.code == 2
    assert "has no config.json" in capsys.readouterr().err


def test_expand_tasks_groups_and_dedup():
    assert expand_tasks(["V-MRET", "MomentSeeker"], "mmeb-v2") == ["QVHighlight", "Charades-STA", "MomentSeeker"]


def test_expand_tasks_all_under_v1_is_the_image_tasks():
    assert len(expand_tasks(["all"], "mmeb-v1")) == 36 and len(expand_tasks(["all"], "mmeb-v2")) == 78
