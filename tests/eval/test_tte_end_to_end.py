"""End to end with a real tiny random-weight TTE model folder: `tte-eval evaluate` through the encoder protocol."""

import json
import os

import pytest

from tte_eval.cli import main
from tte_eval.model_io import load_tte_model, model_hash
from tests.eval.synthetic_mmeb import VIDEO_TASKS
from tte_eval.loaders import load_task

from tte_eval.tasks import TASKS

@pytest.fixture
def tte_folder(tiny_tte_folder) -> str:
    return tiny_tte_folder

def test_cli_evaluate_tiny_tte_image_and_visdoc(tte_folder, data_dir, tmp_path, capsys):
    output = tmp_path / "out"
    main(["evaluate", "--model", tte_folder, "--data", data_dir, "--tasks", "OK-VQA", "WebQA", "ViDoSeek-doc",
          "--output", str(output), "--batch-size", "2", "--model-name", "tiny-tte"])  # fmt: skip
    report = json.loads((output / "results.json").read_text())
    meta = report["metadata"]
    assert meta["model_hash"] == model_hash(tte_folder)
    assert (meta["prompt_set_version"], meta["model_settings"]["think"]) == ("ecr-v1", "queries")
    assert meta["max_pixels"] == meta["model_settings"]["max_pixels"] > 0
    assert meta["cache"] == {"OK-VQA": "missing", "WebQA": "missing", "ViDoSeek-doc": "missing"}
    for modality, task, queries in [("image", "OK-VQA", 3), ("image", "WebQA", 3), ("visdoc", "ViDoSeek-doc", 2)]:
        scores = report["metrics"][modality][task]
        assert scores["num_pred"] == queries and 0.0 <= scores["hit@1"] <= 1.0
    assert sorted(os.listdir(output / "cache")) == ["OK-VQA.npz", "ViDoSeek-doc.npz", "WebQA.npz"]
    assert "| OK-VQA | I-QA | hit@1 |" in capsys.readouterr().out

def test_cli_evaluate_think_policy_trace_cache_and_cost(tte_folder, data_dir, tmp_path):
    def run(think: str, output: str) -> dict:
        main(["evaluate", "--model", tte_folder, "--data", data_dir, "--tasks", "OK-VQA", "--output", output,
              "--cache-dir", str(tmp_path / "cache"), "--think", think, "--trace-cache", str(tmp_path / "t.sqlite")])
        return json.loads(open(os.path.join(output, "results.json")).read())

    never = run("never", str(tmp_path / "never"))
    assert never["metadata"]["think"] == never["metadata"]["model_settings"]["think"] == "never"
    assert never["cost"]["query"]["think_rate"] == 0.0 and never["cost"]["query"]["without_trace"] == 3
    always = run("always", str(tmp_path / "always"))
    assert always["metadata"]["cache"]["OK-VQA"] == "stale: think changed ('never' -> 'always')"
    for side in ("query", "document"):
        cost = always["cost"][side]
        assert cost["think_rate"] == 1.0 and cost["generated"] == cost["inputs"] > 0 and cost["generated_tokens"] > 0
    # the embedding cache is cleared, the trace cache is not: the same policy again generates nothing
    os.remove(tmp_path / "cache" / "OK-VQA.npz")
    again = run("always", str(tmp_path / "again"))
    assert again["cost"]["query"]["generated"] == 0 and again["cost"]["query"]["cache_hits"] == 3
    assert again["metrics"]["image"]["OK-VQA"]["num_pred"] == always["metrics"]["image"]["OK-VQA"]["num_pred"] == 3

def test_cli_evaluate_records_the_families_that_think_under_think_tasks(tte_folder, data_dir, tmp_path):
    model = load_tte_model(tte_folder)
    model.config.think, model.config.think_tasks = "tasks", ["retrieval"]
    model.save_pretrained(tmp_path / "model")
    main(["evaluate", "--model", str(tmp_path / "model"), "--data", data_dir, "--tasks", "OK-VQA", "--output",
          str(tmp_path / "out")])  # fmt: skip
    report = json.loads((tmp_path / "out" / "results.json").read_text())
    assert report["metadata"]["model_settings"]["think"] == "tasks"
    assert report["metadata"]["model_settings"]["think_tasks"] == ["retrieval"]
    # MMEB rows name no ECR family, so their queries reason with the default one (retrieval), which thinks here
    assert report["cost"]["query"]["think_rate"] == 1.0 and report["cost"]["document"]["think_rate"] == 0.0

def test_model_settings_read_a_model_whose_code_predates_think_tasks():
    """A model folder keeps the code it was exported with: a config class without `think_tasks` still evaluates."""
    from types import SimpleNamespace

    from tte_eval.model_io import model_settings

    config = SimpleNamespace(variant="unified", think="queries", max_new_tokens=8, prompt_set_version="ecr-v1")
    model = SimpleNamespace(config=config, processor=SimpleNamespace(max_pixels=1024, text_only=True))
    assert model_settings(model) == {"variant": "unified", "think": "queries", "max_new_tokens": 8,
                                     "prompt_set_version": "ecr-v1", "max_pixels": 1024}  # fmt: skip
    config.think_tasks = ["vqa"]
    assert model_settings(model)["think_tasks"] == ["vqa"]

def test_cli_evaluate_tiny_tte_runs_every_video_family(tte_folder, data_dir, tmp_path):
    output = tmp_path / "out"
    main(["evaluate", "--model", tte_folder, "--data", data_dir, "--tasks", *VIDEO_TASKS, "--output", str(output),
          "--batch-size", "4", "--num-frames", "4", "--think", "never"])  # fmt: skip
    report = json.loads((output / "results.json").read_text())
    assert {TASKS[task].category for task in VIDEO_TASKS} == {"V-CLS", "V-QA", "V-RET", "V-MRET"}  # every family
    for task in VIDEO_TASKS:
        scores = report["metrics"]["video"][task]
        assert scores["num_pred"] == len(load_task(data_dir, task).rows) and 0.0 <= scores["hit@1"] <= 1.0
    meta = report["metadata"]
    processor = load_tte_model(tte_folder).processor
    assert meta["num_frames"] == 4 and meta["max_frame_pixels"] == processor.video_sampling.max_frame_pixels
    assert report["cost"]["query"]["inputs"] > 0

def test_cli_evaluate_think_auto_records_the_gate_skips(gated_export_folder, data_dir, tmp_path):
    main(["evaluate", "--model", gated_export_folder, "--data", data_dir, "--tasks", "OK-VQA", "--output",
          str(tmp_path / "out"), "--think", "auto"])  # fmt: skip
    report = json.loads((tmp_path / "out" / "results.json").read_text())
    assert report["metadata"]["think"] == "auto"
    query = report["cost"]["query"]
    assert query["generated"] + query["gate_skips"] == query["inputs"] == 3
    assert query["think_rate"] == query["generated"] / 3
    assert report["cost"]["document"]["generated"] == 0  # under auto, documents do not think
