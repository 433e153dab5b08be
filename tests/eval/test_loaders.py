"""Tests of the loaders (`loaders.py`, `rows.py`, `image_rows.py`, `video_rows.py`) on the synthetic fixture.

Expected strings are written out by hand from the rules of harness doc §2 (whitespace included).
"""

import json
import os
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tests.eval.synthetic_mmeb import write_frames, write_image, write_jsonl

from tte_eval.loaders import load_task


QA = (
    "Given a video and a question, select the most accurate answer from the provided candidates. "
    "Return only the exact text of your chosen answer. Question:"
)


@pytest.mark.parametrize(
    ("task", "row", "expected"),
    [
        ("ImageNet-1K", 0, "<image>\nRepresent the given image for classification\n"),
        ("N24News", 0, "<image>\nRepresent the given news image with the following caption for domain classification"
                       " Storm hits coast\n"),
        ("OK-VQA", 1, "<image>\nRepresent the given image with the following question: What colour is square 1?\n"),
        ("MSCOCO_i2t", 0, "<image>\nFind an image caption describing the given everyday image\n"),
        ("MSCOCO_t2i", 2, "Find me an everyday image that matches the given caption: A red square 2\n"),
        ("VisDial", 0, "Represent the given dialogue about an image, which is used for image retrieval:"
                       " Q: is it red? A: yes 0\n\n"),
        ("RefCOCO-Matching", 0, "<image>\nSelect the portion of the image that follows the language expressions:"
                                " the left object\n"),
        ("NIGHTS", 0, "<image>\nFind a day-to-day image that looks similar to the provided image:\n"),
        ("K700", 0, "<video> Recognize the category of the video content."),
        ("MVBench", 0, f"<video> {QA}  What happens?\nOptions:\n(A) a jump\n(B) a fall"),
        ("Video-MME", 0, f"<video> {QA}  Which sport?\nA. tennis\nB. golf"),
        ("EgoSchema", 0, f"<video> {QA}  What does C do?A. cooks B. reads"),
        ("ActivityNetQA", 0, f"<video> {QA}  is it outdoors? (A) yes; (B) no."),
        ("MSR-VTT", 1, "Find a video that contains the following visual content: people row a boat"),
        ("Charades-STA", 0, "<video> Find the clip that corresponds to the described scene in the given video:"
                            " a person opens a door"),
        ("MomentSeeker", 0, "Find the clip that corresponds to the given text: the goal"),
        ("MomentSeeker", 1, "<image> Select the video clip that aligns with the given text and image: the goal again"),
        ("ViDoSeek-doc", 0, "Find a document image that matches the given query: revenue in 2020"),
    ],
)  # fmt: skip
def test_load_task_query_harness_string(data_dir, task, row, expected):
    assert load_task(data_dir, task).rows[row].query.harness_text == expected


@pytest.mark.parametrize(
    ("task", "cand_id", "expected"),
    [
        ("ImageNet-1K", "dog", "dog"),
        ("MSCOCO_t2i", "images/t2i1.png", "<image>\nRepresent the given image.\n"),
        ("WebQA", "images/t2i0.png", "<image>\nRepresent the given Wikipedia image with related text information:"
                                     " Flag A\n"),
        ("RefCOCO-Matching", "images/scene.png:the right object",
         '<image>\nSelect the portion of the image that follows the language expressions: "the right object"\n'),
        ("NIGHTS", "images/n1c.png:", "<image>\nRepresent the given image."),
        ("MVBench", "(B) a fall", "(B) a fall"),
        ("Video-MME", "B. golf", "golf"),
        ("EgoSchema", "A. cooks", "cooks"),
        ("MSR-VTT", "vid0", "<video> Understand the content of the provided video."),
        ("Charades-STA", "frames/charades0/negative_1", "<video> Understand the content of the provided video."),
        ("MomentSeeker", "frames/charades0/positive_0", "<video> Understand the content of the provided video clip."),
        ("ViDoRe_arxivqa", "p2", "<image> Understand the content of the provided document image."),
    ],
)  # fmt: skip
def test_load_task_candidate_harness_string(data_dir, task, cand_id, expected):
    candidates = {candidate.cand_id: candidate.item for candidate in load_task(data_dir, task).candidates}
    assert candidates[cand_id].harness_text == expected


def test_load_task_keeps_structured_parts(data_dir):
    query = load_task(data_dir, "N24News").rows[0].query
    assert query.model_input() == {
        "instruction": "Represent the given news image with the following caption for domain classification",
        "text": "Storm hits coast",
        "image": os.path.join(data_dir, "images/cls0.png"),
    }


def test_load_task_omits_absent_parts(data_dir):
    query = load_task(data_dir, "ImageNet-1K").rows[0].query
    assert query.model_input() == {
        "instruction": "Represent the given image for classification",
        "image": os.path.join(data_dir, "images/cls0.png"),
    }


def test_load_task_captioned_image_candidate_parts(data_dir):
    candidate = load_task(data_dir, "WebQA").rows[0].candidates[1]
    assert candidate.item.model_input() == {
        "instruction": "Represent the given Wikipedia image with related text information:",
        "text": "Flag B",
        "image": os.path.join(data_dir, "images/t2i1.png"),
    }


def test_load_task_video_query_is_frame_list(data_dir):
    query = load_task(data_dir, "K700").rows[1].query
    names = [os.path.basename(path) for path in query.model_input()["video"]]
    # 12 frames -> int(linspace(0, 11, 8)) = [0, 1, 3, 4, 6, 7, 9, 11], in natural order
    assert names == [f"frame_{i}.png" for i in (1, 2, 4, 5, 7, 8, 10, 12)]


def test_load_task_short_video_repeats_last_frame(data_dir):
    query = load_task(data_dir, "K700").rows[0].query
    assert [os.path.basename(path) for path in query.video] == ["frame_1.png", "frame_2.png"] + ["frame_3.png"] * 6


def test_load_task_num_frames_is_honoured(data_dir):
    assert len(load_task(data_dir, "MSR-VTT", num_frames=4).candidates[0].item.video) == 4


def test_load_task_dedups_candidates_by_id(data_dir):
    task = load_task(data_dir, "ImageNet-1K")
    assert [len(row.candidates) for row in task.rows] == [3, 3, 3]
    assert [candidate.cand_id for candidate in task.candidates] == ["cat", "dog", "bird"]


def test_load_task_shared_image_targets_stay_distinct(data_dir):
    task = load_task(data_dir, "RefCOCO-Matching")
    assert [candidate.cand_id for candidate in task.candidates] == [
        "images/scene.png:the left object",
        "images/scene.png:the right object",
    ]


def test_load_task_local_pool_is_the_row_list(data_dir):
    task = load_task(data_dir, "OK-VQA")
    assert task.spec.eval_type == "local"
    assert task.pool(task.rows[1]) == ["blue", "green", "red"]


def test_load_task_global_pool_adds_corpus(data_dir):
    task = load_task(data_dir, "K700")
    assert task.pool(task.rows[0]) == ["juggling", "rowing", "surfing"]


def test_load_task_global_pool_is_union_of_targets(data_dir):
    task = load_task(data_dir, "MSR-VTT")
    assert [row.labels for row in task.rows] == [{"vid0": 1.0}, {"vid1": 1.0}]
    assert task.pool(task.rows[0]) == ["vid0", "vid1"]


def test_load_task_graded_qrels_keep_max_and_drop_zero(data_dir):
    task = load_task(data_dir, "ViDoSeek-doc")
    assert task.rows[0].labels == {"p1": 3.0, "p3": 2.0}
    assert task.pool(task.rows[0]) == ["p1", "p3", "p2", "p0"]  # rows' candidates first, then the rest of the corpus


def test_load_task_multiple_positive_clips_are_labels(data_dir):
    row = load_task(data_dir, "Charades-STA").rows[0]
    assert row.labels == {"frames/charades0/positive_0": 1.0}
    assert len(row.candidates) == 3


def test_load_task_v1_rows(data_dir):
    row = load_task(os.path.join(data_dir, "v1"), "OK-VQA", benchmark="mmeb-v1").rows[0]
    assert row.query.harness_text == "<image>\nRepresent the given image with the following question: What is shown?"
    assert (row.query.instruction, row.query.text) == (
        "Represent the given image with the following question:", "What is shown?"
    )  # fmt: skip
    assert row.labels == {row.candidates[0].cand_id: 1.0}
    assert row.candidates[0].item.model_input() == {"text": "a square"}


def test_load_task_v1_image_candidates(data_dir):
    row = load_task(os.path.join(data_dir, "v1"), "MSCOCO_t2i", benchmark="mmeb-v1").rows[0]
    candidate = row.candidates[1].item
    assert candidate.harness_text == "<image>\nRepresent the given image."
    assert candidate.model_input() == {
        "instruction": "Represent the given image.", "image": os.path.join(data_dir, "v1", "images/v1b.png")
    }  # fmt: skip


def test_load_task_parquet_matches_jsonl(data_dir, tmp_path):
    shutil.copytree(os.path.join(data_dir, "images"), tmp_path / "images")
    with open(os.path.join(data_dir, "OK-VQA", "test.jsonl")) as f:
        records = [json.loads(line) for line in f]
    (tmp_path / "OK-VQA").mkdir()
    pq.write_table(pa.Table.from_pylist(records), tmp_path / "OK-VQA" / "test.parquet")
    from_parquet, from_jsonl = load_task(str(tmp_path), "OK-VQA"), load_task(data_dir, "OK-VQA")
    assert [r.query.harness_text for r in from_parquet.rows] == [r.query.harness_text for r in from_jsonl.rows]
    assert [c.cand_id for c in from_parquet.candidates] == [c.cand_id for c in from_jsonl.candidates]


# ----- bad inputs: each raises a ValueError naming the item -----


def _qa_row(root, **overrides) -> dict:
    row = {"qry_inst": "<|image_1|>\nRepresent the given image with the following question:", "qry_text": "Why?",
           "qry_img_path": write_image(str(root), "images/q.png"), "tgt_inst": "", "tgt_text": ["a", "b"],
           "tgt_img_path": ["", ""]}  # fmt: skip
    return {**row, **overrides}


def test_load_task_unknown_task_raises(data_dir):
    with pytest.raises(ValueError, match="unknown task 'ImageNet_1K'"):
        load_task(data_dir, "ImageNet_1K")


def test_load_task_superseded_task_raises(data_dir):
    with pytest.raises(ValueError, match="'MomentSeeker_1k8' is not part of the 78-task suite"):
        load_task(data_dir, "MomentSeeker_1k8")


def test_load_task_missing_folder_raises(tmp_path):
    with pytest.raises(ValueError, match="task 'OK-VQA': folder .* not found"):
        load_task(str(tmp_path), "OK-VQA")


def test_load_task_missing_field_raises(tmp_path):
    row = _qa_row(tmp_path)
    del row["qry_text"]
    write_jsonl(str(tmp_path), "OK-VQA/test.jsonl", [_qa_row(tmp_path), row])
    with pytest.raises(ValueError, match="OK-VQA/test row 1: missing field 'qry_text'"):
        load_task(str(tmp_path), "OK-VQA")


def test_load_task_wrong_field_type_raises(tmp_path):
    write_jsonl(str(tmp_path), "OK-VQA/test.jsonl", [_qa_row(tmp_path, tgt_text="a")])
    with pytest.raises(ValueError, match="OK-VQA/test row 0: field 'tgt_text' must be list or tuple or ndarray"):
        load_task(str(tmp_path), "OK-VQA")


def test_load_task_invalid_json_line_raises(tmp_path):
    write_jsonl(str(tmp_path), "OK-VQA/test.jsonl", [_qa_row(tmp_path)])
    with open(tmp_path / "OK-VQA" / "test.jsonl", "a") as f:
        f.write("{not json\n")
    with pytest.raises(ValueError, match=r"test\.jsonl:2: not valid JSON"):
        load_task(str(tmp_path), "OK-VQA")


def test_load_task_missing_image_raises(tmp_path):
    write_jsonl(str(tmp_path), "OK-VQA/test.jsonl", [_qa_row(tmp_path, qry_img_path="images/nope.png")])
    with pytest.raises(ValueError, match="OK-VQA/test row 0: image file 'images/nope.png' not found"):
        load_task(str(tmp_path), "OK-VQA")


def test_load_task_both_row_files_raise(tmp_path):
    write_jsonl(str(tmp_path), "OK-VQA/test.jsonl", [_qa_row(tmp_path)])
    pq.write_table(pa.Table.from_pylist([_qa_row(tmp_path)]), tmp_path / "OK-VQA" / "test.parquet")
    with pytest.raises(ValueError, match="expected exactly one of test.jsonl / test.parquet"):
        load_task(str(tmp_path), "OK-VQA")


def test_load_task_target_length_mismatch_raises(tmp_path):
    row = _qa_row(tmp_path, tgt_inst="<|image_1|>\nRepresent the given image.", tgt_img_path=["images/q.png"])
    write_jsonl(str(tmp_path), "MSCOCO_t2i/test.jsonl", [row])
    with pytest.raises(ValueError, match="MSCOCO_t2i/test row 0: tgt_text has 2 entries but tgt_img_path has 1"):
        load_task(str(tmp_path), "MSCOCO_t2i")


def test_load_task_missing_frame_folder_raises(tmp_path):
    write_jsonl(str(tmp_path), "MSR-VTT/test.jsonl", [{"video_id": "v", "video": "frames/none", "caption": "c"}])
    with pytest.raises(ValueError, match="MSR-VTT/test row 0: video frame folder 'frames/none' not found"):
        load_task(str(tmp_path), "MSR-VTT")


def test_load_task_answer_not_in_options_raises(tmp_path):
    video = write_frames(str(tmp_path), "frames/v", 2)
    write_jsonl(str(tmp_path), "NExTQA/test.jsonl", [{"video": video, "question": "q", "options": ["a", "b"],
                                                       "answer": "c"}])  # fmt: skip
    with pytest.raises(ValueError, match="NExTQA/test row 0: answer 'c' is not one of the options"):
        load_task(str(tmp_path), "NExTQA")


def test_load_task_label_outside_candidates_raises(tmp_path):
    video = write_frames(str(tmp_path), "frames/v", 2)
    write_jsonl(str(tmp_path), "SmthSmthV2/test.jsonl", [{"video": video, "label": "x", "candidates": ["a", "b"]}])
    with pytest.raises(ValueError, match=r"SmthSmthV2 row 0: labels \['x'\] are not among its ranked candidates"):
        load_task(str(tmp_path), "SmthSmthV2")


def test_load_task_clips_without_positive_raise(tmp_path):
    clips = [write_frames(str(tmp_path), f"frames/{name}", 1) for name in ("query", "neg_a", "neg_b")]
    write_jsonl(str(tmp_path), "QVHighlight/test.jsonl", [{"query": "q", "video": clips[0], "clips": clips[1:]}])
    with pytest.raises(ValueError, match="QVHighlight/test row 0: no clip folder named 'positive\\*'"):
        load_task(str(tmp_path), "QVHighlight")


def test_load_task_qrels_outside_corpus_raise(tmp_path):
    page = {"corpus-id": 1, "image": write_image(str(tmp_path), "p.png")}
    write_jsonl(str(tmp_path), "ViDoRe_docvqa/corpus.jsonl", [page])
    write_jsonl(str(tmp_path), "ViDoRe_docvqa/queries.jsonl", [{"query-id": 7, "query": "q"}])
    write_jsonl(str(tmp_path), "ViDoRe_docvqa/qrels.jsonl", [{"query-id": 7, "corpus-id": 9, "score": 1}])
    with pytest.raises(ValueError, match=r"queries row 0: qrels of query-id '7' name corpus ids \['9'\] missing"):
        load_task(str(tmp_path), "ViDoRe_docvqa")


def test_load_task_v1_rewritten_instruction_raises(tmp_path):
    row = {"qry_text": "<|image_1|>\nAnswer the question based on the given image: Why?", "qry_img_path": "",
           "tgt_text": ["a"], "tgt_img_path": [""]}  # fmt: skip
    write_jsonl(str(tmp_path), "OK-VQA/test.jsonl", [row])
    with pytest.raises(ValueError, match="OK-VQA/test row 0: .* does not start with the stock MMEB-V1 instruction"):
        load_task(str(tmp_path), "OK-VQA", benchmark="mmeb-v1")


def test_load_task_v1_video_task_raises(data_dir):
    with pytest.raises(ValueError, match="'K700' is a video task; MMEB-V1 has only the 36 image tasks"):
        load_task(data_dir, "K700", benchmark="mmeb-v1")


def test_load_task_unknown_benchmark_raises(data_dir):
    with pytest.raises(ValueError, match="unknown benchmark 'mmeb-v3'"):
        load_task(data_dir, "OK-VQA", benchmark="mmeb-v3")
