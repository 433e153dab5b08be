"""Embedder training end to end on a tiny random-weight TTE_t model and the synthetic colour/thing pairs."""

import os

import pytest
import torch
from transformers import AutoModel

from tests.training.helpers import TWO_PROCESSES, read_metrics, run_module, run_until_paused_then_kill, saved_weights, train_arguments
from training.checkpoint import latest_checkpoint
from training.train_embedder import main


def _losses(output_dir: str) -> list[float]:
    return [record["contrastive_loss"] for record in read_metrics(output_dir)]


def test_main_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert "--num_hard_negatives" in capsys.readouterr().out


def test_train_embedder_loss_decreases_and_export_reloads(tmp_path, model_folder, pair_data, trace_store):
    output = str(tmp_path / "run")
    exported = main(train_arguments(model_folder("teacher"), pair_data, trace_store, output, "--max_steps", "30",
                               "--num_hard_negatives", "1"))  # fmt: skip
    losses = _losses(output)
    assert len(losses) == 30
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5
    model = AutoModel.from_pretrained(exported, trust_remote_code=True)
    before = AutoModel.from_pretrained(model_folder("teacher"), trust_remote_code=True)
    vectors = model.embed(["red cat", "what colour is the dog ? blue"], think=False, convert_to_tensor=True)
    assert vectors.shape == (2, 32)
    assert torch.allclose(vectors.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert not torch.allclose(vectors, before.embed(["red cat", "what colour is the dog ? blue"], think=False,
                                                    convert_to_tensor=True), atol=1e-3)  # fmt: skip


def test_train_embedder_merges_dora_adapters_on_export(tmp_path, model_folder, pair_data, trace_store):
    exported = main(train_arguments(model_folder("teacher"), pair_data, trace_store, str(tmp_path / "run"),
                               "--max_steps", "2", "--lora", "--use_dora", "--lora_dropout", "0.0"))  # fmt: skip
    weights, initial = saved_weights(exported), saved_weights(model_folder("teacher"))
    assert weights.keys() == initial.keys()  # plain weights: no lora_A / lora_B / magnitude left
    name = "backbone.language_model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(weights[name], initial[name])  # the adapter was folded into the projection
    vision = "backbone.visual.patch_embed.proj.weight"
    assert torch.equal(weights[vision], initial[vision])
    assert AutoModel.from_pretrained(exported, trust_remote_code=True).embed("red cat", think=False).shape == (1, 32)


def test_train_embedder_lora_trains_the_backbones_vision_tower_when_asked(tmp_path, model_folder, pair_data,
                                                                         trace_store):  # fmt: skip
    exported = main(train_arguments(model_folder("student"), pair_data, trace_store, str(tmp_path / "run"),
                               "--max_steps", "4", "--lora", "--freeze_vision", "false"))  # fmt: skip
    weights, initial = saved_weights(exported), saved_weights(model_folder("student"))
    changed = {name for name in initial if not torch.equal(weights[name], initial[name])}
    assert "backbone.visual.patch_embed.proj.weight" in changed
    assert not any(name.startswith("reasoner.") for name in changed)  # the reasoner's own tower stays as it was


def test_train_embedder_refuses_an_existing_run_without_resume(tmp_path, model_folder, pair_data, trace_store):
    arguments = train_arguments(model_folder("teacher"), pair_data, trace_store, str(tmp_path / "run"), "--max_steps", "1")
    main(arguments)
    with pytest.raises(ValueError, match="holds a checkpoint; pass --resume"):
        main(arguments)


def test_train_embedder_rejects_a_unified_model(tmp_path, model_folder, pair_data, trace_store):
    with pytest.raises(ValueError, match="train it with training.train_head"):
        main(train_arguments(model_folder("unified"), pair_data, trace_store, str(tmp_path / "run"), "--max_steps", "1"))


def test_train_embedder_resumes_exactly_after_sigkill(tmp_path, model_folder, pair_data, trace_store):
    """LoRA dropout is on, so an exact match needs the restored RNG states as well as weights and optimizer."""
    def arguments(output):
        return train_arguments(model_folder("teacher"), pair_data, trace_store, output, "--max_steps", "8",
                          "--save_steps", "3", "--lora", "--lora_dropout", "0.2")

    reference, interrupted = str(tmp_path / "reference"), str(tmp_path / "interrupted")
    main(arguments(reference))
    run_until_paused_then_kill("training.train_embedder", arguments(interrupted), pause_after=5)
    assert latest_checkpoint(interrupted).endswith("step-00000003")
    assert [record["step"] for record in read_metrics(interrupted)] == [1, 2, 3, 4, 5]
    main(arguments(interrupted) + ["--resume"])
    assert [record["step"] for record in read_metrics(interrupted)] == list(range(1, 9))  # steps 4, 5 redone once
    assert _losses(interrupted) == pytest.approx(_losses(reference), abs=1e-6)
    resumed, expected = (saved_weights(os.path.join(folder, "model")) for folder in (interrupted, reference))
    assert max((resumed[name] - expected[name]).abs().max().item() for name in expected) <= 1e-6


def test_train_embedder_two_processes_match_one_process(tmp_path, model_folder, pair_data, trace_store):
    """The same global batch of 8 (4 per process) gives the same loss curve: gathered targets, loss x world size."""
    single, double = str(tmp_path / "single"), str(tmp_path / "double")
    common = ["--max_steps", "6", "--num_hard_negatives", "1", "--save_steps", "100"]
    main(train_arguments(model_folder("teacher"), pair_data, trace_store, single, *common))
    arguments = train_arguments(model_folder("teacher"), pair_data, trace_store, double, *common)
    arguments[arguments.index("--per_device_batch_size") + 1] = "4"
    run_module("training.train_embedder", arguments, launcher=TWO_PROCESSES)
    assert _losses(double) == pytest.approx(_losses(single), abs=1e-4)
    assert _losses(single)[-1] < _losses(single)[0]  # it trained: later steps saw updated weights


def test_top_layers_trains_only_the_last_layers_and_the_final_norm(tmp_path, model_folder, pair_data, trace_store):
    # The variants' shared embedder recipe: the same trainable capacity as a unified model's N-layer head.
    exported = main(train_arguments(model_folder("teacher"), pair_data, trace_store, str(tmp_path / "run"),
                                    "--max_steps", "2", "--top_layers", "1", "--learning_rate", "1e-2"))  # fmt: skip
    weights, initial = saved_weights(exported), saved_weights(model_folder("teacher"))
    changed = {name for name in weights if not torch.equal(weights[name], initial[name])}
    last = max(int(name.split(".layers.")[1].split(".")[0]) for name in weights if ".layers." in name and "visual" not in name)
    assert changed, "nothing trained"
    assert all(f"language_model.layers.{last}." in name or name.startswith("backbone.language_model.norm.")
               for name in changed), sorted(changed)  # fmt: skip
    assert any(name.startswith("backbone.language_model.norm.") for name in changed)


def test_top_layers_refuses_lora_and_too_many_layers(tmp_path, model_folder, pair_data, trace_store):
    with pytest.raises(ValueError, match="does not combine with --lora"):
        main(train_arguments(model_folder("teacher"), pair_data, trace_store, str(tmp_path / "a"), "--top_layers", "1",
                             "--lora"))  # fmt: skip
    with pytest.raises(ValueError, match="--top_layers 99 exceeds the backbone's"):
        main(train_arguments(model_folder("teacher"), pair_data, trace_store, str(tmp_path / "b"), "--top_layers", "99",
                             "--max_steps", "1"))  # fmt: skip
