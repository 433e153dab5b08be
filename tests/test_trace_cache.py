"""The persistent trace cache (`trace_cache_tte.py`) and per-call cost reporting (`embed(return_stats=True)`)."""

import copy
import multiprocessing
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

from tests.conftest import make_image
from tte.modeling_tte import EmbedStats
from tte.processing_tte import TTEInput
from tte.trace_cache_tte import TraceCache, trace_key


INPUTS = ["a red square", {"text": "what is on the table ?", "instruction": "find the image", "task": "vqa"},
          make_image(1), {"text": "a cat", "image": make_image(2)}]  # fmt: skip


@pytest.mark.parametrize("variant", ["unified", "student"])
def test_a_cache_hit_reproduces_the_generated_trace_and_its_embedding(tiny_tte, tmp_path, variant):
    model = tiny_tte("qwen2_vl", variant)
    cache = TraceCache(tmp_path / "traces.sqlite")
    fresh, fresh_ids, first = model.embed(INPUTS, trace_cache=cache, return_reasoning="ids", return_stats=True)
    assert (first.generated, first.cache_hits, len(cache)) == (4, 0, 4)
    cached, cached_ids, second = model.embed(INPUTS, trace_cache=cache, return_reasoning="ids", return_stats=True)
    assert (second.generated, second.cache_hits, second.generated_tokens) == (0, 4, 0)
    assert cached_ids == fresh_ids and any(fresh_ids)
    # The cached ids are what was embedded: bit for bit the embedding of the same trace ids given by the caller.
    assert np.array_equal(cached, model.embed(INPUTS, reasoning=fresh_ids))
    # With a cache, generation is followed by a forward over the ids (the unified model too, instead of its single
    # pass): the same computation as a hit.
    assert np.array_equal(cached, fresh)
    assert np.abs(fresh - model.embed(INPUTS)).max() <= 1e-4  # without a cache: the single pass, up to rounding
    _, texts = model.embed(INPUTS, trace_cache=cache, return_reasoning=True)
    assert texts == model.embed(INPUTS, reasoning=fresh_ids, return_reasoning=True)[1]


def test_a_batch_of_hits_and_misses_is_batch_invariant(tiny_tte, tmp_path):
    model = tiny_tte("qwen2_vl", "unified")
    cache = TraceCache(tmp_path / "traces.sqlite")
    model.embed(INPUTS[::2], trace_cache=cache)  # half the inputs' traces are cached
    mixed, stats = model.embed(INPUTS, trace_cache=cache, return_stats=True)
    assert (stats.cache_hits, stats.generated) == (2, 2)
    assert np.abs(mixed - model.embed(INPUTS)).max() <= 1e-4


def test_the_model_carries_a_cache_set_once(tiny_tte, tmp_path):
    model = copy.deepcopy(tiny_tte("qwen2_vl", "student"))
    model.trace_cache = tmp_path / "traces.sqlite"  # a path becomes a TraceCache
    assert isinstance(model.trace_cache, TraceCache)
    model.embed(INPUTS[:2])
    assert len(model.trace_cache) == 2
    assert copy.deepcopy(model).trace_cache.path == model.trace_cache.path  # a copy uses the same file
    _, stats = model.embed(INPUTS[:2], return_stats=True)
    assert stats.cache_hits == 2
    _, stats = model.embed(INPUTS[:2], return_stats=True, side="document")  # documents do not think by default
    assert (stats.cache_hits, stats.without_trace) == (0, 2)
    with pytest.raises(TypeError, match=r"trace_cache must be a TraceCache \(get_many and put_many\), a file path or None, got int"):
        model.trace_cache = 3


def key_fields_changed(item: TTEInput, context: dict) -> dict[str, tuple[TTEInput, dict]]:
    """One variation per key field of `trace_key`."""
    def replaced(**changes):
        return TTEInput(**{**vars(item), **changes})

    return {
        "text": (replaced(text="a blue square"), context),
        "instruction": (replaced(instruction="find the caption"), context),
        "task": (replaced(task="vqa"), context),
        "image": (replaced(image=make_image(4)), context),
        "image pixels": (replaced(image=item.image.rotate(90)), context),
        "reasoner weights": (item, {**context, "reasoner": {**context["reasoner"], "weights": "0" * 64}}),
        "decoding": (item, {**context, "reasoner": {**context["reasoner"], "decoding": {"max_new_tokens": 7}}}),
        "prompt-set version": (item, {**context, "prompt_set_version": "ecr-v2"}),
        "chat template": (item, {**context, "chat_template": "1" * 64}),
        "image size": (item, {**context, "image_size": {"shortest_edge": 56, "longest_edge": 9999}}),
    }


def test_changing_any_key_field_changes_the_key(tiny_tte):
    model = tiny_tte("qwen2_vl", "student")
    item = TTEInput(text="a cat", image=make_image(3), instruction="find the image", task="retrieval")
    context = model.trace_cache_context()
    assert {"reasoner", "prompt_set_version", "chat_template", "image_size"} <= set(context)
    key, _ = trace_key(item, context)
    assert trace_key(TTEInput(**vars(item)), copy.deepcopy(context))[0] == key  # equal inputs, equal keys
    for field, (changed_item, changed_context) in key_fields_changed(item, context).items():
        assert trace_key(changed_item, changed_context)[0] != key, field


def test_a_change_of_weights_or_decoding_misses_the_cache(tiny_tte, tmp_path):
    model = copy.deepcopy(tiny_tte("qwen2_vl", "student"))
    cache = TraceCache(tmp_path / "traces.sqlite")
    model.embed(INPUTS[:1], trace_cache=cache)
    hits = lambda **kwargs: model.embed(INPUTS[:1], trace_cache=cache, return_stats=True, **kwargs)[1].cache_hits
    assert hits() == 1
    assert hits(max_new_tokens=3) == 0  # another bound: another trace
    with torch.no_grad():
        next(model.reasoner.parameters())[0, 0] += 1.0  # a training step, in place
    assert hits() == 0
    model.processor = copy.deepcopy(model.processor)
    model.processor.max_pixels = model.processor.max_pixels // 2  # the reasoner would see another image size
    assert model.embed([make_image(1)], trace_cache=cache, return_stats=True)[1].cache_hits == 0


def test_an_external_reasoner_needs_an_identity_to_use_a_cache(tiny_tte, tmp_path):
    model = copy.deepcopy(tiny_tte("qwen2_vl", "teacher"))
    model.set_reasoner(lambda items, processor: ["<think> shapes </think> a shape"] * len(items))
    with pytest.raises(ValueError, match="has no `identity`.*cannot key its traces"):
        model.embed(INPUTS[:1], trace_cache=tmp_path / "traces.sqlite")
    model.set_reasoner(base_url="http://127.0.0.1:9/v1", model="teacher-72b")
    context = model.trace_cache_context()["reasoner"]
    assert context == {"external": {"endpoint": "http://127.0.0.1:9/v1/chat/completions", "model": "teacher-72b",
                                    "decoding": {"temperature": 0.0, "max_tokens": model.config.max_new_tokens}}}


def test_stats_add_up_and_count_tokens_and_cuts(tiny_tte, tmp_path):
    model = tiny_tte("qwen2_vl", "student")
    cache = TraceCache(tmp_path / "traces.sqlite")
    model.embed(INPUTS[:1], trace_cache=cache)
    inputs = [INPUTS[0], INPUTS[1], {"text": "a dog", "think": False}, {"text": "a hat", "reasoning": "a hat"}]
    _, ids, stats = model.embed(inputs, trace_cache=cache, return_reasoning="ids", return_stats=True)
    assert isinstance(stats, EmbedStats)
    assert (stats.inputs, stats.cache_hits, stats.generated, stats.without_trace, stats.given) == (4, 1, 1, 1, 1)
    assert stats.cache_hits + stats.generated + stats.without_trace + stats.given == stats.inputs
    assert stats.generated_tokens == len(ids[1]) > 0
    assert stats.trace_tokens == sum(map(len, ids)) > stats.generated_tokens  # the cached and the given trace too
    assert stats.cut_traces == int(len(ids[1]) == model.config.max_new_tokens)
    assert stats.generation_seconds > 0 and stats.embedding_seconds > 0
    total = stats + stats
    assert total.to_dict() == {name: 2 * value for name, value in stats.to_dict().items()}
    bounded = model.embed(INPUTS[1:2], max_new_tokens=1, return_stats=True)[1]
    assert (bounded.generated_tokens, bounded.cut_traces) == (1, 1)
    with pytest.raises(TypeError, match="return_stats must be True or False"):
        model.embed(INPUTS[:1], return_stats="yes")


def test_a_streamer_gets_a_cached_trace_in_one_piece(tiny_tte, tmp_path):
    from transformers import TextIteratorStreamer

    model = tiny_tte("qwen2_vl", "unified")
    cache = TraceCache(tmp_path / "traces.sqlite")
    _, traces = model.embed(INPUTS[:1], trace_cache=cache, return_reasoning=True)
    streamer = TextIteratorStreamer(model.processor.tokenizer, skip_prompt=True)
    model.embed(INPUTS[:1], trace_cache=cache, streamer=streamer)
    assert "".join(streamer).strip() == traces[0].strip()


def write_entries(path: str, writer: int, shared: int, own: int, per_transaction: int) -> None:
    cache = TraceCache(path)
    keys = [f"shared-{i}" for i in range(shared)] + [f"writer{writer}-{i}" for i in range(own)]
    for start in range(0, len(keys), per_transaction):
        cache.put_many((key, "{}", f"trace of {key} by {writer}", [writer, i]) for i, key in
                       enumerate(keys[start : start + per_transaction]))  # fmt: skip


def test_four_processes_writing_one_cache_lose_and_duplicate_nothing(tmp_path):
    path = str(tmp_path / "traces.sqlite")
    TraceCache(path)
    context = multiprocessing.get_context("spawn")  # fresh interpreters, as separate workers would be
    workers = [context.Process(target=write_entries, args=(path, writer, 40, 120, 8)) for writer in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=300)
        assert worker.exitcode == 0
    cache = TraceCache(path)
    assert len(cache) == 40 + 4 * 120
    keys = [f"shared-{i}" for i in range(40)] + [f"writer{w}-{i}" for w in range(4) for i in range(120)]
    found = cache.get_many(keys)
    assert set(found) == set(keys)
    assert all(found[f"writer{w}-{i}"][0] == f"trace of writer{w}-{i} by {w}" for w in range(4) for i in range(120))
    assert all(found[key][0].startswith(f"trace of {key} by ") for key in keys[:40])  # the first writer's


KILLED_WRITER = textwrap.dedent("""
    import sys
    from tte.trace_cache_tte import TraceCache
    cache = TraceCache(sys.argv[1])
    for round in range(10**6):
        cache.put_many((f"{round}-{i}", "{}", "x" * 2000, list(range(100))) for i in range(50))
""")


def test_sigkill_while_writing_leaves_a_readable_cache(tmp_path):
    path = str(tmp_path / "traces.sqlite")
    writer = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, path])
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and (not os.path.exists(path) or len(TraceCache(path)) < 500):
            time.sleep(0.05)
        time.sleep(0.2)  # well inside further transactions
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait()
    cache = TraceCache(path)
    count = len(cache)
    assert count >= 500 and count % 50 == 0  # whole transactions only
    with sqlite3.connect(path) as connection:
        assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    cache.put_many([("after", "{}", "a trace", [1])])
    assert len(cache) == count + 1 and cache.get_many(["after"]) == {"after": ("a trace", [1])}


def test_a_file_that_is_not_a_cache_is_refused_by_name(tmp_path):
    path = tmp_path / "notes.sqlite"
    path.write_text("not a database, just some notes that are long enough to be read as a header" * 10)
    with pytest.raises(ValueError, match="notes.sqlite: not a usable trace cache"):
        TraceCache(path)
    other = tmp_path / "other.sqlite"
    with sqlite3.connect(other) as connection:
        connection.execute("PRAGMA user_version = 7")
    with pytest.raises(ValueError, match="schema version 7, expected 1"):
        TraceCache(other)
