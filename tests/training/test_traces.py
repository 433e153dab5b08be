"""The append-only trace store: round trip, crash recovery and corruption checks."""

import json

import pytest

from training.traces import TraceStore, make_manifest


MANIFEST = make_manifest("tiny-reasoner", "ecr-v1", {"greedy": True, "max_new_tokens": 8})


@pytest.fixture
def store(tmp_path) -> TraceStore:
    return TraceStore.create(str(tmp_path / "store"), MANIFEST)


def test_trace_store_round_trip_over_shards(store):
    store.append(0, [("a", "query", "<think> x </think> y"), ("b", "query", "line one\nline two")])
    store.append(1, [("a", "positive", "")])
    assert TraceStore(store.folder).read() == {("a", "query"): "<think> x </think> y",
                                               ("b", "query"): "line one\nline two", ("a", "positive"): ""}  # fmt: skip


def test_trace_store_records_carry_the_full_key(store):
    store.append(0, [("a", "query", "t")])
    with open(store.shard_path(0)) as handle:
        record = json.loads(handle.readline())
    assert record == {"id": "a", "side": "query", "reasoner": "tiny-reasoner", "prompt_set_version": "ecr-v1",
                      "decoding": {"greedy": True, "max_new_tokens": 8}, "trace": "t"}  # fmt: skip


def test_trace_store_ignores_then_truncates_an_interrupted_last_line(store):
    store.append(0, [("a", "query", "kept")])
    with open(store.shard_path(0), "a") as handle:
        handle.write('{"id": "b", "side": "query", "reas')  # a write cut by a crash
    assert store.read() == {("a", "query"): "kept"}
    store.close()  # the crashed writer's shard lock died with it
    TraceStore(store.folder).append(0, [("b", "query", "redone")])
    assert store.read() == {("a", "query"): "kept", ("b", "query"): "redone"}
    with open(store.shard_path(0)) as handle:
        assert len(handle.readlines()) == 2


def test_trace_store_corrupt_complete_line_raises_with_its_location(store):
    store.append(0, [("a", "query", "kept")])
    with open(store.shard_path(0), "a") as handle:
        handle.write("not json\n")
    with pytest.raises(ValueError, match=r"shard-00000.jsonl:2: not a JSON line"):
        store.read()


def test_trace_store_duplicate_key_raises(store):
    store.append(0, [("a", "query", "one")])
    store.append(1, [("a", "query", "two")])
    with pytest.raises(ValueError, match=r"shard-00001.jsonl:1: duplicate trace for id='a' side='query'"):
        store.read()


def test_trace_store_refuses_traces_of_other_settings(store):
    other = make_manifest("tiny-reasoner", "ecr-v1", {"greedy": True, "max_new_tokens": 16})
    with pytest.raises(ValueError, match="holds traces made with .* use a new store folder"):
        TraceStore.create(store.folder, other)


def test_trace_store_needs_a_manifest(tmp_path):
    with pytest.raises(ValueError, match="is not a trace store: store.json is missing"):
        TraceStore(str(tmp_path))
