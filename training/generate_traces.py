"""Generate reasoning traces for a training set into a trace store (see `training/traces.py`).

The reasoner is a local TTE model (its built-in reasoner: a student's `reasoner` or a unified backbone) or, with
`--endpoint_url`, any model behind an OpenAI-compatible chat endpoint (vLLM, SGLang, TGI), e.g. the TTE_t teacher.
Either way the prompts come from the TTE processor of `--model_path` and decoding is greedy and bounded.

Rerunning the same command resumes: traces already in the store are skipped, and an interrupted run loses at most
the batch it was writing. Under `accelerate launch` the work is split between processes, which write one store at
once (`training/traces.py`).

    accelerate launch -m training.generate_traces --model_path runs/reasoner/model --data_config data.yaml \
        --output_dir traces/student --sides query --max_new_tokens 128
    python -m training.generate_traces --model_path tte-init --data_config data.yaml --output_dir traces/teacher \
        --endpoint_url http://127.0.0.1:8000/v1 --endpoint_model Qwen/Qwen2.5-VL-72B-Instruct
"""

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from accelerate import Accelerator
from tqdm.auto import tqdm

from training.data import PairDataset, check_trace, load_sources, parse_side, parse_trace_kinds
from training.loop import make_accelerator, parse_settings, pause_if_requested
from training.traces import TraceStore, make_manifest
from tte.modeling_tte import TTEModel
from tte.processing_tte import TTEInput, TTEProcessor
from tte.reasoning_tte import OpenAIChatReasoner


logger = logging.getLogger("training")


@dataclass
class TraceSettings:
    model_path: str = field(metadata={"help": "TTE model folder: the local reasoner, and the processor (prompts)."})
    data_config: str = field(metadata={"help": "YAML/JSON data config listing the sources (see training/data.py)."})
    output_dir: str = field(metadata={"help": "Trace store folder; rerun the command to resume it."})
    sides: str = field(default="query", metadata={"help": "Comma list of query,positive,negative to reason about."})
    batch_size: int = field(default=8, metadata={"help": "Inputs per generate call (or endpoint round)."})
    max_new_tokens: int = field(default=128, metadata={"help": "Trace length bound."})
    reasoner_name: str | None = field(default=None, metadata={"help": "Reasoner id recorded with every trace; "
                                      "default: --endpoint_model, or the model folder's name."})  # fmt: skip
    endpoint_url: str | None = field(default=None, metadata={"help": "OpenAI-compatible API root (e.g. "
                                     "http://127.0.0.1:8000/v1); reason with it, not the local model."})  # fmt: skip
    endpoint_model: str | None = field(default=None, metadata={"help": "Model name the endpoint serves."})
    api_key_env: str = field(default="OPENAI_API_KEY", metadata={"help": "Environment variable with the API key."})
    max_concurrency: int = field(default=8, metadata={"help": "Concurrent endpoint requests."})

    def __post_init__(self):
        for name in ("batch_size", "max_new_tokens", "max_concurrency"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1, got {getattr(self, name)}")
        if (self.endpoint_url is None) != (self.endpoint_model is None):
            raise ValueError("--endpoint_url and --endpoint_model go together")


def load_reasoner(settings: TraceSettings, device) -> tuple[Callable[[list[TTEInput]], list[str]], TTEProcessor]:
    """`(reason, processor)`: `reason(items)` returns one trace per input."""
    if settings.endpoint_url is not None:
        processor = TTEProcessor.from_pretrained(settings.model_path)  # our class: no code from the folder runs
        client = OpenAIChatReasoner(settings.endpoint_url, settings.endpoint_model,
                                    api_key=os.environ.get(settings.api_key_env), max_tokens=settings.max_new_tokens,
                                    max_workers=settings.max_concurrency)  # fmt: skip
        return (lambda items: client(items, processor)), processor
    model = TTEModel.from_pretrained(settings.model_path).to(device).eval()
    if model.config.variant == "teacher":
        raise ValueError(f"{settings.model_path!r} is a 'teacher' model without a reasoner; pass --endpoint_url")
    return (lambda items: model.generate_traces(items, settings.max_new_tokens)[0]), model.processor


def open_store(settings: TraceSettings, processor: TTEProcessor, accelerator: Accelerator,
               videos: bool = False) -> TraceStore:  # fmt: skip
    """Create (main process) or open the store; its manifest must match this run's reasoner and decoding, and, for
    data with videos, the processor's video sampling (which frames the reasoner saw is part of a trace's key)."""
    name = settings.reasoner_name or settings.endpoint_model or os.path.basename(os.path.normpath(settings.model_path))
    decoding = {"greedy": True, "max_new_tokens": settings.max_new_tokens}
    if videos:  # only then: the stores of data without videos keep the manifest they had
        decoding["video_sampling"] = processor.video_sampling.to_dict()
    manifest = make_manifest(name, processor.prompt_set_version, decoding)
    if accelerator.is_main_process:
        TraceStore.create(settings.output_dir, manifest)  # raises if an existing store was made differently
    accelerator.wait_for_everyone()
    return TraceStore(settings.output_dir)


def pending(dataset: PairDataset, kinds: tuple[str, ...], done: dict) -> list[tuple[int, str]]:
    """`(example index, side)` of every wanted trace not in the store yet, in dataset order."""
    return [(index, side) for index, (example_id, sides) in enumerate(dataset.keys) for side in sides
            if side.split("-")[0] in kinds and (example_id, side) not in done]  # fmt: skip


def generate_batch(reason, processor: TTEProcessor, dataset: PairDataset, batch: list[tuple[int, str]]) -> list[tuple]:
    """`(example id, side, trace)` for one batch of `(example index, side)`."""
    examples = [dataset[index] for index, _ in batch]
    traces = reason([parse_side(processor, example, side) for example, (_, side) in zip(examples, batch)])
    return [(example.id, side, check_trace(processor, example, side, trace))
            for example, (_, side), trace in zip(examples, batch, traces)]  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    settings = parse_settings(TraceSettings, argv)
    accelerator = make_accelerator()
    kinds = parse_trace_kinds(settings.sides)
    dataset = PairDataset(load_sources(settings.data_config))
    reason, processor = load_reasoner(settings, accelerator.device)
    store = open_store(settings, processor, accelerator, dataset.has_videos)
    done = store.read()
    todo = pending(dataset, kinds, done)
    accelerator.wait_for_everyone()  # every process has read the store before any appends
    logger.info("%d traces in the store, %d to generate", len(done), len(todo))
    started = time.perf_counter()
    with accelerator.split_between_processes(todo) as mine:
        batches = [mine[start : start + settings.batch_size] for start in range(0, len(mine), settings.batch_size)]
        for count, batch in enumerate(tqdm(batches, desc="Traces", disable=not accelerator.is_main_process), start=1):
            store.append(generate_batch(reason, processor, dataset, batch))
            pause_if_requested(count)
    accelerator.wait_for_everyone()
    logger.info("generated %d traces in %.1fs", len(todo), time.perf_counter() - started)


if __name__ == "__main__":
    main()
