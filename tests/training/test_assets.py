"""training/assets.py: what is stored of a trained model, and the published weights rebuilt from it."""

import torch

from training.assets import LEFT_SUFFIX, RIGHT_SUFFIX, ROWS_SUFFIX, apply_differences, state_digest, weight_differences


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
