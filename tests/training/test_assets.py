"""training/assets.py: what is stored of a trained model, and the published weights rebuilt from it."""

import pytest
import torch

from training.assets import (LEFT_SUFFIX, RIGHT_SUFFIX, ROWS_SUFFIX, apply_differences, config_changes, state_digest,
                             weight_differences)


def test_differences_store_rows_factors_bf16_head_and_whole_tensors():
    generator = torch.Generator().manual_seed(0)
    base = {
        "backbone.model.embed_tokens.weight": torch.randn(10, 8, generator=generator),
        "backbone.layers.0.q_proj.weight": torch.randn(96, 80, generator=generator),
        "backbone.visual.proj.weight": torch.randn(12, 12, generator=generator),
        "head.layers.0.q_proj.weight": torch.randn(16, 16, generator=generator),
        "backbone.layers.1.k_proj.weight": torch.randn(8, 8, generator=generator),
    }
    trained = {name: tensor.clone() for name, tensor in base.items()}
    trained["backbone.model.embed_tokens.weight"][9] += 1.0  # a new token's row
    lora = torch.randn(96, 4, generator=generator) @ torch.randn(4, 80, generator=generator) * 0.01  # merged LoRA
    trained["backbone.layers.0.q_proj.weight"] += lora
    trained["backbone.visual.proj.weight"] += torch.randn(12, 12, generator=generator)  # fully trained
    trained["head.layers.0.q_proj.weight"] += torch.randn(16, 16, generator=generator)

    stored = weight_differences(trained, base)
    assert stored["backbone.layers.0.q_proj.weight" + LEFT_SUFFIX].shape == (96, 4)
    assert stored["backbone.layers.0.q_proj.weight" + RIGHT_SUFFIX].shape == (4, 80)
    assert stored["backbone.layers.0.q_proj.weight" + LEFT_SUFFIX].dtype == torch.bfloat16  # half the bytes
    assert "backbone.layers.0.q_proj.weight" not in stored
    assert stored["head.layers.0.q_proj.weight"].dtype == torch.bfloat16
    assert torch.equal(stored["backbone.visual.proj.weight"], trained["backbone.visual.proj.weight"])
    assert stored["backbone.model.embed_tokens.weight" + ROWS_SUFFIX].shape == (1, 8)
    assert "backbone.layers.1.k_proj.weight" not in stored  # unchanged

    published = apply_differences(base, stored)
    assert {name: tensor.dtype for name, tensor in published.items()} == {name: torch.float32 for name in base}
    # bf16 factors round the change, not the weight: the error is a small fraction of the change itself
    error = (published["backbone.layers.0.q_proj.weight"] - trained["backbone.layers.0.q_proj.weight"]).abs().max()
    assert 0 < error < 0.01 * lora.abs().max()
    head = trained["head.layers.0.q_proj.weight"]
    assert torch.equal(published["head.layers.0.q_proj.weight"], head.to(torch.bfloat16).float())
    for name in ("backbone.model.embed_tokens.weight", "backbone.visual.proj.weight", "backbone.layers.1.k_proj.weight"):
        assert torch.equal(published[name], trained[name])
    # Rebuilding is deterministic: the manifest's digest of the published weights is reproducible.
    assert state_digest(apply_differences(base, stored)) == state_digest(published)


def test_an_added_gate_is_stored_whole_and_rebuilt_and_other_new_weights_are_refused():
    """`training.train_gate` adds a module the base lacks: its weights are stored whole and rebuilt; a new weight of
    any other module, or a base weight the trained model lacks, is an error that names it."""
    base = {"backbone.visual.proj.weight": torch.zeros(4, 4)}
    gate = {"gate.score.weight": torch.randn(1, 4), "gate.score.bias": torch.randn(1),
            "gate.norm.weight": torch.ones(4)}
    trained = {**base, **gate}

    stored = weight_differences(trained, base)
    assert set(stored) == set(gate) and all(torch.equal(stored[name], gate[name]) for name in gate)
    published = apply_differences(base, stored)
    assert set(published) == set(trained) and all(torch.equal(published[n], trained[n]) for n in trained)

    with pytest.raises(ValueError, match="head.extra.weight"):
        weight_differences({**trained, "head.extra.weight": torch.zeros(1)}, base)
    with pytest.raises(ValueError, match="backbone.visual.proj.weight"):
        weight_differences(gate, base)
    with pytest.raises(ValueError, match="head.extra.weight"):
        apply_differences(base, {"head.extra.weight": torch.zeros(1)})


def test_config_changes_records_the_gate_settings_and_refuses_any_other_change():
    base = {"variant": "unified", "think": "queries", "gate_threshold": None, "max_new_tokens": 64,
            "transformers_version": "5.0.0"}  # fmt: skip
    gated = {**base, "think": "auto", "gate_threshold": -0.25, "transformers_version": "5.1.0"}
    assert config_changes(gated, base) == {"think": "auto", "gate_threshold": -0.25}
    assert config_changes(base, base) == {}
    assert config_changes({**base, "max_new_tokens": 8}, base) == {"max_new_tokens": 8}
    by_task = {**base, "think": "tasks", "think_tasks": ["grounding", "vqa"]}
    assert config_changes(by_task, base) == {"think": "tasks", "think_tasks": ["grounding", "vqa"]}
    with pytest.raises(ValueError, match=r"\['head_num_layers'\]"):
        config_changes({**gated, "head_num_layers": 2}, base)
