"""InfoNCE target arithmetic and GradCache against the plain loss (tiny random-weight model)."""

from contextlib import nullcontext

import pytest
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from peft import LoraConfig, get_peft_model
from PIL import Image

import training.losses
from training.tiny_models import build_tte
from training.losses import GradCache, info_nce, positive_columns


def test_positive_columns_one_target_per_query():
    assert positive_columns(4, 4).tolist() == [0, 1, 2, 3]


def test_positive_columns_k_targets_per_query():
    # 1 positive + 2 hard negatives per query: [pos_0, neg, neg, pos_1, neg, neg, ...]
    assert positive_columns(4, 12).tolist() == [0, 3, 6, 9]


@pytest.mark.parametrize("num_queries, num_targets", [(4, 10), (4, 2), (0, 3)])
def test_positive_columns_rejects_uneven_layouts(num_queries, num_targets):
    with pytest.raises(ValueError, match="not a positive multiple"):
        positive_columns(num_queries, num_targets)


def test_info_nce_matches_cross_entropy_at_positive_columns():
    generator = torch.Generator().manual_seed(0)
    query = F.normalize(torch.randn(4, 8, generator=generator), dim=-1)
    target = F.normalize(torch.randn(12, 8, generator=generator), dim=-1)
    scores = query @ target.T / 0.02
    expected = torch.stack([-scores[i].log_softmax(-1)[3 * i] for i in range(4)]).mean()
    assert torch.allclose(info_nce(query, target, 0.02)["contrastive_loss"], expected, atol=1e-6)


def test_info_nce_leaves_targets_equal_to_the_positive_out_of_the_softmax():
    generator = torch.Generator().manual_seed(0)
    query = F.normalize(torch.randn(3, 8, generator=generator), dim=-1)
    target = F.normalize(torch.randn(3, 8, generator=generator), dim=-1)
    target[2] = target[0]  # queries 0 and 2 have the same answer, and each query points at its answer
    query = target + 0.1 * F.normalize(torch.randn(3, 8, generator=generator), dim=-1)
    scores = query @ target.T / 0.02
    kept = {0: [0, 1], 1: [0, 1, 2], 2: [1, 2]}  # each query keeps its positive and the targets unlike it
    expected = torch.stack([-scores[i, kept[i]].log_softmax(-1)[kept[i].index(i)] for i in range(3)]).mean()
    masked = info_nce(query, target, 0.02, target_ids=torch.tensor([7, 8, 7]))["contrastive_loss"]
    assert torch.allclose(masked, expected, atol=1e-6)
    unmasked = info_nce(query, target, 0.02)["contrastive_loss"]
    assert unmasked > masked + 0.3  # unmasked, queries 0 and 2 split their probability with the duplicate


def test_info_nce_is_low_when_each_query_matches_its_own_positive():
    query = torch.eye(4)
    target = torch.stack([torch.eye(4)[i // 2] if i % 2 == 0 else -torch.eye(4)[i // 2] for i in range(8)])
    assert info_nce(query, target, 0.02)["contrastive_loss"].item() < 1e-6  # positives sit at columns 0, 2, 4, 6


def _chunks(processor, inputs: list, size: int) -> list:
    items = processor.parse_inputs(inputs)
    return [processor.build_embedding_inputs(items[i : i + size], [""] * len(items[i : i + size]))
            for i in range(0, len(items), size)]  # fmt: skip


QUERIES = ["red cat", "blue dog", {"text": "what is on this picture ?", "image": Image.new("RGB", (56, 56), "red")},
           "green bus", "yellow car", "red tree"]  # fmt: skip
TARGETS = ["cat red", "one", "dog blue", "two", "red", "three", "bus green", "four", "car yellow", "five",
           "tree red", "six"]  # fmt: skip


def _trainable_grads(model) -> dict[str, torch.Tensor]:
    return {name: parameter.grad.clone() for name, parameter in model.named_parameters() if parameter.requires_grad}


def _max_difference(first: dict, second: dict) -> float:
    assert first.keys() == second.keys()
    return max((first[name] - second[name]).abs().max().item() for name in first)


def test_grad_cache_gradients_equal_full_batch_gradients():
    # float64, so the comparison measures the algorithm rather than float32 noise from other padding lengths.
    model = build_tte("qwen2_vl", "teacher").double().train()  # no dropout here: one full-batch pass is the reference
    processor = model.processor
    info_nce(model(**_chunks(processor, QUERIES, 6)[0]).embeddings,
             model(**_chunks(processor, TARGETS, 12)[0]).embeddings, 0.02)["contrastive_loss"].backward()  # fmt: skip
    expected = _trainable_grads(model)
    model.zero_grad()
    step = GradCache(model, Accelerator(cpu=True), temperature=0.02)
    step({"query": _chunks(processor, QUERIES, 2), "target": _chunks(processor, TARGETS, 4)})
    assert _max_difference(_trainable_grads(model), expected) <= 1e-5


def test_a_batch_of_one_chunk_per_side_is_embedded_once_with_full_batch_gradients(monkeypatch):
    model = build_tte("qwen2_vl", "teacher").double().train()
    processor = model.processor
    batch = {"query": _chunks(processor, QUERIES, 6), "target": _chunks(processor, TARGETS, 12)}
    info_nce(model(**batch["query"][0]).embeddings, model(**batch["target"][0]).embeddings,
             0.02)["contrastive_loss"].backward()  # fmt: skip
    expected = _trainable_grads(model)
    model.zero_grad()
    calls = []
    embed = GradCache.embed
    monkeypatch.setattr(GradCache, "embed", lambda self, chunk: calls.append(1) or embed(self, chunk))
    GradCache(model, Accelerator(cpu=True), temperature=0.02)(batch)
    assert len(calls) == 2  # GradCache's two passes would embed each side twice
    assert _max_difference(_trainable_grads(model), expected) <= 1e-10


def test_grad_cache_masks_duplicate_targets_as_the_full_batch_loss_does():
    model = build_tte("qwen2_vl", "teacher").double().train()
    processor = model.processor
    target_ids = torch.tensor([0, 1, 2, 1, 4, 5, 6, 7, 8, 9, 10, 1])  # "one" answers query 0; 1 and 11 repeat it
    query, target = model(**_chunks(processor, QUERIES, 6)[0]), model(**_chunks(processor, TARGETS, 12)[0])
    info_nce(query.embeddings, target.embeddings, 0.02, target_ids)["contrastive_loss"].backward()
    expected = _trainable_grads(model)
    model.zero_grad()
    GradCache(model, Accelerator(cpu=True), temperature=0.02)(
        {"query": _chunks(processor, QUERIES, 2), "target": _chunks(processor, TARGETS, 4), "target_ids": target_ids})
    assert _max_difference(_trainable_grads(model), expected) <= 1e-5


def _lora_with_dropout():
    model = build_tte("qwen2_vl", "teacher").double()
    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.5, init_lora_weights=False,
                        target_modules=r"backbone\..*layers\.\d+\.(self_attn|mlp)\.(q|v|up)_proj")  # fmt: skip
    return get_peft_model(model, config).train()


def _chunked_reference_grads(model, processor) -> dict[str, torch.Tensor]:
    """The plain loss over the same chunks, embedded once with a graph, in GradCache's order from the same seed:
    the same dropout masks as GradCache's first pass."""
    torch.manual_seed(0)
    query = torch.cat([model(**chunk).embeddings for chunk in _chunks(processor, QUERIES, 2)])
    target = torch.cat([model(**chunk).embeddings for chunk in _chunks(processor, TARGETS, 4)])
    info_nce(query, target, 0.02)["contrastive_loss"].backward()
    grads = _trainable_grads(model)
    model.zero_grad()
    return grads


def _grad_cache_grads(model, processor) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    GradCache(model, Accelerator(cpu=True), 0.02)(
        {"query": _chunks(processor, QUERIES, 2), "target": _chunks(processor, TARGETS, 4)}
    )
    grads = _trainable_grads(model)
    model.zero_grad()
    return grads


def test_grad_cache_replays_dropout_masks():
    model = _lora_with_dropout()
    processor = model.base_model.model.processor
    expected = _chunked_reference_grads(model, processor)
    assert _max_difference(_grad_cache_grads(model, processor), expected) <= 1e-5


def test_grad_cache_without_rng_replay_gives_other_gradients(monkeypatch):
    """Control for the test above: dropout is active, so skipping the replay changes the gradients."""
    model = _lora_with_dropout()
    processor = model.base_model.model.processor
    expected = _chunked_reference_grads(model, processor)
    monkeypatch.setattr(training.losses, "replay_rng", lambda state: nullcontext())
    assert _max_difference(_grad_cache_grads(model, processor), expected) > 1e-3
