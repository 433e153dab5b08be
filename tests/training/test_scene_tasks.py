"""Scene tasks of the variant comparison: grid scenes, correct answers, held-out splits and the oracle's traces."""

import json
import os
import random
import re

import numpy as np
import pytest

from training.data import PairDataset, load_sources
from training.scene_tasks import (
    CELLS,
    HELD_OUT,
    KINDS,
    ORACLE_REASONER,
    ask,
    caption,
    cell_of,
    distractors,
    grid_scene,
    parse_caption,
    split_fingerprints,
    write_one_shape_sft,
    write_test_tasks,
    write_train_sources,
)
from training.scenes import CAPTION_QUESTION, COLOURS, Scene, SceneObject, render, write_alignment_source
from training.traces import TraceStore
from tte_eval.user_tasks import load_user_tasks


def scene_of(*placed) -> Scene:
    """A scene from `(colour, shape, cell)` triples, each shape a 20-px box centred in its cell."""
    objects = []
    for colour, shape, cell in placed:
        left, top = (cell % 2) * 32 + 6, (cell // 2) * 32 + 6
        objects.append(SceneObject(colour, shape, (left, top, left + 20, top + 20)))
    return Scene(64, (240, 240, 240), objects)


def test_grid_scenes_hold_one_distinct_shape_per_cell_and_render_it_there():
    rng = random.Random(0)
    for _ in range(50):
        scene = grid_scene(rng, rng.randint(1, 3))
        cells = [cell_of(obj) for obj in scene.objects]
        assert len(set(cells)) == len(cells) and cells == sorted(cells)
        assert len({obj.name for obj in scene.objects}) == len(scene.objects)
        assert not {(obj.colour, obj.shape) for obj in scene.objects} & set(HELD_OUT)
        pixels = np.asarray(render(scene))
        for obj in scene.objects:
            x, y = (round(v) for v in obj.centre)
            if obj.shape != "triangle":  # a triangle's box centre can sit on its edge
                assert tuple(pixels[y, x]) == COLOURS[obj.colour]


@pytest.mark.parametrize("question, answer", [
    ("what is left of the red circle?", "a blue triangle"),
    ("what is below the red circle?", "a green rectangle"),
    ("what is above the blue triangle?", None),  # off the grid: never asked
])  # fmt: skip
def test_relation_answers_follow_the_grid(question, answer):
    scene = scene_of(("blue", "triangle", 0), ("red", "circle", 1), ("green", "rectangle", 3))
    asked = {}
    for seed in range(300):
        query = ask("relation", scene, random.Random(seed))
        asked[query.text] = query
    if answer is None:
        assert question not in asked
        return
    assert asked[question].answer == answer
    assert asked[question].trace.startswith("<think>") and f"The answer is {answer}." in asked[question].trace
    assert asked["what is below the blue triangle?"].answer == "nothing"


def test_counts_colours_grounding_and_classes_are_right():
    scene = scene_of(("blue", "circle", 0), ("red", "circle", 2), ("red", "triangle", 3))
    answers = {}
    for kind in ("colour", "count", "grounding", "classification"):
        for seed in range(200):
            query = ask(kind, scene, random.Random(seed))
            answers[query.text] = query.answer
    assert answers["how many circles are there?"] == "two"
    assert answers["how many red shapes are there?"] == "two"
    assert answers["how many shapes are there?"] == "three"
    assert answers["what color is the shape at the bottom right?"] == "red"
    assert answers["the shape above the red circle"] == "a blue circle"
    assert answers["the shape right of the red circle"] == "a red triangle"
    assert answers[""] == "circles and triangles"
    assert caption(scene) == "blue circle at top left, red circle at bottom left, red triangle at bottom right"


def test_distractors_change_one_detail_each():
    scene = scene_of(("blue", "circle", 0), ("red", "triangle", 3))
    others = distractors(scene, random.Random(1), 9)
    captions = [caption(other) for other in others]
    assert len(set(captions)) == 9 and caption(scene) not in captions
    for other in others:
        before = {(o.colour, o.shape, cell_of(o)) for o in scene.objects}
        after = {(o.colour, o.shape, cell_of(o)) for o in other.objects}
        assert len(before ^ after) in (1, 2)  # one shape added or removed, or one changed (old out, new in)


def test_training_sources_load_and_every_row_has_an_oracle_trace(tmp_path):
    sources = write_train_sources(str(tmp_path), 12, seed=0)
    config = tmp_path / "data.yaml"
    config.write_text(json.dumps({"sources": sources}))
    dataset = PairDataset(load_sources(str(config)))
    store = TraceStore(str(tmp_path / "oracle-traces"))
    traces = store.read()
    assert store.manifest["reasoner"] == ORACLE_REASONER and "oracle" in ORACLE_REASONER
    ids = [dataset[i].id for i in range(len(dataset))]
    assert {(i, "query") for i in ids} == set(traces)
    assert {source["task"] for source in sources} == {family for family, _, _ in KINDS.values()}
    held_out = {f"{colour} {shape}" for colour, shape in HELD_OUT}
    for line in (tmp_path / "perception.jsonl").read_text().splitlines():
        row = json.loads(line)
        assert not any(name in row["pos_text"] for name in held_out)


def test_captions_parse_back_to_their_scenes_and_bad_parts_are_named(tmp_path):
    rng = random.Random(0)
    for _ in range(50):
        scene = grid_scene(rng, rng.randint(1, 4))
        expected = {CELLS[cell_of(obj)]: (obj.colour, obj.shape) for obj in scene.objects}
        assert parse_caption(caption(scene)) == expected
    for bad, part in (("red circle at top left, a blue square at bottom left", "a blue square at bottom left"),
                      ("red circle at top left, blue circle at top left", "blue circle at top left"),
                      ("nothing", "nothing")):  # fmt: skip
        with pytest.raises(ValueError, match=re.escape(repr(part))):
            parse_caption(bad)


def test_the_captions_file_holds_each_scenes_caption_row_once(tmp_path):
    write_train_sources(str(tmp_path), 12, seed=0)
    perception = [json.loads(line) for line in (tmp_path / "perception.jsonl").read_text().splitlines()]
    captions = [json.loads(line) for line in (tmp_path / "captions.jsonl").read_text().splitlines()]
    assert captions == [row for row in perception if row["id"].endswith("-describe")] and len(captions) == 12
    assert all(parse_caption(row["pos_text"]) for row in captions)


def test_one_shape_sft_rows_ask_as_the_easy_vqa_evaluation_does_and_join_the_oracle_store(tmp_path):
    write_alignment_source(str(tmp_path / "scenes"), 5, seed=0)
    write_train_sources(str(tmp_path / "train"), 3, seed=0)
    scene_traces = TraceStore(str(tmp_path / "train" / "oracle-traces")).read()
    sources = write_one_shape_sft(str(tmp_path / "scenes"), 4, str(tmp_path / "train" / "oracle-traces"))
    config = tmp_path / "sft.yaml"
    config.write_text(json.dumps({"sources": sources}))
    examples = PairDataset(load_sources(str(config)))
    traces = TraceStore(str(tmp_path / "train" / "oracle-traces")).read()
    assert [(s["name"], s["task"], s["weight"]) for s in sources] == [("one-shape-questions", "vqa", 12.0),
                                                                      ("one-shape-descriptions", "retrieval", 4.0)]
    graphs = [json.loads(line) for line in (tmp_path / "scenes" / "scenes.jsonl").read_text().splitlines()]
    images = {graph["image"]: graph["objects"][0] for graph in graphs[:4]}
    for i in range(len(examples)):
        example = examples[i]
        row = example.inputs["query"]
        assert example.id.startswith("one-shape-") and (example.id, "query") not in scene_traces
        shape = images[os.path.relpath(row["image"], tmp_path / "scenes")]
        trace = traces[(example.id, "query")]
        assert trace.startswith(f"<think>The image shows a {shape['colour']} {shape['shape']}.</think> The answer is ")
        if example.id.endswith("-caption"):  # as training.eval_easy_vqa asks for a description
            assert row.get("instruction") == CAPTION_QUESTION and not row.get("text")
            assert trace.endswith(f"The answer is a {shape['colour']} {shape['shape']}.")
        else:
            assert row["text"].endswith("?") and not row.get("instruction")
    assert set(scene_traces.items()) <= set(traces.items())  # the scene tasks' traces are kept


def test_writing_the_data_again_after_a_crash_adds_no_duplicate_trace(tmp_path):
    # The recipe writes the data again when a run stopped before its last data file: the oracle's store then holds
    # the traces already, and reading it must not find any twice.
    write_alignment_source(str(tmp_path / "scenes"), 3, seed=0)
    store = str(tmp_path / "train" / "oracle-traces")
    write_train_sources(str(tmp_path / "train"), 3, seed=0)
    write_one_shape_sft(str(tmp_path / "scenes"), 3, store)
    first = TraceStore(store).read()
    write_train_sources(str(tmp_path / "train"), 3, seed=0)
    write_one_shape_sft(str(tmp_path / "scenes"), 3, store)
    assert TraceStore(store).read() == first and len(TraceStore(store).cache) == len(first)
    write_test_tasks(str(tmp_path / "test"), 2, seed=1)
    test_traces = TraceStore(str(tmp_path / "test" / "oracle-traces")).read()
    write_test_tasks(str(tmp_path / "test"), 2, seed=1)
    assert TraceStore(str(tmp_path / "test" / "oracle-traces")).read() == test_traces


def test_a_split_drawn_with_exclude_shares_no_query_with_the_excluded_split(tmp_path):
    test = str(tmp_path / "test")
    write_test_tasks(test, rows_per_task=3, seed=4)
    excluded = split_fingerprints(test)
    write_test_tasks(str(tmp_path / "same"), rows_per_task=3, seed=4)  # the same seed draws the same queries
    assert split_fingerprints(str(tmp_path / "same")) == excluded and len(excluded) > len(KINDS)
    write_test_tasks(str(tmp_path / "dev"), rows_per_task=3, seed=4, exclude=frozenset(excluded))
    dev = split_fingerprints(str(tmp_path / "dev"))
    assert len(dev) > len(KINDS) and not dev & excluded
    assert [len(task.data.rows) for task in load_user_tasks(str(tmp_path / "dev"))] == [3] * len(KINDS)


def test_test_tasks_hold_out_combinations_and_rank_the_right_answer_first(tmp_path):
    folders = write_test_tasks(str(tmp_path), rows_per_task=4, seed=5)
    assert len(folders) == len(KINDS)
    traces = TraceStore(str(tmp_path / "oracle-traces")).read()
    held_out = [f"{colour} {shape}" for colour, shape in HELD_OUT]
    for task in load_user_tasks(str(tmp_path)):
        name = task.data.spec.name
        assert task.ecr_task == KINDS[name.removeprefix("scene-")][0]
        for row in task.data.rows:
            trace = traces[(f"{name}/{row.row_id}", "query")]
            assert any(combo in trace for combo in held_out), trace  # every test scene holds a held-out combination
            positive = row.candidates[0]
            assert positive.cand_id in row.labels and len(row.labels) == 1
            if positive.item.text:  # text answers: the oracle's final line states the positive
                assert positive.item.text in trace.split("</think>")[1]
