"""The training trace store: a manifest + a trace cache file (one trace format for training and inference)."""

import json
import sqlite3

import pytest

from training.traces import TraceStore, make_manifest
from tte.trace_cache_tte import TraceCache


MANIFEST = make_manifest("tiny-reasoner", "ecr-v1", {"greedy": True, "max_new_tokens": 8})


@pytest.fixture
def store(tmp_path) -> TraceStore:
    return TraceStore.create(str(tmp_path / "store"), MANIFEST)


def test_trace_store_round_trip(store):
    store.append([("a", "query", "<think> x </think> y"), ("b", "query", "line one\nline two")])
    store.append([("a", "positive", "")])
    assert TraceStore(store.folder).read() == {("a", "query"): "<think> x </think> y",
                                               ("b", "query"): "line one\nline two", ("a", "positive"): ""}  # fmt: skip


def test_trace_store_entries_carry_the_full_key_in_the_trace_cache_format(store):
    store.append([("a", "query", "t")])
    (fields, trace, ids), = TraceCache(store.cache.path).entries()  # the inference cache's class reads the file
    assert json.loads(fields) == {"id": "a", "side": "query", "reasoner": "tiny-reasoner", "prompt_set_version": "ecr-v1",
                                  "decoding": {"greedy": True, "max_new_tokens": 8}}  # fmt: skip
    assert (trace, ids) == ("t", None)  # a trace known as text: tokenised on its own


def test_trace_store_keeps_the_first_trace_of_an_id_and_side(store):
    store.append([("a", "query", "one")])
    TraceStore(store.folder).append([("a", "query", "two"), ("b", "query", "three")])  # another writer
    assert store.read() == {("a", "query"): "one", ("b", "query"): "three"}
    assert len(store.cache) == 2


def test_trace_store_refuses_an_entry_of_other_settings_by_name(store):
    store.append([("a", "query", "kept")])
    with sqlite3.connect(store.cache.path) as connection:  # an entry another reasoner wrote into this file
        connection.execute("UPDATE traces SET fields = replace(fields, 'tiny-reasoner', 'other')")
    with pytest.raises(ValueError, match=r"traces.sqlite entry 1: reasoner='other', but the manifest says "
                                         r"'tiny-reasoner'"):  # fmt: skip
        store.read()


def test_trace_store_refuses_an_inference_cache_entry(store, tiny_tte):
    model = tiny_tte("qwen2_vl", "student")
    model.embed(["a red square"], trace_cache=store.cache)
    with pytest.raises(ValueError, match=r"entry 1: a training trace is keyed by \('id', 'side'"):
        store.read()


def test_trace_store_refuses_traces_of_other_settings(store):
    other = make_manifest("tiny-reasoner", "ecr-v1", {"greedy": True, "max_new_tokens": 16})
    with pytest.raises(ValueError, match="holds traces made with .* use a new store folder"):
        TraceStore.create(store.folder, other)


def test_trace_store_needs_a_manifest_of_this_format(tmp_path):
    with pytest.raises(ValueError, match="is not a trace store: store.json is missing"):
        TraceStore(str(tmp_path))
    (tmp_path / "store.json").write_text(json.dumps({**MANIFEST, "format_version": 1}))
    with pytest.raises(ValueError, match="format_version=1, expected 2; a format-1 store upgrades with"):
        TraceStore(str(tmp_path))


def test_a_format_1_store_upgrades_in_place(tmp_path, capsys):
    from training.traces import main as traces_main

    folder = tmp_path / "old"
    folder.mkdir()
    (folder / "store.json").write_text(json.dumps({**MANIFEST, "format_version": 1}))
    record = lambda i, trace: json.dumps({"id": i, "side": "query", "reasoner": "tiny-reasoner",
                                          "prompt_set_version": "ecr-v1",
                                          "decoding": {"greedy": True, "max_new_tokens": 8}, "trace": trace})
    (folder / "shard-00000.jsonl").write_text(record("a", "one") + "\n" + record("b", "two") + "\n" + '{"id": "c", "si')
    (folder / "shard-00001.jsonl").write_text(record("d", "line\nbreak") + "\n")
    with pytest.raises(ValueError, match="python -m training.traces upgrade"):
        TraceStore(str(folder))
    traces_main(["upgrade", str(folder)])
    assert "format 2, 3 traces" in capsys.readouterr().out
    expected = {("a", "query"): "one", ("b", "query"): "two", ("d", "query"): "line\nbreak"}  # not the cut line
    assert TraceStore(str(folder)).read() == expected
    traces_main(["upgrade", str(folder)])  # again: nothing changes
    assert TraceStore(str(folder)).read() == expected and (folder / "shard-00000.jsonl").exists()
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "store.json").write_text(json.dumps({**MANIFEST, "format_version": 1}))
    (bad / "shard-00000.jsonl").write_text(record("a", "one").replace("tiny-reasoner", "other") + "\n")
    with pytest.raises(ValueError, match=r"shard-00000.jsonl:1: reasoner='other', but the manifest says"):
        traces_main(["upgrade", str(bad)])
