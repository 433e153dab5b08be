"""Training rows with videos (`qry_video_path`, `pos_video_path`, `neg_video_path`: frame folders and a video file)
through every stage that reads pair data: trace generation, reasoner SFT, embedder, head and gate training, and
vision alignment's answer objective (its caption regression is for images, and says so)."""

import json
import math
import os

import pytest
import yaml
from PIL import Image, ImageDraw

from tests.test_video import write_video
from training.tiny_models import build_processor
from tests.training.helpers import read_metrics, train_arguments
from training.synthetic_pairs import COLOURS, write_trace_store
from training.data import PairDataset, load_sources
from training.generate_traces import main as generate_traces
from training.traces import TraceStore
from training.train_embedder import main as train_embedder
from training.train_gate import main as train_gate
from training.train_head import main as train_head
from training.train_reasoner import main as train_reasoner
from training.train_vision import main as train_vision


pytest.importorskip("av")


def moving_square(folder, colour: str, direction: str) -> None:
    """4 frames of a square crossing a white 56x56 picture."""
    os.makedirs(folder)
    for step in range(4):
        left = 8 + 10 * step if direction == "right" else 38 - 10 * step
        image = Image.new("RGB", (56, 56), "white")
        ImageDraw.Draw(image).rectangle((left, 20, left + 12, 32), fill=colour)
        image.save(os.path.join(folder, f"frame_{step}.png"))


@pytest.fixture(scope="module")
def video_data(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("video-pairs")
    rows = []
    for colour in COLOURS:
        for direction in ("left", "right"):
            moving_square(folder / "media" / f"{colour}-{direction}", colour, direction)
            rows.append({"qry": "what happens ?", "qry_video_path": f"{colour}-{direction}",
                         "pos_text": f"{colour} square moves {direction}",
                         "neg_text": ["a still picture"]})  # fmt: skip
    write_video(str(folder / "media" / "clip.mp4"), count=8, size=(56, 56))
    rows.append({"qry": "what happens ?", "qry_video_path": "clip.mp4", "pos_text": "the screen brightens",
                 "neg_text": ["the screen darkens"]})  # fmt: skip
    rows.append({"qry": "find the red square moving left", "pos_video_path": "red-left",
                 "neg_video_path": ["red-right"]})  # fmt: skip
    with open(folder / "videos.jsonl", "w") as handle:
        handle.writelines(json.dumps(row) + "\n" for row in rows)
    config = folder / "data.yaml"  # the only source: every training batch holds videos
    config.write_text(yaml.safe_dump({"sources": [{"name": "videos", "path": "videos.jsonl", "image_dir": "media",
                                                   "task": "vqa"}]}))  # fmt: skip
    return str(config)


def test_video_columns_become_video_inputs(video_data):
    dataset = PairDataset(load_sources(video_data))
    examples = [dataset[index] for index in range(len(dataset))]
    assert len(examples) == 10
    assert os.path.isdir(examples[0].inputs["query"]["video"]) and "image" not in examples[0].inputs["query"]
    assert examples[8].inputs["query"]["video"].endswith("clip.mp4")
    assert examples[9].inputs["positive"]["video"].endswith("red-left")
    assert examples[9].inputs["negative-0"]["video"].endswith("red-right")


def test_every_training_stage_reads_video_rows(tmp_path, model_folder, video_data):
    traces = write_trace_store(tmp_path / "teacher-traces", video_data)

    def finite_losses(output: str, name: str) -> bool:
        losses = [record[name] for record in read_metrics(output)]
        return len(losses) == 2 and all(math.isfinite(loss) for loss in losses)

    for stage, variant, loss in ((train_embedder, "teacher", "contrastive_loss"),
                                 (train_head, "unified", "contrastive_loss"),
                                 (train_reasoner, "student", "lm_loss")):  # fmt: skip
        output = str(tmp_path / stage.__module__)
        exported = stage(train_arguments(model_folder(variant), video_data, traces, output, "--max_steps", "2"))
        assert os.path.isfile(os.path.join(exported, "config.json")) and finite_losses(output, loss), stage.__module__
    folder = os.path.dirname(video_data)  # vision alignment's answers are texts: the rows with a text positive
    with open(os.path.join(folder, "videos.jsonl")) as handle:
        answers = [line for line in handle if "pos_text" in json.loads(line)]
    with open(os.path.join(folder, "answers.jsonl"), "w") as handle:
        handle.writelines(answers)
    answers_config = os.path.join(folder, "answers.yaml")
    with open(answers_config, "w") as handle:
        yaml.safe_dump({"sources": [{"name": "videos", "path": "answers.jsonl", "image_dir": "media", "task": "vqa"}]},
                       handle)  # fmt: skip
    vision = ["--model_path", model_folder("unified"), "--data_config", answers_config, "--per_device_batch_size", "4",
              "--chunk_size", "4", "--max_steps", "2", "--logging_steps", "1", "--save_steps", "100"]  # fmt: skip
    output = str(tmp_path / "vision-answers")
    train_vision([*vision, "--output_dir", output, "--objective", "next_token"])
    assert finite_losses(output, "lm_loss")
    with pytest.raises(ValueError, match=r"source 'videos' row \d+ .* the regression objective aligns images with "
                                         r"their captions; this row's query is a video"):  # fmt: skip
        train_vision([*vision, "--output_dir", str(tmp_path / "vision-regression"), "--objective", "regression"])
    summary = tmp_path / "gate" / "summary.json"
    train_gate(["--model_path", model_folder("unified"), "--data_config", video_data, "--output_dir",
                str(tmp_path / "gate"), "--max_queries", "8", "--steps", "5", "--max_new_tokens", "4"])  # fmt: skip
    assert json.loads(summary.read_text())["queries"] == {"fit": 6, "held_out": 2}
    store = str(tmp_path / "generated")
    generate_traces(["--model_path", model_folder("unified"), "--data_config", video_data, "--output_dir", store,
                     "--max_new_tokens", "4", "--batch_size", "8"])  # fmt: skip
    dataset = PairDataset(load_sources(video_data))
    assert set(TraceStore(store).read()) == {(dataset[i].id, "query") for i in range(len(dataset))}
    # which frames the reasoner saw is part of the store's key: another sampling is another store
    sampling = TraceStore(store).manifest["decoding"]["video_sampling"]
    assert sampling == build_processor("qwen2_vl").video_sampling.to_dict()
