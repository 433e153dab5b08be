"""Pair sources, the same-source block sampler and the collators (synthetic data, tiny random-weight processor)."""

import copy
import json
import os
from types import SimpleNamespace

import pytest
import yaml

from training.tiny_models import build_processor
from training.synthetic_pairs import write_pair_data
from training.data import (
    BlockBatchSampler,
    PairCollator,
    PairDataset,
    Source,
    build_loader,
    content_id,
    load_sources,
    parse_trace_kinds,
    row_to_example,
)


def _write_jsonl(folder, rows: list[dict], name: str = "rows") -> str:
    """A data config with one JSONL source `name` holding `rows`."""
    with open(os.path.join(folder, f"{name}.jsonl"), "w") as handle:
        handle.writelines(json.dumps(row) + "\n" for row in rows)
    config = os.path.join(folder, "data.yaml")
    with open(config, "w") as handle:
        yaml.safe_dump({"sources": [{"name": name, "path": f"{name}.jsonl"}]}, handle)
    return config


def test_load_sources_resolves_paths_relative_to_the_config(tmp_path):
    sources = load_sources(write_pair_data(tmp_path))
    assert [source.name for source in sources] == ["words", "pictures"]
    assert sources[1].path == str(tmp_path / "pictures.parquet")
    assert sources[1].image_dir == str(tmp_path / "images")
    assert (sources[0].weight, sources[1].task) == (3.0, "vqa")


def test_pair_dataset_reads_jsonl_and_parquet_rows_with_every_field(tmp_path):
    dataset = PairDataset(load_sources(write_pair_data(tmp_path)))
    assert dataset.sizes == [32, 8]
    words, picture = dataset[0], dataset[32]
    assert words.id == "words/0"
    assert words.inputs["query"] == {"text": "what colour is the cat ? red", "task": "retrieval"}
    assert words.inputs["positive"]["text"] == "red cat"
    assert [words.inputs[f"negative-{j}"]["text"] for j in range(2)] == ["blue cat", "green cat"]
    # The Phi-3 image token is dropped: the processor inserts the backbone's own placeholder.
    assert picture.inputs["query"] == {"text": "what is on this picture ?", "task": "vqa",
                                       "image": str(tmp_path / "images" / "red-circle.png")}  # fmt: skip


@pytest.mark.parametrize(
    "row, message",
    [
        ({"qry": "   ", "pos_text": "red"}, r"source 'rows' row 1 query: neither text nor image nor video"),
        ({"qry": "red", "pos_text": "red", "pos_image_path": "gone.png"}, r"row 1 positive: image file .* not exist"),
        ({"qry": "<|image_1|> red", "pos_text": "red"}, r"row 1 query: text has the image token"),
        ({"qry": "red", "pos_text": "red", "neg_text": ["a", "b"], "neg_image_path": ["x.png"]},
         r"row 1: the negative columns disagree on the number of negatives \(2 neg_text, 1 neg_image_path entries\)"),
    ],
)
def test_pair_dataset_bad_row_names_source_and_row(tmp_path, row, message):
    config = _write_jsonl(tmp_path, [{"qry": "blue", "pos_text": "blue"}, row])
    with pytest.raises(ValueError, match=message):
        PairDataset(load_sources(config))


def test_pair_dataset_unknown_column_raises(tmp_path):
    config = _write_jsonl(tmp_path, [{"qry": "blue", "pos_text": "blue", "label": 3}])
    with pytest.raises(ValueError, match=r"source 'rows': unknown columns \['label'\]"):
        PairDataset(load_sources(config))


def test_pair_dataset_duplicate_id_raises(tmp_path):
    config = _write_jsonl(tmp_path, [{"id": "a", "qry": "blue", "pos_text": "blue"},
                                     {"id": "a", "qry": "red", "pos_text": "red"}])  # fmt: skip
    with pytest.raises(ValueError, match=r"row 1 \(id 'a'\): example id 'a' also used by source 'rows' row 0"):
        PairDataset(load_sources(config))


def test_source_rejects_unknown_task():
    with pytest.raises(ValueError, match=r"source 'x': task='chat' is not one of"):
        Source(name="x", path="x.jsonl", task="chat")


def test_parse_trace_kinds_rejects_unknown_side():
    assert parse_trace_kinds("query, positive") == ("query", "positive")
    with pytest.raises(ValueError, match="trace side 'target' is not one of"):
        parse_trace_kinds("query,target")


def _sampler(**overrides) -> BlockBatchSampler:
    settings = {"sizes": [40, 20, 30], "weights": [1.0, 1.0, 2.0], "block_size": 4, "global_batch_size": 8,
                "num_steps": 50, "seed": 3}  # fmt: skip
    return BlockBatchSampler(**{**settings, **overrides})


def _source_of(index: int, sizes=(40, 20, 30)) -> int:
    return sum(index >= sum(sizes[: i + 1]) for i in range(len(sizes)))


def test_block_sampler_blocks_come_from_one_source():
    for batch in _sampler():
        for block in (batch[:4], batch[4:]):
            assert len({_source_of(index) for index in block}) == 1


def test_block_sampler_process_slices_make_up_the_single_process_batch():
    single = list(_sampler())
    halves = [list(_sampler(process_index=rank, num_processes=2)) for rank in range(2)]
    assert [first + second for first, second in zip(*halves)] == single


def test_block_sampler_start_step_continues_the_same_stream():
    assert list(_sampler(start_step=20)) == list(_sampler())[20:]
    assert len(_sampler(start_step=20)) == 30


def test_block_sampler_draws_sources_by_weight():
    blocks = [_source_of(batch[0]) for batch in _sampler(num_steps=2000, global_batch_size=4)]
    share = blocks.count(2) / len(blocks)
    assert abs(share - 0.5) < 0.05  # weight 2 of 4


def test_build_loader_refuses_blocks_larger_than_a_source(pair_data):
    dataset = PairDataset(load_sources(pair_data))
    settings = SimpleNamespace(block_size=16, per_device_batch_size=16, max_steps=1, seed=0, num_workers=0)
    with pytest.raises(ValueError, match="source 'pictures' has 8 rows, fewer than block_size=16"):
        build_loader(dataset, None, settings, SimpleNamespace(num_processes=1, process_index=0))


@pytest.fixture(scope="module")
def processor():
    return build_processor("qwen2_vl")


def _squeeze(text: str) -> str:
    return "".join(text.split())  # the word-level test tokenizer decodes with a space between all tokens


def _decoded_rows(processor, chunks) -> list[str]:
    """Each row's unpadded text, without whitespace."""
    return [_squeeze(processor.tokenizer.decode(ids[mask.bool()])) for chunk in chunks
            for ids, mask in zip(chunk["input_ids"], chunk["attention_mask"])]  # fmt: skip


def test_pair_collator_puts_the_positive_of_query_i_at_row_i_times_1_plus_m(pair_data, processor):
    dataset = PairDataset(load_sources(pair_data))
    examples = [dataset[i] for i in (0, 9, 33)]
    batch = PairCollator(processor, {}, (), num_hard_negatives=2, chunk_size=4)(examples)
    targets = _decoded_rows(processor, batch["target"])
    assert [len(chunk["input_ids"]) for chunk in batch["target"]] == [4, 4, 1]
    for i, example in enumerate(examples):
        assert "user" + _squeeze(example.inputs["positive"]["text"]) + "<|im_end|>" in targets[i * 3]
        assert "user" + _squeeze(example.inputs["negative-1"]["text"]) + "<|im_end|>" in targets[i * 3 + 2]


def test_pair_collator_gives_targets_of_equal_content_equal_ids(pair_data, processor):
    dataset = PairDataset(load_sources(pair_data))
    first, other = dataset[0], dataset[9]
    same = copy.deepcopy(first)
    same.id = "copy"  # another row whose positive has the same content
    batch = PairCollator(processor, {}, (), num_hard_negatives=0, chunk_size=4)([first, other, same])
    ids = batch["target_ids"].tolist()
    assert ids[0] == ids[2] and ids[0] != ids[1]
    assert ids[0] == content_id(first.inputs["positive"], "")
    plain = PairCollator(processor, {}, (), 0, 4, mask_duplicate_targets=False)([first, other])
    assert "target_ids" not in plain


def test_pair_collator_appends_the_stored_query_trace(pair_data, processor):
    dataset = PairDataset(load_sources(pair_data))
    traces = {("words/0", "query"): "<think> red </think> a red cat"}
    batch = PairCollator(processor, traces, ("query",), num_hard_negatives=0, chunk_size=4)([dataset[0]])
    expected = "cat?red<|im_end|><|im_start|>assistant<think>red</think>aredcat<|emb|>"
    assert _decoded_rows(processor, batch["query"])[0].endswith(expected)
    assert _decoded_rows(processor, batch["target"])[0].endswith("userredcat<|im_end|><|im_start|>assistant<|emb|>")


def test_trace_dropout_embeds_a_share_of_queries_with_the_empty_trace_reproducibly(pair_data, processor):
    dataset = PairDataset(load_sources(pair_data))
    examples = [dataset[i] for i in range(32)]
    traces = {(example.id, "query"): "<think> red </think> a red cat" for example in examples}
    collator = PairCollator(processor, traces, ("query",), 0, 4, trace_dropout=0.5, seed=3)
    kept = collator.query_traces(examples)
    dropped = [i for i, trace in enumerate(kept) if trace == ""]
    assert 6 <= len(dropped) <= 26  # about half of 32 (a binomial draw, fixed by the seed)
    assert all(kept[i] == traces[(examples[i].id, "query")] for i in range(32) if i not in dropped)
    assert collator.query_traces(examples) == kept  # the same batch draws the same (a resumed run, a worker)
    other_seed = PairCollator(processor, traces, ("query",), 0, 4, trace_dropout=0.5, seed=4).query_traces(examples)
    assert other_seed != kept
    assert PairCollator(processor, traces, ("query",), 0, 4).query_traces(examples) == list(traces.values())
    rows = _decoded_rows(processor, collator(examples[:8])["query"])
    drawn = collator.query_traces(examples[:8])  # another batch: its own draws
    assert "" in drawn and any(drawn)
    for row, trace in zip(rows, drawn):  # what is embedded: the prompt, then the trace or nothing, then <|emb|>
        assert row.endswith("assistant" + trace.replace(" ", "") + "<|emb|>")


def test_pair_collator_missing_trace_names_the_example(pair_data, processor):
    dataset = PairDataset(load_sources(pair_data))
    with pytest.raises(ValueError, match=r"source 'words' row 1 \(id 'words/1'\): the trace store has no 'query'"):
        PairCollator(processor, {}, ("query",), 0, 4)([dataset[1]])


def test_pair_collator_too_few_hard_negatives_raises(pair_data, processor):
    dataset = PairDataset(load_sources(pair_data))
    with pytest.raises(ValueError, match=r"row 2 \(id 'words/2'\): has 2 hard negatives, num_hard_negatives=3"):
        PairCollator(processor, {}, (), 3, 4)([dataset[2]])


def test_row_to_example_keeps_a_separate_instruction():
    example = row_to_example({"qry": "a cat", "qry_inst": "Find the image", "pos_text": "cat"},
                             Source(name="s", path="s.jsonl"), 0)  # fmt: skip
    assert example.inputs["query"]["instruction"] == "Find the image"


def test_pair_collator_stored_trace_with_a_reserved_token_names_the_example(pair_data, processor):
    dataset = PairDataset(load_sources(pair_data))
    traces = {("words/0", "query"): "a trace with <|emb|> inside"}
    with pytest.raises(ValueError, match=r"row 0 \(id 'words/0'\) query: .*reserved token '<\|emb\|>'"):
        PairCollator(processor, traces, ("query",), 0, 4)([dataset[0]])
