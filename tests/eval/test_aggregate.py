"""Tests of `tte_eval/aggregate.py`: the golden row of harness doc §7 and the strictness rules of §6."""

import json

import numpy as np
import pytest
from tests.eval.golden import GOLDEN_FILE, GOLDEN_ROW, needs_golden

from tte_eval.aggregate import COLUMN_TASKS, aggregate, markdown_table, read_score_file
from tte_eval.tasks import TASKS


@pytest.fixture
def golden_scores() -> dict:
    return read_score_file(GOLDEN_FILE)[1]


def _uniform_scores(value: float) -> dict:
    """Every task scoring `value` on every headline metric."""
    return {name: {"hit@1": value, "ndcg_linear@5": value} for name in TASKS}


@needs_golden
def test_aggregate_reproduces_golden_row(golden_scores):
    row = aggregate(golden_scores, "VLM2Vec-V2.0-Qwen2VL-2B")
    assert list(row.scores) == list(GOLDEN_ROW)
    for column, expected in GOLDEN_ROW.items():
        assert row.scores[column] == pytest.approx(expected, abs=0.01), column


@needs_golden
def test_aggregate_excludes_momentseeker_1k8(golden_scores):
    baseline = aggregate(golden_scores, "m")
    golden_scores["MomentSeeker_1k8"] = {"hit@1": 1.0}
    row = aggregate(golden_scores, "m")
    assert row.excluded == ["MomentSeeker_1k8"]
    assert row.scores == baseline.scores


@needs_golden
def test_aggregate_refuses_missing_tasks_and_names_them(golden_scores):
    del golden_scores["EgoSchema"], golden_scores["ViDoRe_tatdqa"]
    with pytest.raises(ValueError, match=r"V-QA: \['EgoSchema'\]; VDRv1: \['ViDoRe_tatdqa'\]"):
        aggregate(golden_scores, "m")


@needs_golden
def test_aggregate_allow_partial_reports_and_marks(golden_scores):
    del golden_scores["EgoSchema"]
    row = aggregate(golden_scores, "m", allow_partial=True)
    others = ["MVBench", "Video-MME", "NExTQA", "ActivityNetQA"]
    assert row.scores["V-QA"] == pytest.approx(np.mean([100 * golden_scores[t]["hit@1"] for t in others]), abs=1e-9)
    assert row.missing == {"V-QA": ["EgoSchema"], "Video": ["EgoSchema"], "All-78": ["EgoSchema"]}


def test_aggregate_v1_benchmark_reports_image_columns_only():
    row = aggregate({name: {"hit@1": 0.5} for name in COLUMN_TASKS["Image"]}, "m", benchmark="mmeb-v1")
    assert row.scores == {column: 50.0 for column in ("I-CLS", "I-QA", "I-RET", "I-VG", "Image", "V1 IND", "V1 OOD")}


def test_aggregate_modality_is_mean_of_tasks_not_categories():
    scores = _uniform_scores(0.0)
    for name in COLUMN_TASKS["I-CLS"]:
        scores[name]["hit@1"] = 1.0
    row = aggregate(scores, "m")
    assert row.scores["Image"] == pytest.approx(100 * 10 / 36, abs=1e-9)  # categories' mean would be 25.0


def test_aggregate_uses_ndcg_linear_at_5_for_visdoc():
    scores = _uniform_scores(0.0)
    for name in COLUMN_TASKS["VisDoc"]:
        scores[name]["ndcg_linear@5"] = 0.5
    assert aggregate(scores, "m").scores["VisDoc"] == 50.0


def test_aggregate_unknown_task_raises():
    scores = _uniform_scores(0.5)
    scores["ImageNet_1K"] = {"hit@1": 0.5}
    with pytest.raises(ValueError, match=r"unknown tasks in the scores: \['ImageNet_1K'\]"):
        aggregate(scores, "m")


def test_aggregate_missing_headline_metric_raises():
    scores = _uniform_scores(0.5)
    scores["ViDoRe_arxivqa"] = {"hit@1": 0.5}
    with pytest.raises(ValueError, match="task 'ViDoRe_arxivqa': headline metric 'ndcg_linear@5' missing"):
        aggregate(scores, "m")


def test_aggregate_unknown_benchmark_raises():
    with pytest.raises(ValueError, match="unknown benchmark 'mmeb-v3'"):
        aggregate(_uniform_scores(0.5), "m", benchmark="mmeb-v3")


def test_read_score_file_rejects_task_under_wrong_modality(tmp_path):
    path = tmp_path / "scores.json"
    path.write_text(json.dumps({"metrics": {"video": {"OK-VQA": {"hit@1": 0.5}}}}))
    with pytest.raises(ValueError, match="task 'OK-VQA' is filed under 'video', not 'image'"):
        read_score_file(str(path))


def test_read_score_file_rejects_missing_metrics(tmp_path):
    path = tmp_path / "scores.json"
    path.write_text(json.dumps({"image": {}}))
    with pytest.raises(ValueError, match="'metrics' object"):
        read_score_file(str(path))


def test_read_score_file_falls_back_to_file_name(tmp_path):
    path = tmp_path / "my-model.json"
    path.write_text(json.dumps({"metrics": {"image": {"OK-VQA": {"hit@1": 0.5}}}}))
    assert read_score_file(str(path)) == ("my-model", {"OK-VQA": {"hit@1": 0.5}})


def test_markdown_table_marks_partial_cells():
    scores = _uniform_scores(0.5)
    del scores["EgoSchema"]
    table = markdown_table([aggregate(scores, "m", allow_partial=True)])
    assert "| 50.00* |" in table  # V-QA
    assert "\\* m: partial, missing V-QA: ['EgoSchema']" in table


def test_markdown_table_rejects_mixed_benchmarks():
    image = {name: {"hit@1": 0.5} for name in COLUMN_TASKS["Image"]}
    rows = [aggregate(_uniform_scores(0.5), "a"), aggregate(image, "b", benchmark="mmeb-v1")]
    with pytest.raises(ValueError, match="different benchmarks"):
        markdown_table(rows)
