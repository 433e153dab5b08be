"""Training data: MMEB-train-style pair sources, the same-source block sampler and the collators.

A data config (YAML or JSON) lists the sources, as VLM2Vec-V2's `train_v2.yaml` does:

    sources:
      - {name: MSCOCO_i2t, path: data/MSCOCO_i2t.parquet, image_dir: data/images, weight: 2.0, task: retrieval}
      - {name: OK-VQA, path: data/OK-VQA.jsonl, image_dir: data/images, task: vqa}

Each row has MMEB-train's columns: `qry` (instruction + text; the Phi-3 image token `<|image_1|>` marks the image
and is removed, since the processor inserts the backbone's own placeholder), `qry_image_path`, `pos_text`,
`pos_image_path` and optionally `neg_text` / `neg_image_path` (a string or a list: hard negatives), `qry_inst` /
`pos_inst` (a separate instruction) and `id`. A side may have a video instead of an image: `qry_video_path`,
`pos_video_path`, `neg_video_path` (a video file or a folder of frames, sampled by the processor). Image and video
paths are relative to the source's `image_dir`. A row is
turned into an `Example` whose `inputs` map each side (`"query"`, `"positive"`, `"negative-0"`, ...) to a processor
input dict; prompts are built only by the processor's builders. A bad row raises, naming the source and row.
"""

import bisect
import hashlib
import itertools
import json
import os
import random
from dataclasses import dataclass, field

import torch
import yaml
from datasets import load_dataset
from torch.utils.data import DataLoader, Dataset
from transformers import BatchFeature

from training.traces import TraceStore
from tte.processing_tte import TASK_FAMILIES, TTEInput, TTEProcessor


PHI3_IMAGE_TOKEN = "<|image_1|>"  # MMEB-train's image placeholder
KNOWN_COLUMNS = {"id", "qry", "qry_inst", "qry_image_path", "qry_video_path", "pos_text", "pos_inst", "pos_image_path",
                 "pos_video_path", "neg_text", "neg_image_path", "neg_video_path"}  # fmt: skip
TRACE_KINDS = ("query", "positive", "negative")
FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}


@dataclass
class Source:
    """One training source: a parquet or JSON-lines file (or glob) of pair rows.

    Args:
        name: source name, used in error messages and default example ids.
        path: the rows; `.parquet`, `.jsonl` or `.json` (a glob is allowed).
        image_dir: folder that image paths are relative to.
        weight: sampling weight; blocks are drawn from sources with probability proportional to it.
        task: ECR prompt family of the source (`processing_tte.TASK_FAMILIES`).
    """

    name: str
    path: str
    image_dir: str = ""
    weight: float = 1.0
    task: str = "retrieval"

    def __post_init__(self):
        if os.path.splitext(self.path)[1] not in FORMATS:
            raise ValueError(f"source {self.name!r}: path {self.path!r} must end with one of {sorted(FORMATS)}")
        if not self.weight > 0:
            raise ValueError(f"source {self.name!r}: weight must be > 0, got {self.weight}")
        if self.task not in TASK_FAMILIES:
            raise ValueError(f"source {self.name!r}: task={self.task!r} is not one of {TASK_FAMILIES}")


def load_sources(config_path: str) -> list[Source]:
    """Read the `sources:` list of a YAML or JSON data config; relative paths are relative to the config file."""
    with open(config_path) as handle:
        config = yaml.safe_load(handle) if config_path.endswith((".yaml", ".yml")) else json.load(handle)
    if not isinstance(config, dict) or not config.get("sources"):
        raise ValueError(f"{config_path}: expected a mapping with a non-empty 'sources' list")
    base = os.path.dirname(os.path.abspath(config_path))
    sources = []
    for index, entry in enumerate(config["sources"]):
        unknown = set(entry) - {"name", "path", "image_dir", "weight", "task"}
        if unknown:
            raise ValueError(f"{config_path}: sources[{index}] has unknown keys {sorted(unknown)}")
        entry = {**entry, "path": os.path.join(base, entry["path"]),
                 "image_dir": os.path.join(base, entry.get("image_dir", ""))}  # fmt: skip
        sources.append(Source(**entry))
    names = [source.name for source in sources]
    if len(set(names)) != len(names):
        raise ValueError(f"{config_path}: source names must be unique, got {names}")
    return sources


@dataclass
class Example:
    """One pair row: `inputs` maps each side (`query`, `positive`, `negative-<j>`) to a processor input dict."""

    id: str
    source: str
    row: int
    inputs: dict[str, dict] = field(default_factory=dict)

    @property
    def where(self) -> str:
        return f"source {self.source!r} row {self.row} (id {self.id!r})"

    @property
    def num_negatives(self) -> int:
        return sum(side.startswith("negative-") for side in self.inputs)


def _as_list(value) -> list[str]:
    if value is None or value == "":
        return []
    return [value] if isinstance(value, str) else list(value)


def _side_input(source: Source, text, image_path, instruction, where: str, video_path=None) -> dict:
    """Processor input dict of one side of a row."""
    if not isinstance(text or "", str) or not isinstance(image_path or "", str):
        raise ValueError(f"{where}: text and image path must be strings, got {text!r} and {image_path!r}")
    if not isinstance(video_path or "", str):
        raise ValueError(f"{where}: a video path must be a string, got {video_path!r}")
    if image_path and video_path:
        raise ValueError(f"{where}: has both an image path and a video path; a side takes one")
    if PHI3_IMAGE_TOKEN in (text or "") and not image_path:
        raise ValueError(f"{where}: text has the image token {PHI3_IMAGE_TOKEN!r} but no image path is given")
    text = (text or "").replace(PHI3_IMAGE_TOKEN, "").strip()
    item = {"task": source.task}
    if text:
        item["text"] = text
    if instruction:
        item["instruction"] = instruction
    if image_path:
        item["image"] = os.path.join(source.image_dir, image_path)
        if not os.path.isfile(item["image"]):
            raise ValueError(f"{where}: image file {item['image']!r} does not exist")
    if video_path:
        item["video"] = os.path.join(source.image_dir, video_path)
        if not os.path.exists(item["video"]):
            raise ValueError(f"{where}: video {item['video']!r} (a file or a folder of frames) does not exist")
    if not {"text", "image", "video"} & set(item):
        raise ValueError(f"{where}: neither text nor image nor video")
    return item


def row_to_example(row: dict, source: Source, index: int) -> Example:
    """Turn one MMEB-train-style row into an `Example`; raises `ValueError` naming source and row."""
    where = f"source {source.name!r} row {index}"
    example = Example(str(row["id"]) if row.get("id") is not None else f"{source.name}/{index}", source.name, index)
    example.inputs["query"] = _side_input(source, row.get("qry"), row.get("qry_image_path"), row.get("qry_inst"),
                                          f"{where} query", row.get("qry_video_path"))  # fmt: skip
    example.inputs["positive"] = _side_input(source, row.get("pos_text"), row.get("pos_image_path"),
                                             row.get("pos_inst"), f"{where} positive",
                                             row.get("pos_video_path"))  # fmt: skip
    columns = {name: _as_list(row.get(name)) for name in ("neg_text", "neg_image_path", "neg_video_path")}
    count = max(map(len, columns.values()))
    for name, values in columns.items():
        if values and len(values) != count:
            lengths = ", ".join(f"{len(v)} {n}" for n, v in columns.items() if v)
            raise ValueError(f"{where}: the negative columns disagree on the number of negatives ({lengths} entries)")
        columns[name] = values or [""] * count
    for j, (text, image, video) in enumerate(zip(*columns.values())):
        # Negatives are targets: they take the positive side's instruction.
        example.inputs[f"negative-{j}"] = _side_input(source, text, image, row.get("pos_inst"), f"{where} negative {j}",
                                                      video)  # fmt: skip
    return example


def load_rows(source: Source):
    """The rows of a source as a `datasets.Dataset`; its columns must be MMEB-train columns."""
    rows = load_dataset(FORMATS[os.path.splitext(source.path)[1]], data_files=source.path, split="train")
    unknown = set(rows.column_names) - KNOWN_COLUMNS
    if unknown:
        raise ValueError(f"source {source.name!r}: unknown columns {sorted(unknown)}; known: {sorted(KNOWN_COLUMNS)}")
    for side, columns in (("query", ("qry", "qry_image_path", "qry_video_path")),
                          ("positive", ("pos_text", "pos_image_path", "pos_video_path"))):
        if not set(columns) & set(rows.column_names):
            raise ValueError(f"source {source.name!r}: no {side} column; it needs one of {columns}")
    return rows


class PairDataset(Dataset):
    """All sources, concatenated; every row is validated (and example ids checked unique) when loading.

    Args:
        sources: the sources, in data-config order.
    """

    def __init__(self, sources: list[Source]):
        self.sources = sources
        self.tables = [load_rows(source) for source in sources]
        self.offsets = [0]
        for table in self.tables:
            self.offsets.append(self.offsets[-1] + len(table))
        seen = {}
        self.keys = []  # (example id, its sides) per index, kept so callers need not rebuild every example
        for index in range(len(self)):
            example = self[index]
            if example.id in seen:
                raise ValueError(f"{example.where}: example id {example.id!r} also used by {seen[example.id]}")
            seen[example.id] = example.where
            self.keys.append((example.id, tuple(example.inputs)))

    def __len__(self) -> int:
        return self.offsets[-1]

    def __getitem__(self, index: int) -> Example:
        source_index = bisect.bisect_right(self.offsets, index) - 1
        row = index - self.offsets[source_index]
        return row_to_example(self.tables[source_index][row], self.sources[source_index], row)

    @property
    def sizes(self) -> list[int]:
        return [len(table) for table in self.tables]

    @property
    def has_videos(self) -> bool:
        """Whether any source has a video column."""
        return any(name.endswith("_video_path") for table in self.tables for name in table.column_names)


def _endless_order(size: int, seed: str):
    """Indices `0..size-1` in a fresh shuffled order per pass, forever."""
    for epoch in itertools.count():
        order = list(range(size))
        random.Random(f"{seed}/{epoch}").shuffle(order)
        yield from order


class BlockBatchSampler:
    """Yields this process's slice of each global batch; batches are cut from a stream of same-source blocks.

    As VLM2Vec-V2 interleaves its sources: each block of `block_size` consecutive examples comes from one source,
    drawn with probability proportional to its weight, so in-batch negatives are harder. The stream depends only on
    (sizes, weights, block_size, seed), never on the number of processes, so a run on n processes sees the same
    global batches as a run on one. `start_step` skips batches already trained on (exact resume).

    Args:
        sizes: rows per source, in `PairDataset` order.
        weights: sampling weight per source.
        block_size: consecutive examples drawn from one source.
        global_batch_size: examples per step over all processes; a multiple of `num_processes`.
        num_steps: total steps; the sampler stops after them.
        seed: seed of the stream.
        process_index, num_processes: this process's slice.
        start_step: first step to yield.
    """

    def __init__(self, sizes: list[int], weights: list[float], block_size: int, global_batch_size: int,
                 num_steps: int, seed: int, process_index: int = 0, num_processes: int = 1,
                 start_step: int = 0):  # fmt: skip
        if global_batch_size % num_processes:
            raise ValueError(f"global batch {global_batch_size} is not a multiple of num_processes={num_processes}")
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        self.sizes, self.weights, self.block_size = sizes, weights, block_size
        self.global_batch_size, self.num_steps, self.seed = global_batch_size, num_steps, seed
        self.start_step = start_step
        local = global_batch_size // num_processes
        self.local_slice = slice(process_index * local, (process_index + 1) * local)

    def _stream(self):
        offsets = [sum(self.sizes[:i]) for i in range(len(self.sizes))]
        orders = [_endless_order(size, f"{self.seed}/{i}") for i, size in enumerate(self.sizes)]
        choose = random.Random(self.seed)
        while True:
            source = choose.choices(range(len(self.sizes)), weights=self.weights)[0]
            for _ in range(self.block_size):
                yield offsets[source] + next(orders[source])

    def __iter__(self):
        stream = self._stream()
        for step in range(self.num_steps):
            batch = [next(stream) for _ in range(self.global_batch_size)]
            if step >= self.start_step:
                yield batch[self.local_slice]

    def __len__(self) -> int:
        return max(self.num_steps - self.start_step, 0)


def parse_trace_kinds(value: str) -> tuple[str, ...]:
    """`"query,positive"` -> `("query", "positive")`; the empty string means no side gets a trace."""
    kinds = tuple(kind.strip() for kind in value.split(",") if kind.strip())
    for kind in kinds:
        if kind not in TRACE_KINDS:
            raise ValueError(f"trace side {kind!r} is not one of {TRACE_KINDS}")
    return kinds


def load_traces(folder: str | None, kinds: tuple[str, ...], processor: TTEProcessor) -> dict[tuple[str, str], str]:
    """The traces of a store, checked against the processor's prompt set; `{}` when no side uses traces."""
    if not kinds:
        return {}
    if folder is None:
        raise ValueError(f"trace sides {kinds} need a trace store: pass --traces <folder> (or --trace_sides '')")
    store = TraceStore(folder)
    if store.prompt_set_version != processor.prompt_set_version:
        raise ValueError(
            f"trace store {folder!r} was made with prompt set {store.prompt_set_version!r}, but the model's processor "
            f"uses {processor.prompt_set_version!r}"
        )
    return store.read()


def parse_side(processor: TTEProcessor, example: Example, side: str) -> TTEInput:
    """Parse one side of an example with the processor, naming source, row and side on error."""
    try:
        return processor.parse_input(example.inputs[side], 0)
    except (ValueError, TypeError) as error:
        raise type(error)(f"{example.where} {side}: {error}") from None


def check_trace(processor: TTEProcessor, example: Example, side: str, trace) -> str:
    """`processor.check_trace` (a str without reserved tokens), naming the example and side on error."""
    return processor.check_trace(trace, f"{example.where} {side}")


def trace_of(example: Example, side: str, traces: dict, kinds: tuple[str, ...], processor: TTEProcessor) -> str:
    """The stored trace of one side when its kind uses traces, else `""` (the no-thinking embedding input)."""
    if side.split("-")[0] not in kinds:
        return ""
    if (example.id, side) not in traces:
        raise ValueError(f"{example.where}: the trace store has no {side!r} trace; run training.generate_traces")
    return check_trace(processor, example, side, traces[(example.id, side)])


def chunked(values: list, size: int) -> list[list]:
    """`values` cut into consecutive lists of at most `size`."""
    return [values[start : start + size] for start in range(0, len(values), size)]


def content_id(item: dict, trace: str) -> int:
    """A signed 64-bit id of one embedding input's content (its input dict and trace): equal inputs, equal ids."""
    text = json.dumps([item, trace], sort_keys=True, ensure_ascii=False)
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little", signed=True)


class PairCollator:
    """Builds GradCache chunks of embedding inputs: `{"query": [BatchFeature], "target": [BatchFeature]}`, plus
    `"target_ids"` (each target's `content_id`) when duplicate targets are masked.

    Targets are laid out per query as `[positive, negative-0, ..., negative-(m-1)]`, so the positive of query i is
    target row `i * (1 + m)`.

    Args:
        processor: the model's processor; it builds every input (`build_embedding_inputs`).
        traces: `{(example id, side): trace}` from `load_traces`.
        trace_kinds: sides that get their stored trace; the others get the empty trace.
        num_hard_negatives: m, hard negatives per query; an example with fewer raises.
        chunk_size: rows per chunk (one forward pass).
        mask_duplicate_targets: add `target_ids`, so that `info_nce` does not treat an in-batch target with the same
            content as a query's positive as its negative.
        trace_dropout: probability that a query is embedded with the empty trace instead of its trace.
        seed: seeds the dropout draws.

    A dropout draw is a hash of the seed, the batch's example ids and the query's id: the same batch drops the same
    traces in a resumed run or in a data-loader worker, and an example seen in two batches draws twice.
    """

    def __init__(self, processor: TTEProcessor, traces: dict, trace_kinds: tuple[str, ...], num_hard_negatives: int,
                 chunk_size: int, mask_duplicate_targets: bool = True, trace_dropout: float = 0.0, seed: int = 0):
        self.processor, self.traces, self.trace_kinds = processor, traces, trace_kinds
        self.num_hard_negatives, self.chunk_size = num_hard_negatives, chunk_size
        self.mask_duplicate_targets = mask_duplicate_targets
        self.trace_dropout, self.seed = trace_dropout, seed

    def _drops_trace(self, batch_ids: str, example: Example) -> bool:
        digest = hashlib.blake2b(f"{self.seed}\0{batch_ids}\0{example.id}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "little") / 2**64 < self.trace_dropout

    def query_traces(self, examples: list[Example]) -> list[str]:
        """Each query's trace, or the empty trace where trace dropout draws it."""
        traces = self.traces_of([(example, "query") for example in examples])
        if not self.trace_dropout:
            return traces
        batch_ids = "\0".join(example.id for example in examples)
        return ["" if self._drops_trace(batch_ids, example) else trace for example, trace in zip(examples, traces)]

    def _target_sides(self, example: Example) -> list[str]:
        if example.num_negatives < self.num_hard_negatives:
            raise ValueError(
                f"{example.where}: has {example.num_negatives} hard negatives, num_hard_negatives="
                f"{self.num_hard_negatives} needs that many"
            )
        return ["positive"] + [f"negative-{j}" for j in range(self.num_hard_negatives)]

    def traces_of(self, pairs: list[tuple[Example, str]]) -> list[str]:
        return [trace_of(example, side, self.traces, self.trace_kinds, self.processor) for example, side in pairs]

    def build_chunks(self, pairs: list[tuple[Example, str]], traces: list[str]) -> list[BatchFeature]:
        items = [parse_side(self.processor, example, side) for example, side in pairs]
        chunks = zip(chunked(items, self.chunk_size), chunked(traces, self.chunk_size))
        return [self.processor.build_embedding_inputs(chunk, chunk_traces) for chunk, chunk_traces in chunks]

    def __call__(self, examples: list[Example]) -> dict:
        queries = [(example, "query") for example in examples]
        targets = [(example, side) for example in examples for side in self._target_sides(example)]
        target_traces = self.traces_of(targets)
        batch = {"query": self.build_chunks(queries, self.query_traces(examples)),
                 "target": self.build_chunks(targets, target_traces)}  # fmt: skip
        if self.mask_duplicate_targets:
            batch["target_ids"] = torch.tensor([content_id(example.inputs[side], trace)
                                                for (example, side), trace in zip(targets, target_traces)])  # fmt: skip
        return batch


class SFTCollator:
    """Builds reasoner-SFT chunks: the reasoning prompt, then the trace and the stop token as the only labels.

    The prompt comes from `processor.build_reasoning_inputs`, exactly what the reasoner sees when generating; the
    trace is tokenised on its own, as generation produces it after the prompt ids, and ends with the tokenizer's
    EOS (the stop token generation halts on).

    Args:
        processor: the model's processor.
        traces: `{(example id, side): trace}` from `load_traces`.
        trace_kinds: sides trained on; each example gives one row per side (`negative` means every negative).
        chunk_size: rows per chunk (one forward pass).
    """

    def __init__(self, processor: TTEProcessor, traces: dict, trace_kinds: tuple[str, ...], chunk_size: int):
        if not trace_kinds:
            raise ValueError("reasoner SFT needs at least one trace side")
        self.processor, self.traces, self.trace_kinds, self.chunk_size = processor, traces, trace_kinds, chunk_size

    def build(self, pairs: list[tuple[Example, str]]) -> BatchFeature:
        items = [parse_side(self.processor, example, side) for example, side in pairs]
        traces = [trace_of(example, side, self.traces, self.trace_kinds, self.processor) for example, side in pairs]
        return self.processor.build_sft_inputs(items, traces)

    def __call__(self, examples: list[Example]) -> list[BatchFeature]:
        pairs = [(example, side) for example in examples for side in example.inputs
                 if side.split("-")[0] in self.trace_kinds]  # fmt: skip
        return [self.build(chunk) for chunk in chunked(pairs, self.chunk_size)]


def build_loader(dataset: PairDataset, collator, settings, accelerator, start_step: int = 0) -> DataLoader:
    """A loader over this process's slices of the global batches, from `start_step` on.

    Args:
        dataset: the pairs.
        collator: `PairCollator` or `SFTCollator`.
        settings: the run's `TrainSettings` (batch size, block size, steps, seed, workers).
        accelerator: gives this process's index and the number of processes.
        start_step: first step to load (a resumed run's position).
    """
    block_size = settings.block_size or settings.per_device_batch_size
    for source, size in zip(dataset.sources, dataset.sizes):
        if size < block_size:  # a block would repeat examples: the repeats are false in-batch negatives
            raise ValueError(f"source {source.name!r} has {size} rows, fewer than block_size={block_size}")
    sampler = BlockBatchSampler(
        dataset.sizes, [source.weight for source in dataset.sources], block_size,
        settings.per_device_batch_size * accelerator.num_processes,
        settings.max_steps, settings.seed, accelerator.process_index, accelerator.num_processes, start_step,
    )  # fmt: skip
    # A seeded generator, so creating the iterator does not draw from the global RNG that a resume restores.
    generator = torch.Generator().manual_seed(settings.seed)
    return DataLoader(dataset, batch_sampler=sampler, collate_fn=collator, num_workers=settings.num_workers,
                      generator=generator)  # fmt: skip


__all__ = ["Source", "Example", "PairDataset", "BlockBatchSampler", "PairCollator", "content_id", "SFTCollator",
           "load_sources", "load_traces", "parse_trace_kinds", "build_loader", "parse_side", "check_trace", "trace_of",
           "chunked"]  # fmt: skip
