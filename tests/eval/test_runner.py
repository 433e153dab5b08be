"""Tests of `tte_eval/runner.py` and `tte_eval/cache.py`: scoring on fixed embeddings, the cached end-to-end run."""

import dataclasses
import json
import math
import os
import shutil

import numpy as np
import pytest
from tests.eval.synthetic_mmeb import HashEncoder, OracleEncoder

from tte_eval.cache import CachedEmbeddings, input_key, write_atomic
from tte_eval.loaders import load_task
from tte_eval.rows import Candidate, Item, QueryRow, build_task_data
from tte_eval.runner import EvalConfig, check_embeddings, evaluate, score_task
from tte_eval.tasks import TASKS


def _text(text: str) -> Item:
    return Item(text, text=text)


def _embeddings(queries: dict[str, list[float]], documents: dict[str, list[float]]) -> CachedEmbeddings:
    """Fixed embeddings keyed by the text inputs `{"text": name}`."""
    def keys(names):
        return [input_key({"text": name}) for name in names]

    query_matrix, document_matrix = np.array(list(queries.values())), np.array(list(documents.values()))
    return CachedEmbeddings(keys(queries), query_matrix, keys(documents), document_matrix)


def test_score_task_local_hand_computed():
    a, b, c = (Candidate(name, _text(name)) for name in "abc")
    rows = [QueryRow("0", _text("q0"), (a, b, c), {"a": 1.0}), QueryRow("1", _text("q1"), (b, a, c), {"b": 1.0})]
    task = build_task_data(TASKS["ImageNet-1K"], rows, [])
    # one-hot documents: each query's scores are its own coordinates; row 1 ties a and b at 0.7
    one_hot = {"a": [1, 0, 0], "b": [0, 1, 0], "c": [0, 0, 1]}
    embeddings = _embeddings({"q0": [0.2, 0.9, 0.5], "q1": [0.7, 0.7, 0.1]}, one_hot)
    scores = score_task(task, embeddings)
    # row 0 ranks [b, c, a] (positive third); row 1 ranks [b, a, c] (tie kept in pool order: positive first)
    expected = {"hit@1": 0.5, "hit@5": 1.0, "precision@1": 0.5, "precision@5": 0.2, "recall@5": 1.0,
                "mrr@5": (1 / 3 + 1) / 2, "map@5": (1 / 3 + 1) / 2, "ndcg_linear@5": (0.5 + 1) / 2,
                "f1@5": 1 / 3}  # fmt: skip
    assert {name: scores[name] for name in expected} == pytest.approx(expected, abs=1e-12)
    assert (scores["num_pred"], scores["num_data"]) == (2, 2)


def test_score_task_global_graded_reference_case():
    names = ["d1", "d2", "d3", "d4", "d5", "d9"]
    pages = {name: Candidate(name, _text(name)) for name in names}
    labels = {"d3": 2.0, "d1": 1.0, "d9": 1.0}
    row = QueryRow("q", _text("q"), tuple(pages[name] for name in labels), labels)
    task = build_task_data(TASKS["ViDoSeek-doc"], [row], list(pages.values()))
    documents = {name: np.eye(6)[i].tolist() for i, name in enumerate(names)}
    scores = score_task(task, _embeddings({"q": [0.9, 0.8, 0.7, 0.6, 0.5, 0.1]}, documents))
    assert scores["ndcg_linear@5"] == pytest.approx(2 / (2 + 1 / math.log2(3) + 1 / 2), abs=1e-12)
    assert scores["ndcg_exponential@5"] == pytest.approx(2.5 / (3 + 1 / math.log2(3) + 1 / 2), abs=1e-12)


def test_check_embeddings_rejects_unnormalised_rows():
    with pytest.raises(ValueError, match=r"encode_query returned rows with L2 norm in \[1.0000, 2.0000\]"):
        check_embeddings(np.array([[1.0, 0.0], [2.0, 0.0]]), 2, "query")


def test_check_embeddings_rejects_wrong_count():
    with pytest.raises(ValueError, match=r"encode_document returned shape \(1, 2\); expected \(3, d\)"):
        check_embeddings(np.array([[1.0, 0.0]]), 3, "document")


# ----- end to end with the deterministic test encoder -----


def _config(data_dir: str, tmp_path, tasks: list[str], **overrides) -> EvalConfig:
    settings = {"output_dir": str(tmp_path / "out"), "cache_dir": str(tmp_path / "cache")}
    return EvalConfig(data_dir, tuple(tasks), **{**settings, **overrides})


def _all_tasks(synthetic_data) -> list[str]:
    groups = synthetic_data[1]
    return groups["image"] + groups["video"] + groups["visdoc"]


def test_evaluate_oracle_encoder_hits_every_task(synthetic_data, manifest, tmp_path):
    data_dir, tasks = synthetic_data[0], _all_tasks(synthetic_data)
    encoder = OracleEncoder([load_task(data_dir, name) for name in tasks])
    report = evaluate(encoder, manifest, _config(data_dir, tmp_path, tasks), "oracle")
    hits = {name: scores["hit@1"] for modality in report["metrics"].values() for name, scores in modality.items()}
    assert hits == dict.fromkeys(tasks, 1.0)


def test_evaluate_writes_results_with_every_knob(synthetic_data, hash_encoder, manifest, tmp_path):
    data_dir, tasks = synthetic_data[0], _all_tasks(synthetic_data)
    report = evaluate(hash_encoder, manifest, _config(data_dir, tmp_path, tasks), "hash", {"think": "queries"})
    with open(tmp_path / "out" / "results.json") as f:
        assert json.load(f) == report
    meta = report["metadata"]
    assert {name: meta[name] for name in manifest.to_dict()} == manifest.to_dict()
    assert (meta["benchmark"], meta["model_settings"], meta["tasks"]) == ("mmeb-v2", {"think": "queries"}, tasks)
    assert "stable sort" in meta["tie_policy"]
    assert sorted(report["metrics"]["visdoc"]) == ["ViDoRe_arxivqa", "ViDoSeek-doc"]
    markdown = (tmp_path / "out" / "results.md").read_text()
    assert "| ViDoSeek-doc | VD-OOD | ndcg_linear@5 |" in markdown and "- num_frames: 8" in markdown


def test_evaluate_embeds_each_unique_input_once(data_dir, hash_encoder, manifest, tmp_path):
    evaluate(hash_encoder, manifest, _config(data_dir, tmp_path, ["ImageNet-1K", "RefCOCO-Matching"]), "hash")
    sizes = [(side, len(inputs), len({input_key(i) for i in inputs})) for side, inputs in hash_encoder.calls]
    # ImageNet-1K: 3 queries, 9 candidate slots -> 3 labels; RefCOCO-Matching: 2 queries, 4 slots -> 2 targets
    assert sizes == [("query", 3, 3), ("document", 3, 3), ("query", 2, 2), ("document", 2, 2)]


def test_evaluate_passes_video_frames_through(data_dir, hash_encoder, manifest, tmp_path):
    evaluate(hash_encoder, manifest, _config(data_dir, tmp_path, ["MSR-VTT"]), "hash")
    documents = hash_encoder.calls[1][1]
    assert [sorted(document) for document in documents] == [["instruction", "video"]] * 2
    assert all(len(document["video"]) == 8 and os.path.isfile(document["video"][0]) for document in documents)


def test_evaluate_propagates_encoder_errors(data_dir, manifest, tmp_path):
    class NoVideo(HashEncoder):
        def encode_query(self, inputs, batch_size):
            if any("video" in model_input for model_input in inputs):
                raise ValueError("inputs[0]: unknown keys ['video']")
            return super().encode_query(inputs, batch_size)

    with pytest.raises(ValueError, match=r"unknown keys \['video'\]"):
        evaluate(NoVideo(), manifest, _config(data_dir, tmp_path, ["K700"]), "no-video")


def test_evaluate_without_all_tasks_records_aggregate_error(data_dir, hash_encoder, manifest, tmp_path):
    report = evaluate(hash_encoder, manifest, _config(data_dir, tmp_path, ["OK-VQA"]), "hash")
    assert report["aggregate"] is None
    assert "refusing to aggregate with missing tasks: I-CLS: ['ImageNet-1K'" in report["aggregate_error"]


def test_evaluate_allow_partial_marks_aggregate(data_dir, hash_encoder, manifest, tmp_path):
    config = _config(data_dir, tmp_path, ["OK-VQA"], allow_partial=True)
    report = evaluate(hash_encoder, manifest, config, "hash")
    assert report["aggregate"]["scores"]["I-QA"] == pytest.approx(100 * report["metrics"]["image"]["OK-VQA"]["hit@1"])
    assert report["aggregate"]["scores"]["I-CLS"] is None
    assert "OK-VQA" not in report["aggregate"]["missing"]["I-QA"]


def test_evaluate_v1_benchmark(data_dir, hash_encoder, manifest, tmp_path):
    config = _config(os.path.join(data_dir, "v1"), tmp_path, ["OK-VQA", "MSCOCO_t2i"], benchmark="mmeb-v1")
    report = evaluate(hash_encoder, manifest, config, "hash")
    assert sorted(report["metrics"]["image"]) == ["MSCOCO_t2i", "OK-VQA"]
    assert "refusing to aggregate with missing tasks: I-CLS" in report["aggregate_error"]


# ----- cache -----


def test_evaluate_reuses_cache(data_dir, hash_encoder, manifest, tmp_path):
    config = _config(data_dir, tmp_path, ["OK-VQA", "K700"])
    first = evaluate(hash_encoder, manifest, config, "hash")
    second_encoder = HashEncoder()
    second = evaluate(second_encoder, manifest, config, "hash")
    assert second_encoder.calls == []
    assert second["metadata"]["cache"] == {"OK-VQA": "reused", "K700": "reused"}
    assert first["metadata"]["cache"] == {"OK-VQA": "missing", "K700": "missing"}
    assert second["metrics"] == first["metrics"]


@pytest.mark.parametrize(
    ("name", "value"),
    [("model_hash", "another-model"), ("prompt_set_version", "ecr-v2"), ("max_pixels", 1024 * 28 * 28),
     ("num_frames", 4), ("task_list_version", "mmeb-v2/other")],
)  # fmt: skip
def test_evaluate_rebuilds_stale_cache(data_dir, hash_encoder, manifest, tmp_path, name, value):
    config = _config(data_dir, tmp_path, ["OK-VQA"])
    evaluate(HashEncoder(), manifest, config, "hash")
    report = evaluate(hash_encoder, dataclasses.replace(manifest, **{name: value}), config, "hash")
    old = manifest.to_dict()[name]
    assert report["metadata"]["cache"] == {"OK-VQA": f"stale: {name} changed ({old!r} -> {value!r})"}
    assert [side for side, _ in hash_encoder.calls] == ["query", "document"]
    assert evaluate(HashEncoder(), dataclasses.replace(manifest, **{name: value}), config, "hash")["metadata"][
        "cache"
    ] == {"OK-VQA": "reused"}


def test_evaluate_rebuilds_cache_when_rows_change(data_dir, hash_encoder, manifest, tmp_path):
    copy = tmp_path / "data"
    shutil.copytree(os.path.join(data_dir, "images"), copy / "images")
    shutil.copytree(os.path.join(data_dir, "OK-VQA"), copy / "OK-VQA")
    config = _config(str(copy), tmp_path, ["OK-VQA"])
    evaluate(HashEncoder(), manifest, config, "hash")
    rows = (copy / "OK-VQA" / "test.jsonl").read_text().replace("square 1?", "square one?")
    (copy / "OK-VQA" / "test.jsonl").write_text(rows)
    report = evaluate(hash_encoder, manifest, config, "hash")
    assert report["metadata"]["cache"] == {"OK-VQA": "stale: task inputs changed"}


def test_evaluate_leaves_no_temporary_files(data_dir, hash_encoder, manifest, tmp_path):
    evaluate(hash_encoder, manifest, _config(data_dir, tmp_path, ["OK-VQA"]), "hash")
    assert sorted(os.listdir(tmp_path / "cache")) == ["OK-VQA.npz"]
    assert sorted(os.listdir(tmp_path / "out")) == ["results.json", "results.md"]


def test_write_atomic_keeps_old_file_when_write_fails(tmp_path):
    path = tmp_path / "cache.npz"
    path.write_bytes(b"old")

    def failing_write(f):
        f.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomic(str(path), failing_write)
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["cache.npz"]
