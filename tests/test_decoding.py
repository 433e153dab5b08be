"""Greedy decoding with batch compaction (`decoding_tte.decode_greedily`): the same traces as transformers' `generate`,
rows that have ended leave the batch, and the unified single pass still equals a recomputation."""

import copy

import numpy as np
import pytest

from tests.conftest import make_image
from tests.test_modeling_tte import VL_BACKBONES
from tte.decoding_tte import decode_greedily
from tte.modeling_tte import decoder_of


INPUTS = ["a red square", "the blue circle on the table", {"text": "what is on the table ?", "task": "vqa"},
          "two yellow shapes left of a tree", make_image(1), {"text": "a cat", "image": make_image(2)}]  # fmt: skip


def inputs_for(name: str) -> list:
    return INPUTS[:4] if name == "llama" else INPUTS


def reasoning_prompt(model, items) -> dict:
    prompt = model.processor.build_reasoning_inputs(items, with_prefix_lengths=True).to(model.device)
    return model._generation_inputs(prompt)  # a fresh prefix cache object per call, as generate_traces builds it


def generate_reference(model, items, config) -> list[list[int]]:
    """transformers' `generate` on the same prompt: every row decodes until the longest trace ends."""
    prompt = reasoning_prompt(model, items)
    sequences = model.generator().generate(**prompt, generation_config=config).sequences
    stops = set(np.atleast_1d(config.eos_token_id).tolist())
    traces = []
    for row in sequences[:, prompt["input_ids"].shape[1] :].tolist():
        end = next((j for j, token in enumerate(row) if token in stops), len(row))
        traces.append(row[:end])
    return traces


def with_early_stops(model, items):
    """A copy of `model` whose reasoner also stops at a token that some rows generate early and others do not, so
    that rows end at different steps (random tiny weights rarely pick the real end-of-sequence token)."""
    model = copy.deepcopy(model)
    items = model.processor.parse_inputs(items)
    reference = generate_reference(model, items, model.generator_generation_config())
    candidates = [trace[2] for trace in reference if len(trace) > 2]
    stop = next(token for token in candidates if 0 < sum(token in trace for trace in reference) < len(reference))
    model.config.eos_token_id = [*np.atleast_1d(model.config.eos_token_id).tolist(), stop]
    return model


def with_a_stop_at_the_last_step(model, items):
    """A copy of `model` whose reasoner also stops at the token one row generates last (and not before), so that
    this row ends at the bound's last step while others are cut there."""
    model = copy.deepcopy(model)
    items = model.processor.parse_inputs(items)
    reference = generate_reference(model, items, model.generator_generation_config())
    stop = next(trace[-1] for trace in reference if trace[-1] not in trace[:-1]
                and not all(trace[-1] in other[:-1] for other in reference))  # fmt: skip
    model.config.eos_token_id = [*np.atleast_1d(model.config.eos_token_id).tolist(), stop]
    return model


def batch_sizes(model, call) -> tuple[list[int], object]:
    """Batch size the generator's first layer saw at each forward of `call()`, and its result."""
    sizes = []
    layer = decoder_of(model.generator()).layers[0]
    handle = layer.register_forward_hook(lambda module, args, output: sizes.append(output.shape[0]))
    try:
        return sizes, call()
    finally:
        handle.remove()


@pytest.mark.parametrize("name", VL_BACKBONES + ["llama"])
@pytest.mark.parametrize("prefix_cache", [False, True])
def test_greedy_decoding_gives_generates_traces(tiny_tte, name, prefix_cache):
    model = with_early_stops(tiny_tte(name, "unified", max_new_tokens=8), inputs_for(name))
    model.config.use_prefix_cache = prefix_cache
    items = model.processor.parse_inputs(inputs_for(name))
    config = model.generator_generation_config()
    decoded = decode_greedily(model.generator(), reasoning_prompt(model, items), config)
    reference = generate_reference(model, items, config)
    assert decoded.trace_ids == reference
    assert len({len(trace) for trace in reference}) > 1  # rows ended at different steps
    assert decoded.cut == [len(trace) == config.max_new_tokens for trace in reference]


@pytest.mark.parametrize("variant", ["unified", "student"])
def test_rows_that_ended_leave_the_batch(tiny_tte, variant):
    model = with_early_stops(tiny_tte("qwen2_vl", variant, max_new_tokens=8), INPUTS)
    model.config.use_prefix_cache = False
    items = model.processor.parse_inputs(INPUTS)
    sizes, (_, trace_ids, _) = batch_sizes(model, lambda: model.generate_traces(items, capture=variant == "unified"))
    lengths = [len(ids) for ids in trace_ids]
    budget = model.config.max_new_tokens
    # step k (k >= 1) feeds token k-1 of each trace still running; the unified single pass keeps a row that ended
    # one step longer (it feeds the embedding token), and feeds the cut rows' last token at the end
    running = [sum(length >= k for length in lengths) for k in range(1, budget)]
    if variant == "unified":
        running = [sum(length >= k - 1 for length in lengths) for k in range(1, budget)]
        running += [sum(length >= budget - 1 for length in lengths)]  # the step at the bound
    expected = [len(INPUTS)] + [count for count in running if count > 0]
    assert sizes == expected
    assert sizes[-1] < len(INPUTS)  # compaction happened


def test_the_single_pass_with_rows_ending_at_different_steps_equals_a_recomputation(tiny_tte):
    model = with_early_stops(tiny_tte("qwen2_vl", "unified", max_new_tokens=8), INPUTS)
    single_pass, trace_ids = model.embed(INPUTS, return_reasoning="ids")
    assert len({len(ids) for ids in trace_ids}) > 1
    assert np.abs(single_pass - model.embed(INPUTS, reasoning=trace_ids)).max() <= 1e-4
    alone = np.concatenate([model.embed([item]) for item in INPUTS])
    assert np.abs(single_pass - alone).max() <= 1e-4  # batch invariant


def test_a_streamer_gets_the_prompt_then_each_token_as_from_generate(tiny_tte):
    model = tiny_tte("qwen2_vl", "unified")
    received = []

    class Recorder:
        def put(self, value):
            received.append(value.tolist())

        def end(self):
            received.append("end")

    items = model.processor.parse_inputs(["a red square"])
    prompt = reasoning_prompt(model, items)
    decoded = decode_greedily(model.generator(), prompt, model.generator_generation_config(), Recorder())
    assert received[0] == prompt["input_ids"].tolist() and received[-1] == "end"
    assert [token for (token,) in received[1:-1]] == decoded.trace_ids[0]  # cut at the bound: no stop token sent
    assert decoded.trace_ids == generate_reference(model, items, model.generator_generation_config())


def test_a_trace_that_ends_at_the_last_step_gets_its_embedding_token_at_the_right_position(tiny_tte):
    model = with_a_stop_at_the_last_step(tiny_tte("qwen2_vl", "unified", max_new_tokens=8), INPUTS)
    single_pass, trace_ids = model.embed(INPUTS, return_reasoning="ids")
    assert model.config.max_new_tokens - 1 in [len(ids) for ids in trace_ids]  # the row fed a pad and <|emb|>
    assert np.abs(single_pass - model.embed(INPUTS, reasoning=trace_ids)).max() <= 1e-4


@pytest.mark.parametrize("variant", ["unified", "student"])
def test_a_static_generation_cache_gives_the_same_traces_and_embeddings(tiny_tte, variant, monkeypatch):
    from transformers import cache_utils

    static_caches = []
    original_init = cache_utils.StaticCache.__init__

    def recording_init(self, *args, **kwargs):
        static_caches.append(self)
        original_init(self, *args, **kwargs)

    monkeypatch.setattr(cache_utils.StaticCache, "__init__", recording_init)
    dynamic = with_early_stops(tiny_tte("qwen2_vl", variant, max_new_tokens=8), INPUTS)
    static = copy.deepcopy(dynamic)
    static.config.generation_cache = "static"
    assert static.generator_generation_config().cache_implementation == "static"
    vectors, trace_ids = dynamic.embed(INPUTS, return_reasoning="ids")
    static_vectors, static_ids, stats = static.embed(INPUTS, return_reasoning="ids", return_stats=True)
    assert static_ids == trace_ids and len({len(ids) for ids in trace_ids}) > 1
    assert stats.generated == len(INPUTS)
    # generation, then a forward over the generated ids (the unified model too: no single pass)
    assert np.array_equal(static_vectors, static.embed(INPUTS, reasoning=trace_ids))
    assert static_caches  # transformers' generate ran with a preallocated StaticCache
    assert np.abs(static_vectors - vectors).max() <= 1e-4
    with pytest.raises(ValueError, match="single pass needs generation_cache='dynamic'"):
        static.generate_traces(static.processor.parse_inputs(INPUTS[:1]), capture=True)


def test_a_static_generation_cache_still_gates_queries(tiny_tte):
    from tests.test_gate import QUERIES, with_gate

    model, logits = with_gate(tiny_tte("qwen2_vl", "unified"))
    model.config.generation_cache = "static"
    thinks = [logit > model.config.gate_threshold for logit in logits]
    _, trace_ids, stats = model.embed(QUERIES, think="auto", return_reasoning="ids", return_stats=True)
    assert [bool(ids) for ids in trace_ids] == thinks and stats.gate_skips == len(QUERIES) - sum(thinks)


def test_generation_cache_is_validated():
    from tte.configuration_tte import TTEConfig

    with pytest.raises(ValueError, match="generation_cache='paged' is not one of"):
        TTEConfig(generation_cache="paged")
