"""Tests of `tte_eval/user_tasks.py` and of user tasks in the runner and CLI (`--tasks-dir`)."""

import json
import math
import os
import re

import numpy as np
import pytest
from tests.eval.synthetic_mmeb import HashEncoder, OracleEncoder, write_image, write_jsonl

from tte_eval import cli
from tte_eval.aggregate import aggregate, read_score_file
from tte_eval.runner import EvalConfig, evaluate
from tte_eval.user_tasks import load_user_task, load_user_tasks, write_task


# One-hot targets and hand-placed queries: each query's score for a target is one coordinate of the query, so the
# rankings are b > c > a for q0 and c > b > a for q1 and q2.
VECTORS = {"a": [1, 0, 0], "b": [0, 1, 0], "c": [0, 0, 1],
           "q0": [0.2, 0.9, 0.5], "q1": [0.1, 0.3, 0.9], "q2": [0.1, 0.5, 0.8]}  # fmt: skip
LOCAL_SPEC = {"name": "shapes-local", "modality": "image", "eval_type": "local", "metric": "hit@1"}
GLOBAL_SPEC = {"name": "shapes-global", "modality": "visdoc", "eval_type": "global", "metric": "ndcg_linear@5"}


class TableEncoder(HashEncoder):
    """The test encoder with hand-set vectors: an input's vector is `VECTORS[text]`, normalised."""

    def vector(self, model_input: dict) -> np.ndarray:
        vector = np.array(VECTORS[model_input["text"]], dtype=float)
        return vector / np.linalg.norm(vector)


def _row(query: str, targets: list[str], positives: list[int], **overrides) -> dict:
    row = {"qry_inst": "Find the matching shape", "qry_text": query, "qry_img_path": "", "tgt_inst": "",
           "tgt_text": targets, "tgt_img_path": [""] * len(targets), "positives": positives}  # fmt: skip
    return {**row, **overrides}


def _local_rows(folder: str) -> list[dict]:
    """Row 0: positive a ranks 3rd of (a, b, c); row 1: positive c ranks 1st of (b, c). Queries carry images."""
    images = [write_image(folder, f"images/q{i}.png") for i in range(2)]
    return [_row("q0", ["a", "b", "c"], [0], qry_img_path=images[0]),
            _row("q1", ["b", "c"], [1], qry_img_path=images[1])]  # fmt: skip


def _global_rows() -> list[dict]:
    """Pool (a, c, b): q0's positive a ranks 3rd, q1's c 1st, q2's positives b and a 2nd and 3rd."""
    return [_row("q0", ["a"], [0]), _row("q1", ["c", "b"], [0]), _row("q2", ["b", "a"], [0, 1])]


@pytest.fixture
def tasks_dir(tmp_path) -> str:
    """A tasks dir with the local and the global task, and a media folder without a spec (skipped)."""
    root = tmp_path / "tasks"
    write_task(str(root / "local"), LOCAL_SPEC, _local_rows(str(root / "local")))
    write_task(str(root / "global"), GLOBAL_SPEC, _global_rows())
    write_image(str(root), "shared/unused.png")
    return str(root)


def _config(tmp_path, tasks_dir: str | None, data_dir: str | None = None, tasks=(), **overrides) -> EvalConfig:
    settings = {"output_dir": str(tmp_path / "out"), "cache_dir": str(tmp_path / "cache"), "tasks_dir": tasks_dir}
    return EvalConfig(data_dir, tuple(tasks), **{**settings, **overrides})


# ----- hand-computed scores, end to end through `evaluate` -----


def test_evaluate_user_task_local_hand_computed(tasks_dir, manifest, tmp_path):
    report = evaluate(TableEncoder(), manifest, _config(tmp_path, tasks_dir), "table")
    entry = report["user_tasks"]["tasks"]["shapes-local"]
    scores = entry["metrics"]
    expected = {"hit@1": 0.5, "hit@5": 1.0, "mrr@5": (1 / 3 + 1) / 2, "precision@1": 0.5, "num_pred": 2}
    assert {name: scores[name] for name in expected} == pytest.approx(expected, abs=1e-12)
    assert (entry["metric"], entry["score"], entry["eval_type"], entry["modality"]) == ("hit@1", 0.5, "local", "image")


def test_evaluate_user_task_global_hand_computed(tasks_dir, manifest, tmp_path):
    report = evaluate(TableEncoder(), manifest, _config(tmp_path, tasks_dir), "table")
    scores = report["user_tasks"]["tasks"]["shapes-global"]["metrics"]
    # row 0 ranked alone over its own list would hit; over the shared pool a ranks 3rd, after b and c
    ndcg = [1 / math.log2(4), 1.0, (1 / math.log2(3) + 1 / math.log2(4)) / (1 + 1 / math.log2(3))]
    expected = {"hit@1": 1 / 3, "ndcg_linear@5": sum(ndcg) / 3, "mrr@5": (1 / 3 + 1 + 1 / 2) / 3, "num_pred": 3}
    assert {name: scores[name] for name in expected} == pytest.approx(expected, abs=1e-12)
    assert report["user_tasks"]["tasks"]["shapes-global"]["score"] == pytest.approx(sum(ndcg) / 3, abs=1e-12)


def test_evaluate_user_tasks_mean_and_markdown(tasks_dir, manifest, tmp_path):
    report = evaluate(TableEncoder(), manifest, _config(tmp_path, tasks_dir), "table")
    tasks = report["user_tasks"]["tasks"]
    assert list(tasks) == ["shapes-global", "shapes-local"]  # folder name order: global/, local/
    assert report["user_tasks"]["mean"] == pytest.approx((tasks["shapes-global"]["score"] + 0.5) / 2, abs=1e-12)
    assert (report["metrics"], report["aggregate"], report["aggregate_error"]) == ({}, None, None)
    assert json.loads((tmp_path / "out" / "results.json").read_text()) == report
    markdown = (tmp_path / "out" / "results.md").read_text()
    assert "| shapes-local | image | local | hit@1 | 50.00 | 2 |" in markdown
    assert f"Mean headline score over 2 user tasks: {100 * report['user_tasks']['mean']:.2f}" in markdown
    assert "No aggregate" not in markdown


def test_evaluate_user_task_oracle_hits_every_row(tasks_dir, manifest, tmp_path):
    encoder = OracleEncoder([task.data for task in load_user_tasks(tasks_dir)])
    report = evaluate(encoder, manifest, _config(tmp_path, tasks_dir), "oracle")
    assert {name: entry["metrics"]["hit@1"] for name, entry in report["user_tasks"]["tasks"].items()} == {
        "shapes-global": 1.0, "shapes-local": 1.0}  # fmt: skip


def test_evaluate_user_task_embeds_unique_inputs_with_images(tasks_dir, manifest, tmp_path):
    encoder = TableEncoder()
    evaluate(encoder, manifest, _config(tmp_path, tasks_dir), "table")
    (_, global_docs), (_, local_queries), (_, local_docs) = encoder.calls[1:]
    assert [document["text"] for document in global_docs] == ["a", "c", "b"]  # the de-duplicated pool, in order
    assert [document["text"] for document in local_docs] == ["a", "b", "c"]
    assert [query["image"] for query in local_queries] == [os.path.join(tasks_dir, "local", f"images/q{i}.png")
                                                           for i in range(2)]  # fmt: skip
    assert local_queries[0]["instruction"] == "Find the matching shape"


def test_evaluate_user_tasks_keep_mmeb_aggregate_strict(tasks_dir, data_dir, hash_encoder, manifest, tmp_path):
    config = _config(tmp_path, tasks_dir, data_dir, ["OK-VQA"])
    report = evaluate(hash_encoder, manifest, config, "hash")
    assert report["metrics"].keys() == {"image"} and list(report["metrics"]["image"]) == ["OK-VQA"]
    assert "refusing to aggregate with missing tasks: I-CLS: ['ImageNet-1K'" in report["aggregate_error"]
    assert "shapes" not in report["aggregate_error"]
    model, task_scores = read_score_file(str(tmp_path / "out" / "results.json"))  # `tte-eval aggregate` on it
    row = aggregate(task_scores, model, allow_partial=True)
    assert row.scores["I-QA"] == pytest.approx(100 * report["metrics"]["image"]["OK-VQA"]["hit@1"])


# ----- cache -----


def test_evaluate_user_tasks_reuse_cache(tasks_dir, manifest, tmp_path):
    first = evaluate(TableEncoder(), manifest, _config(tmp_path, tasks_dir), "table")
    encoder = TableEncoder()
    second = evaluate(encoder, manifest, _config(tmp_path, tasks_dir), "table")
    assert encoder.calls == []
    assert [entry["cache"] for entry in first["user_tasks"]["tasks"].values()] == ["missing", "missing"]
    assert [entry["cache"] for entry in second["user_tasks"]["tasks"].values()] == ["reused", "reused"]
    assert [entry["metrics"] for entry in second["user_tasks"]["tasks"].values()] == [
        entry["metrics"] for entry in first["user_tasks"]["tasks"].values()]  # fmt: skip
    assert sorted(os.listdir(tmp_path / "cache" / "user")) == ["shapes-global.npz", "shapes-local.npz"]


def test_evaluate_user_task_rebuilds_cache_when_rows_change(tasks_dir, manifest, tmp_path):
    evaluate(TableEncoder(), manifest, _config(tmp_path, tasks_dir), "table")
    write_task(os.path.join(tasks_dir, "global"), GLOBAL_SPEC, _global_rows()[:2])
    report = evaluate(TableEncoder(), manifest, _config(tmp_path, tasks_dir), "table")
    caches = {name: entry["cache"] for name, entry in report["user_tasks"]["tasks"].items()}
    assert caches == {"shapes-global": "stale: task inputs changed", "shapes-local": "reused"}


# ----- write_task -----


def test_write_task_round_trips_through_the_loader(tmp_path):
    folder = str(tmp_path / "local")
    written = write_task(folder, LOCAL_SPEC, _local_rows(folder))
    assert load_user_task(folder) == written
    assert json.loads((tmp_path / "local" / "task.json").read_text()) == LOCAL_SPEC
    assert sorted(os.listdir(folder)) == ["images", "task.json", "test.jsonl"]  # no temporary files left


def test_write_task_refuses_bad_row_and_writes_nothing(tmp_path):
    folder = tmp_path / "bad"
    with pytest.raises(ValueError, match=r"bad/test\.jsonl row 1: positives must be distinct .* in \[0, 2\)"):
        write_task(str(folder), GLOBAL_SPEC, [_row("q0", ["a"], [0]), _row("q1", ["a", "b"], [2])])
    assert not folder.exists()


# ----- bad input -----


def _write_raw(folder, spec, rows) -> None:
    """Write a task folder by hand, bypassing `write_task`'s validation, as a generator bug would."""
    write_jsonl(str(folder), "test.jsonl", rows)
    (folder / "task.json").write_text(spec if isinstance(spec, str) else json.dumps(spec))


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({**LOCAL_SPEC, "family": "vqa"}, r"task\.json: unknown keys \['family'\]"),
        ({k: v for k, v in LOCAL_SPEC.items() if k != "metric"}, r"task\.json: missing keys \['metric'\]"),
        ({**LOCAL_SPEC, "metric": "ndcg@5"}, r"task\.json: metric 'ndcg@5' is not one of \['hit@1'"),
        ({**LOCAL_SPEC, "eval_type": "pooled"}, r"task\.json: eval_type 'pooled' is not one of \['local', 'global'\]"),
        ({**LOCAL_SPEC, "modality": "audio"},
         r"task\.json: modality 'audio' is not one of \['image', 'video', 'visdoc'\]"),
        ({**LOCAL_SPEC, "name": "OK-VQA"}, r"task\.json: name 'OK-VQA' is an MMEB task name"),
        ({**LOCAL_SPEC, "name": "../up"}, r"task\.json: name '\.\./up' must start with a letter or digit"),
        ({**LOCAL_SPEC, "name": 7}, r"task\.json: field 'name' must be str, got int 7"),
        ("{not json", r"task\.json: not valid JSON"),
    ],
)  # fmt: skip
def test_load_user_task_bad_spec_raises(tmp_path, spec, message):
    _write_raw(tmp_path, spec, [_row("q0", ["a"], [0])])
    with pytest.raises(ValueError, match=message):
        load_user_task(str(tmp_path))


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (_row("q1", ["a"], [0], qry_image="x.png"), r"unknown keys \['qry_image'\]; allowed keys are"),
        ({key: value for key, value in _row("q1", ["a"], [0]).items() if key != "positives"},
         "missing field 'positives'"),
        (_row("q1", ["a", "b"], []), r"positives must be distinct target indices in \[0, 2\), at least one; got \[\]"),
        (_row("q1", ["a", "b"], [0, 0]), r"positives must be distinct .* got \[0, 0\]"),
        (_row("q1", ["a", "b"], [True]), r"positives must be distinct .* got \[True\]"),
        (_row("q1", ["a", "b", "a"], [0]), r"targets \[2\] equal a positive target but are not in positives"),
        (_row("q1", ["a", "b"], [0], tgt_img_path=[""]), "tgt_text has 2 entries but tgt_img_path has 1"),
        (_row("q1", ["a", " "], [0]), "target 1: has neither text nor image"),
        (_row("", ["a"], [0]), "query: has neither text nor image"),
        (_row("q1", ["a"], [0], qry_img_path="images/nope.png"), "query: image file 'images/nope.png' not found"),
        (_row("q1", ["a", ""], [0], tgt_img_path=["", "nope.png"]), "target 1: image file 'nope.png' not found"),
        (_row("q1", "a", [0]), "field 'tgt_text' must be list or tuple or ndarray"),
        (_row("q1", ["a"], [0], qry_img_path="images/x.png", qry_video_path="clips/0"),
         r"query: has both an image \(qry_img_path\) and a video \(qry_video_path\); it takes one"),
        (_row("q1", ["a"], [0], qry_video_path="clips/none"), "query: video frame folder 'clips/none' not found"),
    ],
)  # fmt: skip
def test_load_user_task_bad_row_names_file_and_row(tmp_path, row, message):
    _write_raw(tmp_path, LOCAL_SPEC, [_row("q0", ["a"], [0]), row])
    with pytest.raises(ValueError, match=rf"{re.escape(str(tmp_path))}/test\.jsonl row 1: .*{message}"):
        load_user_task(str(tmp_path))


def test_load_user_task_empty_rows_raises(tmp_path):
    _write_raw(tmp_path, LOCAL_SPEC, [])
    with pytest.raises(ValueError, match=r"test\.jsonl: no rows"):
        load_user_task(str(tmp_path))


def test_load_user_task_without_rows_file_raises(tmp_path):
    (tmp_path / "task.json").write_text(json.dumps(LOCAL_SPEC))
    with pytest.raises(ValueError, match="expected exactly one of test.jsonl / test.parquet"):
        load_user_task(str(tmp_path))


def test_load_user_tasks_duplicate_names_raise(tmp_path):
    for folder in ("one", "two"):
        write_task(str(tmp_path / folder), GLOBAL_SPEC, _global_rows())
    with pytest.raises(ValueError, match=r"task name 'shapes-global' is used by both .*/one and .*/two"):
        load_user_tasks(str(tmp_path))


def test_load_user_tasks_without_task_folders_raises(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(ValueError, match="holds no task folder"):
        load_user_tasks(str(tmp_path))


def test_eval_config_without_tasks_raises(tmp_path):
    with pytest.raises(ValueError, match="nothing to evaluate"):
        _config(tmp_path, None)


# ----- CLI -----


def test_main_evaluate_tasks_dir(tasks_dir, tmp_path, capsys, monkeypatch):
    # the model side is the table encoder; everything else is the real `tte-eval evaluate`
    monkeypatch.setattr(cli, "model_hash", lambda folder: "sha256-of-table-encoder")
    monkeypatch.setattr(cli, "load_tte_model", lambda folder: TableEncoder())
    monkeypatch.setattr(cli, "ModelEncoder",
                        lambda model, think, trace_cache, num_frames: setattr(model, "think", "queries") or model)
    monkeypatch.setattr(cli, "model_settings", lambda model: {"prompt_set_version": "ecr-v1", "max_pixels": 1024})
    cli.main(["evaluate", "--model", "table", "--tasks-dir", tasks_dir, "--output", str(tmp_path / "out")])
    assert "| shapes-local | image | local | hit@1 | 50.00 | 2 |" in capsys.readouterr().out
    report = json.loads((tmp_path / "out" / "results.json").read_text())
    assert (report["metadata"]["tasks_dir"], report["metadata"]["tasks"]) == (tasks_dir, [])
    assert sorted(os.listdir(tmp_path / "out" / "cache" / "user")) == ["shapes-global.npz", "shapes-local.npz"]


@pytest.mark.parametrize(
    ("flags", "message"),
    [([], "nothing to evaluate: give MMEB tasks"), (["--tasks", "OK-VQA"], r"MMEB tasks \['OK-VQA'\] need a data_dir"),
     (["--tasks-dir", ".", "--think", "sometimes"], r"--think 'sometimes' is not one of \('always', 'never', "
                                                    r"'queries', 'auto', 'tasks'\)")],
)
def test_main_evaluate_task_selection_errors(tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["evaluate", "--model", str(tmp_path), "--output", str(tmp_path), *flags])
    assert exit_info.value.code == 2
    assert re.search(message, capsys.readouterr().err)


def test_main_evaluate_tasks_dir_tiny_tte(tiny_tte_folder, tasks_dir, tmp_path):
    output = tmp_path / "out"
    cli.main(["evaluate", "--model", tiny_tte_folder, "--tasks-dir", tasks_dir, "--output", str(output)])
    tasks = json.loads((output / "results.json").read_text())["user_tasks"]["tasks"]
    assert {name: entry["metrics"]["num_pred"] for name, entry in tasks.items()} == {"shapes-global": 3,
                                                                                     "shapes-local": 2}  # fmt: skip
    assert all(0.0 <= entry["score"] <= 1.0 for entry in tasks.values())


# ----- the spec's ECR family and precomputed query traces (`--traces`) -----


def test_user_task_family_reaches_every_encoder_input(tmp_path, manifest):
    root = tmp_path / "tasks"
    write_task(str(root / "vqa"), {**LOCAL_SPEC, "task": "vqa"}, [_row("q0", ["a", "b"], [0])])
    encoder = HashEncoder()
    report = evaluate(encoder, manifest, _config(tmp_path, str(root)), "hash")
    (_, queries), (_, documents) = encoder.calls
    assert [item["task"] for item in queries + documents] == ["vqa"] * 3
    assert report["user_tasks"]["tasks"]["shapes-local"]["task"] == "vqa"


def test_user_task_family_must_be_a_name(tmp_path):
    with pytest.raises(ValueError, match="task 'v q a' is not a prompt family name"):
        write_task(str(tmp_path / "t"), {**LOCAL_SPEC, "task": "v q a"}, [_row("q0", ["a"], [0])])


def _trace_store(folder, entries, reasoner="oracle-describer (not a model)"):
    from training.traces import TraceStore, make_manifest

    store = TraceStore.create(str(folder), make_manifest(reasoner, "ecr-v1", {"oracle": "test"}))
    store.append(entries)
    return str(folder)


def test_precomputed_query_traces_reach_queries_only_and_are_recorded(tasks_dir, manifest, tmp_path):
    traces = _trace_store(tmp_path / "store", [("shapes-local/0", "query", "T0"), ("shapes-local/1", "query", "T1"),
                                               *[(f"shapes-global/{i}", "query", f"G{i}") for i in range(3)]])  # fmt: skip
    encoder = HashEncoder()
    report = evaluate(encoder, manifest, _config(tmp_path, tasks_dir, traces=traces), "hash")
    by_side = {}
    for side, inputs in encoder.calls:
        by_side.setdefault(side, []).extend(inputs)
    assert sorted(item["reasoning"] for item in by_side["query"]) == ["G0", "G1", "G2", "T0", "T1"]
    assert all("reasoning" not in item for item in by_side["document"])
    recorded = report["metadata"]["query_traces"]
    assert (recorded["store"], recorded["reasoner"]) == (traces, "oracle-describer (not a model)")
    # A different trace is a different input: the cache does not serve the old embedding.
    plain = evaluate(HashEncoder(), manifest, _config(tmp_path, tasks_dir), "hash")
    assert plain["metadata"]["query_traces"] is None
    assert plain["user_tasks"]["tasks"]["shapes-local"]["cache"] != "reused"


def test_precomputed_query_traces_missing_a_row_fail_before_embedding(tasks_dir, manifest, tmp_path):
    traces = _trace_store(tmp_path / "store", [("shapes-local/0", "query", "T0")])
    encoder = HashEncoder()
    with pytest.raises(ValueError, match=r"task 'shapes-global' row 0: the trace store has no query trace"):
        evaluate(encoder, manifest, _config(tmp_path, tasks_dir, traces=traces), "hash")
    assert encoder.calls == []
