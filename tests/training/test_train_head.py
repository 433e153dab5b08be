"""Unified head training (TTE_u stage 2) on a tiny random-weight unified model."""

import pytest
import torch
from transformers import AutoModel

from tests.training.helpers import read_metrics, saved_weights, train_arguments
from training.train_head import main


def test_main_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert "--temperature" in capsys.readouterr().out


def test_train_head_loss_decreases_and_only_the_head_changes(tmp_path, model_folder, pair_data, trace_store):
    output = str(tmp_path / "run")
    exported = main(train_arguments(model_folder("unified"), pair_data, trace_store, output, "--max_steps", "30"))
    losses = [record["contrastive_loss"] for record in read_metrics(output)]
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5
    weights, initial = saved_weights(exported), saved_weights(model_folder("unified"))
    changed = {name for name in initial if not torch.equal(weights[name], initial[name])}
    assert "head.decoder.layers.0.self_attn.q_proj.weight" in changed
    assert all(name.startswith("head.") for name in changed)  # the backbone (the reasoner) is frozen
    model = AutoModel.from_pretrained(exported, trust_remote_code=True)
    vectors, traces = model.embed(["what colour is the cat ? red"], return_reasoning=True, convert_to_tensor=True)
    assert vectors.shape == (1, 32) and traces[0]  # single pass: generated trace, then the trained head


def test_train_head_starts_from_the_backbone_top_layers(tmp_path, model_folder, pair_data, trace_store):
    """The head is re-initialised from the (stage-1) backbone, whatever head the checkpoint held."""
    model = AutoModel.from_pretrained(model_folder("unified"), trust_remote_code=True)
    with torch.no_grad():
        for parameter in model.head.parameters():
            parameter.zero_()
    model.processor  # attach it, so save_pretrained writes it too
    model.save_pretrained(tmp_path / "stale_head")
    exported = main(train_arguments(str(tmp_path / "stale_head"), pair_data, trace_store, str(tmp_path / "run"),
                               "--max_steps", "1", "--learning_rate", "1e-9"))  # fmt: skip
    weights = saved_weights(exported)
    # 4 backbone layers, head of 2: head layer 0 starts as backbone layer 2.
    assert torch.allclose(weights["head.decoder.layers.0.mlp.up_proj.weight"],
                          weights["backbone.model.layers.2.mlp.up_proj.weight"], atol=1e-6)  # fmt: skip


def test_train_head_rejects_a_teacher_model(tmp_path, model_folder, pair_data, trace_store):
    with pytest.raises(ValueError, match="is a 'teacher' model; the head exists only in 'unified'"):
        main(train_arguments(model_folder("teacher"), pair_data, trace_store, str(tmp_path / "run"), "--max_steps", "1"))
