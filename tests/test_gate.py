"""The think="auto" gate: per-input decisions, the cost of a skipped query, stats, saving and loading."""

import copy

import numpy as np
import pytest
import torch

from tests.conftest import make_image
from tests.test_modeling_tte import trunk_steps
from tte.modeling_tte import TTEGate


QUERIES = ["a red square", {"text": "what is on the table ?", "instruction": "find the image", "task": "vqa"},
           make_image(1), {"text": "a cat", "image": make_image(2)}, "a blue circle left of a green square",
           {"text": "how many shapes ?", "task": "vqa"}]  # fmt: skip


def with_gate(model, threshold: float | None = None):
    """A copy of `model` with a randomly initialised gate; by default its threshold splits QUERIES in half."""
    model = copy.deepcopy(model)
    model.config.gate_threshold = 0.0
    torch.manual_seed(0)
    model.gate = TTEGate(model.config)
    torch.nn.init.normal_(model.gate.score.weight, std=1.0)
    with torch.no_grad():
        logits = model.gate(model.gate_features(QUERIES)).tolist()
    model.config.gate_threshold = float(np.median(logits)) if threshold is None else threshold
    return model, logits


@pytest.mark.parametrize("variant", ["unified", "student"])
def test_gate_decisions_follow_its_features_and_are_batch_invariant(tiny_tte, variant):
    model, logits = with_gate(tiny_tte("qwen2_vl", variant))
    expected = [logit > model.config.gate_threshold for logit in logits]
    assert 0 < sum(expected) < len(QUERIES)
    _, traces, stats = model.embed(QUERIES, think="auto", return_reasoning="ids", return_stats=True)
    # a query that thinks has a trace (the tiny model's first token is never EOS here); a skipped one has none
    assert [bool(ids) for ids in traces] == expected
    assert (stats.generated, stats.gate_skips, stats.without_trace) == (sum(expected), len(QUERIES) - sum(expected),
                                                                        len(QUERIES) - sum(expected))  # fmt: skip
    assert stats.generated + stats.cache_hits + stats.given + stats.without_trace == stats.inputs
    alone = [model.embed([query], think="auto", return_reasoning="ids")[1][0] for query in QUERIES]
    assert [bool(ids) for ids in alone] == expected
    mixed, mixed_traces = model.embed(["a plain text", *QUERIES], think="auto", return_reasoning="ids")
    assert [bool(ids) for ids in mixed_traces[1:]] == expected


@pytest.mark.parametrize("variant", ["unified", "student"])
def test_a_skipped_query_equals_no_thinking_and_a_thinking_one_equals_always(tiny_tte, variant):
    model, logits = with_gate(tiny_tte("qwen2_vl", variant))
    thinks = np.array([logit > model.config.gate_threshold for logit in logits])
    auto = model.embed(QUERIES, think="auto")
    assert np.abs(auto[~thinks] - model.embed(QUERIES, think=False)[~thinks]).max() <= 1e-4
    assert np.abs(auto[thinks] - model.embed(QUERIES, think=True)[thinks]).max() <= 1e-4
    documents = model.embed(QUERIES, think="auto", side="document", return_stats=True)[1]
    assert (documents.generated, documents.gate_skips, documents.without_trace) == (0, 0, len(QUERIES))


@pytest.mark.parametrize("variant", ["unified", "student"])
def test_auto_reads_and_fills_the_trace_cache_for_the_queries_that_think(tiny_tte, variant, tmp_path):
    model, logits = with_gate(tiny_tte("qwen2_vl", variant))
    thinks = np.array([logit > model.config.gate_threshold for logit in logits])
    without_cache = model.embed(QUERIES, think="auto")
    cache = str(tmp_path / "traces.sqlite")
    first, first_stats = model.embed(QUERIES, think="auto", trace_cache=cache, return_stats=True)
    again, ids, stats = model.embed(QUERIES, think="auto", trace_cache=cache, return_reasoning="ids", return_stats=True)
    assert (first_stats.generated, first_stats.cache_hits) == (int(thinks.sum()), 0)
    assert (stats.generated, stats.cache_hits, stats.gate_skips) == (0, int(thinks.sum()), int((~thinks).sum()))
    assert [bool(trace) for trace in ids] == thinks.tolist()  # the gate still decides; the cache only saves work
    assert np.abs(first - without_cache).max() <= 1e-4 and np.array_equal(again, first)  # a hit: bit for bit


@pytest.mark.parametrize("prefix_cache", [False, True])
def test_a_gate_skipped_unified_query_runs_the_trunk_over_its_embedding_token_only(tiny_tte, prefix_cache):
    model, _ = with_gate(tiny_tte("qwen2_vl", "unified"), threshold=float("inf"))  # the gate says no to all
    model.config.use_prefix_cache = prefix_cache
    model.embed(QUERIES[:2], think="auto")  # the prefixes, when cached, are computed once here
    seq_lengths, (vectors, stats) = trunk_steps(model, lambda: model.embed(QUERIES[:2], think="auto",
                                                                             return_stats=True))  # fmt: skip
    prompts = model.processor.build_reasoning_inputs(model.processor.parse_inputs(QUERIES[:2]), with_prefix_lengths=True)
    rests = prompts["attention_mask"].sum(dim=1) - prompts["prefix_lengths"]
    # the prefill generation needs, then (no decode step: every row ended at once, with the empty trace) the step of
    # the embedding token alone
    assert seq_lengths == [int(rests.max()) if prefix_cache else prompts["input_ids"].shape[1], 1]
    assert (stats.gate_skips, stats.generated) == (2, 0)
    assert np.abs(vectors - model.embed(QUERIES[:2], think=False)).max() <= 1e-4


def test_auto_needs_a_gate_and_the_gate_is_saved_with_the_model(tiny_tte, tmp_path):
    plain = tiny_tte("qwen2_vl", "student")
    with pytest.raises(ValueError, match="think='auto' needs a gate, and this model has none"):
        plain.embed(QUERIES[:1], think="auto")
    model, _ = with_gate(plain)
    model.config.think = "auto"
    model.save_pretrained(tmp_path / "gated")
    loaded = type(model).from_pretrained(tmp_path / "gated").eval()
    assert loaded.config.gate_threshold == model.config.gate_threshold and loaded.config.think == "auto"
    assert torch.equal(loaded.gate.score.weight, model.gate.score.weight)
    assert np.abs(loaded.embed(QUERIES) - model.embed(QUERIES)).max() <= 1e-5  # "auto" is the default now
    from tte.configuration_tte import TTEConfig

    with pytest.raises(ValueError, match="think='auto' needs a gate"):
        TTEConfig(backbone_config=plain.config.backbone_config.to_dict(), variant="unified", head_num_layers=1,
                  think="auto")


def test_auto_through_sentence_transformers_the_handler_and_the_cli(gated_export_folder, capsys):
    import json

    from sentence_transformers import SentenceTransformer

    import tte_cli
    from tests.conftest import GATED_TEXTS
    from tests.test_handler import load_handler
    from tte.modeling_tte import TTEModel

    model = TTEModel.from_pretrained(gated_export_folder).eval()
    expected, traces, stats = model.embed(GATED_TEXTS, think="auto", return_reasoning=True, return_stats=True)
    assert 0 < stats.gate_skips < len(GATED_TEXTS) and stats.gate_skips + stats.generated == len(GATED_TEXTS)
    st_model = SentenceTransformer(gated_export_folder, trust_remote_code=True)
    vectors = st_model.encode(GATED_TEXTS, think="auto")
    assert np.abs(vectors - expected).max() <= 1e-4
    assert st_model.encode(GATED_TEXTS, think="auto", output_value="reasoning") == traces
    reply = load_handler(gated_export_folder)({"inputs": GATED_TEXTS, "parameters": {"think": "auto",
                                                                                    "return_stats": True}})
    assert np.abs(np.asarray(reply["embeddings"]) - expected).max() <= 1e-4
    assert reply["stats"]["gate_skips"] == stats.gate_skips
    tte_cli.main(["embed", gated_export_folder, *GATED_TEXTS, "--think", "auto", "--stats"])
    printed = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert printed[-1]["stats"]["gate_skips"] == stats.gate_skips
