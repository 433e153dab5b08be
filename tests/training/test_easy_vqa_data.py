"""easy-VQA and rendered scenes as training rows and as `tte_eval` user tasks."""

import json
import os

from training.data import PairDataset, Source
from training.easy_vqa_data import write_easy_vqa_source, write_easy_vqa_task
from training.scenes import COLOURS, SHAPES, write_caption_task
from tte_eval.user_tasks import load_user_task


def test_easy_vqa_split_becomes_valid_training_rows(tmp_path):
    entry = write_easy_vqa_source(str(tmp_path), "test")
    dataset = PairDataset([Source(**{**entry, "path": str(tmp_path / entry["path"])})])
    assert len(dataset) == 9673  # every test question
    first = dataset[0]
    assert first.inputs["query"]["text"] == "what is the red shape?" and first.inputs["positive"]["text"] == "triangle"
    assert first.inputs["query"]["image"].endswith("/0.png") and first.inputs["query"]["task"] == "vqa"


def test_easy_vqa_test_task_ranks_each_answer_among_its_kind(tmp_path):
    task = load_user_task(write_easy_vqa_task(str(tmp_path / "task"), max_images=3))
    rows = [json.loads(line) for line in open(tmp_path / "task" / "test.jsonl")]
    from easy_vqa import get_test_questions

    expected = sum(image_id < 3 for image_id in get_test_questions()[2])
    assert task.data.spec.name == "easy-vqa-test" and task.metric == "hit@1" and len(rows) == expected == 27
    for row in rows:
        label, candidates = row["tgt_text"][0], set(row["tgt_text"])
        assert row["positives"] == [0] and len(candidates) == len(row["tgt_text"])
        assert candidates in (set(COLOURS), set(SHAPES), {"yes", "no"}) and label in candidates
    assert sorted(os.listdir(tmp_path / "task" / "images")) == ["0.png", "1.png", "2.png"]


def test_scene_caption_task_has_every_caption_as_candidate(tmp_path):
    task = load_user_task(write_caption_task(str(tmp_path / "captions"), num_images=4, seed=5))
    scenes = [json.loads(line) for line in open(tmp_path / "captions" / "test.jsonl")]
    assert task.data.spec.eval_type == "local" and len(scenes) == 4
    for row in scenes:
        assert len(set(row["tgt_text"])) == 24 and row["tgt_text"][0].startswith("a ")
        assert os.path.isfile(tmp_path / "captions" / row["qry_img_path"])
