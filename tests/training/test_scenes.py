"""The scene generator: deterministic scenes, faithful rendering, and MMEB-train rows that training/data.py reads."""

import json
import random

import numpy as np
import pytest

from training.data import PairDataset, Source
from training.scenes import COLOURS, SHAPES, describe, random_scene, render, single_object_questions, write_alignment_source


def test_scenes_are_deterministic_in_the_seed():
    first = [random_scene(random.Random(3), num_objects=3) for _ in range(2)]
    assert first[0] == first[1]
    assert random_scene(random.Random(4), num_objects=3) != first[0]
    assert np.array_equal(np.asarray(render(first[0])), np.asarray(render(first[1])))


@pytest.mark.parametrize("num_objects", [1, 2, 3, 4])
def test_objects_do_not_overlap_and_stay_inside(num_objects):
    rng = random.Random(num_objects)
    for _ in range(20):
        scene = random_scene(rng, num_objects=num_objects)
        assert len(scene.objects) == num_objects
        boxes = [obj.box for obj in scene.objects]
        for i, a in enumerate(boxes):
            assert 0 <= a[0] < a[2] <= scene.size and 0 <= a[1] < a[3] <= scene.size
            for b in boxes[i + 1 :]:
                assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]
        assert [obj.centre for obj in scene.objects] == sorted(obj.centre for obj in scene.objects)  # left to right


def test_render_draws_each_object_in_its_colour_on_the_background():
    scene = random_scene(random.Random(11), num_objects=2)
    pixels = np.asarray(render(scene))
    assert tuple(pixels[0, 0]) == scene.background or any(obj.box[:2] == (0, 0) for obj in scene.objects)
    for obj in scene.objects:
        cx, cy = (round(v) for v in obj.centre)
        if obj.shape == "triangle":
            cy = (obj.box[1] + 3 * obj.box[3]) // 4  # the apex is thin: look low in the box
        assert tuple(pixels[cy, cx]) == COLOURS[obj.colour], obj


def test_describe_and_questions_follow_the_scene():
    scene = random_scene(random.Random(5), num_objects=1)
    (obj,) = scene.objects
    assert describe(scene) == f"a {obj.colour} {obj.shape}"
    pairs = single_object_questions(scene, random.Random(0))
    assert pairs[0][1] == obj.colour and pairs[1][1] == obj.shape and pairs[2][1] in ("yes", "no")
    two = random_scene(random.Random(6), num_objects=2)
    assert describe(two) == f"a {two.objects[0].name} and a {two.objects[1].name}"


def test_random_scene_refuses_bad_counts():
    with pytest.raises(ValueError, match="num_objects must be 1..4, got 5"):
        random_scene(random.Random(0), num_objects=5)


def test_alignment_source_is_valid_training_data(tmp_path):
    entry = write_alignment_source(str(tmp_path / "scenes"), num_images=6, seed=1)
    dataset = PairDataset([Source(**{**entry, "path": str(tmp_path / "scenes" / "rows.jsonl"),
                                     "image_dir": str(tmp_path / "scenes")})])  # fmt: skip
    assert len(dataset) == 24  # colour, shape, yes/no and caption per image
    scenes = [json.loads(line) for line in open(tmp_path / "scenes" / "scenes.jsonl")]
    colour_row = dataset[0]
    assert colour_row.id == "000000-colour" and colour_row.inputs["positive"]["text"] == scenes[0]["objects"][0]["colour"]
    captions = [json.loads(line) for line in open(tmp_path / "scenes" / "captions.jsonl")]
    assert [row["pos_text"] for row in captions] == [f"a {s['objects'][0]['colour']} {s['objects'][0]['shape']}"
                                                     for s in scenes]  # fmt: skip
    assert all(s["objects"][0]["shape"] in SHAPES for s in scenes)
    again = write_alignment_source(str(tmp_path / "again"), num_images=6, seed=1)
    assert again["path"] == entry["path"]
    assert open(tmp_path / "again" / "rows.jsonl").read() == open(tmp_path / "scenes" / "rows.jsonl").read()
