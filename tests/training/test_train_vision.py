"""Vision alignment: what each objective trains (the tower alone, or with LoRA on the LM), on a tiny random-weight
Qwen2-VL TTE model."""

import json
import os
import re
from types import SimpleNamespace

import pytest
import torch
import yaml

from tests.training.helpers import TWO_PROCESSES, read_metrics, run_module, run_until_paused_then_kill, saved_weights
from training.data import PairDataset, load_sources
from training.scene_tasks import write_train_sources
from training.scenes import write_alignment_source
from training.train_vision import (CELL_COLOURS, CELL_SHAPES, AnswerCollator, CellCollator, CellReadout,
                                   caption_targets, cell_labels, main, regression_loss)
from tte.modeling_tte import TTEModel


@pytest.fixture(scope="module")
def scene_data(tmp_path_factory) -> dict:
    """Data configs of 12 rendered one-shape scenes: `answers` (questions and captions) and `captions` alone."""
    folder = tmp_path_factory.mktemp("scene-data")
    entry = write_alignment_source(str(folder / "scenes"), num_images=12, seed=0)
    configs = {}
    for name, rows in (("answers", "rows.jsonl"), ("captions", "captions.jsonl")):
        configs[name] = str(folder / f"{name}.yaml")
        source = {**entry, "name": name, "path": f"scenes/{rows}", "image_dir": "scenes"}
        yaml.safe_dump({"sources": [source]}, open(configs[name], "w"))
    return configs


@pytest.fixture(scope="module")
def grid_captions(tmp_path_factory) -> str:
    """Data config of the captions of 12 rendered 2x2 grid scenes (the cells objective's data)."""
    folder = tmp_path_factory.mktemp("grid-data")
    write_train_sources(str(folder / "train"), 12, seed=0)
    config = str(folder / "cells.yaml")
    source = {"name": "grid-captions", "path": "train/captions.jsonl", "image_dir": "train", "task": "vqa"}
    yaml.safe_dump({"sources": [source]}, open(config, "w"))
    return config


def _arguments(model: str, data: str, output: str, objective: str, steps: int, *extra: str) -> list[str]:
    return ["--model_path", model, "--data_config", data, "--output_dir", output, "--objective", objective,
            "--per_device_batch_size", "4", "--chunk_size", "4", "--max_steps", str(steps), "--logging_steps", "1",
            "--save_steps", "100", *extra]  # fmt: skip


def _changed(before: dict, after: dict) -> set[str]:
    return {key for key in before if not torch.equal(before[key], after[key])}


@pytest.mark.parametrize("objective", ["regression", "next_token", "cells"])
def test_only_the_vision_tower_trains(tmp_path, model_folder, scene_data, grid_captions, objective):
    start = model_folder("unified")
    data = {"regression": scene_data["captions"], "next_token": scene_data["answers"],
            "cells": grid_captions}[objective]
    exported = main(_arguments(start, data, str(tmp_path / "run"), objective, 3, "--learning_rate", "1e-3"))
    changed = _changed(saved_weights(start), saved_weights(exported))
    assert changed and all(key.startswith("backbone.visual.") for key in changed), sorted(changed)[:5]
    assert TTEModel.from_pretrained(exported).config.variant == "unified"


def test_lora_trains_the_tower_and_the_language_models_projections_only(tmp_path, model_folder, scene_data):
    """With --lora the LM learns to read what the tower writes: both change, and nothing else does."""
    start = model_folder("unified")
    exported = main(_arguments(start, scene_data["answers"], str(tmp_path / "run"), "next_token", 3,
                               "--learning_rate", "1e-3", "--lora", "--lora_dropout", "0"))  # fmt: skip
    changed = _changed(saved_weights(start), saved_weights(exported))
    tower = {key for key in changed if key.startswith("backbone.visual.")}
    language = changed - tower
    assert tower and language, sorted(changed)[:5]
    projection = re.compile(r"\.layers\.\d+\.(self_attn|mlp)\.\w+_proj\.weight$")
    assert all(projection.search(key) for key in language), sorted(language)
    assert set(saved_weights(exported)) == set(saved_weights(start))  # merged: no adapter tensors are left


@pytest.mark.parametrize("objective", ["regression", "cells"])
def test_lora_without_the_language_model_in_the_objective_is_refused(tmp_path, model_folder, scene_data, objective):
    with pytest.raises(ValueError, match=f"--lora needs --objective next_token: the {objective} objective"):
        main(_arguments(model_folder("unified"), scene_data["captions"], str(tmp_path / "run"), objective, 1,
                        "--lora"))  # fmt: skip


def test_regression_loss_falls(tmp_path, model_folder, scene_data):
    output = str(tmp_path / "run")
    main(_arguments(model_folder("unified"), scene_data["captions"], output, "regression", 40,
                    "--per_device_batch_size", "12", "--learning_rate", "5e-3"))  # fmt: skip
    losses = [record["regression_loss"] for record in read_metrics(output)]
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5, losses


def test_regression_killed_and_resumed_equals_an_uninterrupted_run(tmp_path, model_folder, scene_data):
    start, data = model_folder("unified"), scene_data["captions"]
    straight = main(_arguments(start, data, str(tmp_path / "straight"), "regression", 6, "--save_steps", "3"))
    arguments = _arguments(start, data, str(tmp_path / "resumed"), "regression", 6, "--save_steps", "3")
    run_until_paused_then_kill("training.train_vision", arguments, pause_after=3)  # SIGKILL after step 3's checkpoint
    resumed = main([*arguments, "--resume"])
    assert _changed(saved_weights(straight), saved_weights(resumed)) == set()


def test_regression_on_two_processes_matches_one_process(tmp_path, model_folder, scene_data):
    """The same global batch of 8 (4 per process). Each process scales its MSE by its own images' mean target norm
    (see `regression_loss`), so the curves agree closely, not exactly: the first step's loss to 5e-4, later ones to 1 %."""
    start, data = model_folder("unified"), scene_data["captions"]
    single = _arguments(start, data, str(tmp_path / "single"), "regression", 4, "--per_device_batch_size", "8")
    main(single)
    double = _arguments(start, data, str(tmp_path / "double"), "regression", 4, "--per_device_batch_size", "4")
    run_module("training.train_vision", double, launcher=TWO_PROCESSES)
    losses = [[record["regression_loss"] for record in read_metrics(str(tmp_path / name))] for name in ("single", "double")]
    assert losses[1][0] == pytest.approx(losses[0][0], abs=5e-4)
    assert losses[1] == pytest.approx(losses[0], rel=1e-2) and losses[0][-1] < losses[0][0]


def test_cells_loss_falls(tmp_path, model_folder, grid_captions):
    output = str(tmp_path / "run")
    main(_arguments(model_folder("unified"), grid_captions, output, "cells", 30, "--per_device_batch_size", "12",
                    "--learning_rate", "5e-3"))  # fmt: skip
    losses = [record["cells_loss"] for record in read_metrics(output)]
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5, losses


def test_cells_killed_and_resumed_equals_an_uninterrupted_run(tmp_path, model_folder, grid_captions):
    """The classifiers are not exported, but they are in the checkpoint: without them the resumed tower would differ."""
    start = model_folder("unified")
    straight = main(_arguments(start, grid_captions, str(tmp_path / "straight"), "cells", 6, "--save_steps", "3"))
    arguments = _arguments(start, grid_captions, str(tmp_path / "resumed"), "cells", 6, "--save_steps", "3")
    run_until_paused_then_kill("training.train_vision", arguments, pause_after=3)
    resumed = main([*arguments, "--resume"])
    assert _changed(saved_weights(straight), saved_weights(resumed)) == set()


def test_the_cells_objective_is_refused_under_fsdp(tmp_path, monkeypatch, model_folder, grid_captions):
    """FSDP's export gathers the model's own weights; the classifiers live outside it, so the run stops first."""
    from accelerate.utils import DistributedType

    import training.train_vision as train_vision

    fsdp = SimpleNamespace(distributed_type=DistributedType.FSDP)
    monkeypatch.setattr(train_vision, "start_run", lambda settings: fsdp)
    with pytest.raises(ValueError, match="the cells objective trains classifiers outside the model, which FSDP"):
        main(_arguments(model_folder("unified"), grid_captions, str(tmp_path / "run"), "cells", 1))


def test_cell_labels_follow_the_raster_order_with_empty_cells_as_class_zero():
    labels = cell_labels("red circle at top right, gray triangle at bottom left")
    assert labels == [(0, 0), (CELL_COLOURS.index("red"), CELL_SHAPES.index("circle")),
                      (CELL_COLOURS.index("gray"), CELL_SHAPES.index("triangle")), (0, 0)]  # fmt: skip


def test_the_cells_collator_names_a_row_without_a_grid_caption(model_folder, scene_data):
    processor = TTEModel.from_pretrained(model_folder("unified")).processor
    dataset = PairDataset(load_sources(scene_data["captions"]))  # one-shape captions: "a red circle"
    with pytest.raises(ValueError, match=r"source 'captions' row 0 .*: the cells objective needs a grid scene's "
                                         r"caption as the positive: .* is not '<colour> <shape> at <cell>'"):
        CellCollator(processor)([dataset[0]])


def test_the_cells_readout_refuses_a_tower_without_one_token_per_cell():
    five_tokens = lambda pixels, grid_thw: SimpleNamespace(pooler_output=torch.zeros(5, 8))  # noqa: E731
    with pytest.raises(ValueError, match="needs 4 merged visual tokens per image, one per cell .* 1 images gave 5"):
        CellReadout(five_tokens, 8)(torch.zeros(16, 3), torch.tensor([[1, 4, 4]]))


def test_answer_collator_labels_only_the_answer_and_the_stop_token(model_folder, scene_data):
    model = TTEModel.from_pretrained(model_folder("unified"))
    processor = model.processor
    dataset = PairDataset(load_sources(scene_data["answers"]))
    examples = [dataset[index] for index in range(4)]  # colour, shape, yes/no, caption of image 0
    (chunk,) = AnswerCollator(processor, chunk_size=4)(examples)
    for row, example in enumerate(examples):
        labels = chunk["labels"][row][chunk["labels"][row] != -100].tolist()
        answer = processor.tokenizer(example.inputs["positive"]["text"], add_special_tokens=False)["input_ids"]
        assert labels == answer + [processor.tokenizer.eos_token_id]
    assert int((chunk["input_ids"] == processor.image_token_id).sum()) == 4 * 4  # 4 visual tokens per image


def test_caption_targets_cut_or_pad_with_the_last_token():
    embeddings = torch.nn.Embedding(10, 2)
    with torch.no_grad():
        embeddings.weight.copy_(torch.arange(20, dtype=torch.float).view(10, 2))
    targets = caption_targets([[1, 2], [3, 4, 5, 6, 7]], embeddings, tokens_per_image=4)
    assert targets[:, 0].tolist() == [2, 4, 4, 4, 6, 8, 10, 12]


def test_regression_loss_is_zero_only_at_the_target():
    target = torch.randn(8, 16)
    assert regression_loss(target.clone(), target).item() == pytest.approx(0.0, abs=1e-6)
    assert regression_loss(2 * target, target).item() == pytest.approx(1.0, abs=1e-5)  # MSE term only: cosine is 1
    assert regression_loss(-target, target).item() == pytest.approx(4.0 + 2.0, abs=1e-5)


def test_bad_objective_and_a_text_answer_are_required(tmp_path, model_folder, scene_data):
    with pytest.raises(ValueError, match="--objective 'contrastive' is not one of"):
        main(_arguments(model_folder("unified"), scene_data["answers"], str(tmp_path / "a"), "contrastive", 1))
    rows = tmp_path / "image-answers.jsonl"
    rows.write_text(json.dumps({"qry": "what is it?", "qry_image_path": "images/000000.png",
                                "pos_image_path": "images/000001.png"}) + "\n" * 1)  # fmt: skip
    scenes = os.path.join(os.path.dirname(scene_data["answers"]), "scenes")
    config = tmp_path / "bad.yaml"
    yaml.safe_dump({"sources": [{"name": "bad", "path": str(rows), "image_dir": scenes}]}, open(config, "w"))
    with pytest.raises(ValueError, match=r"source 'bad' row 0 .*: the positive must be a text answer"):
        main(_arguments(model_folder("unified"), str(config), str(tmp_path / "b"), "next_token", 1,
                        "--per_device_batch_size", "1", "--chunk_size", "1"))  # fmt: skip
