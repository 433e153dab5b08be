"""Settings, accelerate setup and the training loop shared by the training scripts.

A script parses its settings dataclass (`parse_settings`), starts the run (`start_run`), chooses what to train
and hands it to `fit`, which prepares it with accelerate (DDP, or FSDP from an accelerate config file),
resumes from the newest checkpoint when asked, runs the steps with a progress bar, logs loss and throughput to
`output_dir/metrics.jsonl`, saves atomic checkpoints and finally exports the model (LoRA merged) with
`save_pretrained`.
"""

import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field

import torch
import transformers
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, DistributedType, set_seed
from peft import LoraConfig, PeftModel, get_peft_model
from tqdm.auto import tqdm
from transformers import HfArgumentParser, get_scheduler

from training.checkpoint import (
    Progress,
    export_model,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
    write_atomic,
)
from training.data import PairCollator, PairDataset, build_loader, load_traces, parse_trace_kinds
from training.losses import GradCache
from tte.modeling_tte import TTEModel


logger = logging.getLogger("training")
PAUSE_ENV = "TTE_PAUSE_AFTER"
# Decoder projections of transformers' Llama / Qwen families; vision towers use other names (`qkv`, `proj`, `fc1`).
LORA_TARGETS = r"(.*\.)?layers\.\d+\.(self_attn|mlp)\.(q|k|v|o|gate|up|down)_proj"
METRICS = "metrics.jsonl"


def fast_bf16() -> bool:
    """Whether bf16 compute is faster than fp32 on the device a run will use.

    True on a CUDA device with bf16 support, and on a CPU whose oneDNN has native bf16 kernels (AVX512-BF16 or AMX).
    Elsewhere bf16 is emulated: on an AVX2-only CPU a SmolLM2-sized forward measured 5.2x slower under bf16 autocast
    than in fp32 (`benchmarks/bench_bf16.py`), so autocast would make training several times slower, not faster.
    """
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


@dataclass
class TrainSettings:
    """Settings every training script shares."""

    model_path: str = field(metadata={"help": "TTE model folder to start from (a save_pretrained folder)."})
    data_config: str = field(metadata={"help": "YAML/JSON data config listing the sources (see training/data.py)."})
    output_dir: str = field(metadata={"help": "Run folder: checkpoints/, metrics.jsonl and the exported model/."})
    traces: str | None = field(default=None, metadata={"help": "Trace store folder (training.generate_traces)."})
    trace_sides: str = field(default="query", metadata={"help": "Comma list of query,positive,negative: sides that "
                             "use their stored trace; the others get the empty trace. '' for none."})  # fmt: skip
    max_steps: int = field(default=1000, metadata={"help": "Optimizer steps."})
    per_device_batch_size: int = field(default=8, metadata={"help": "Examples per process per step."})
    block_size: int | None = field(default=None, metadata={"help": "Consecutive examples from one source "
                                   "(default per_device_batch_size); fix it to compare process counts."})  # fmt: skip
    chunk_size: int = field(default=8, metadata={"help": "Rows per forward pass (GradCache chunk / SFT micro-batch)."})
    learning_rate: float = field(default=5e-5, metadata={"help": "Peak learning rate (AdamW)."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay."})
    lr_scheduler: str = field(default="linear", metadata={"help": "transformers scheduler name (linear, cosine, ...)."})
    warmup_steps: int = field(default=0, metadata={"help": "Learning-rate warmup steps."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping norm."})
    save_steps: int = field(default=500, metadata={"help": "Checkpoint every this many steps (and at the end)."})
    logging_steps: int = field(default=10, metadata={"help": "Log every this many steps."})
    seed: int = field(default=42, metadata={"help": "Seed of model randomness and of the data order."})
    resume: bool = field(default=False, metadata={"help": "Continue from output_dir's newest checkpoint."})
    dtype: str = field(default="float32", metadata={"help": "Weight dtype; use mixed_precision for bf16 compute."})
    mixed_precision: str = field(default="no", metadata={"help": "no, fp16, bf16 (accelerate autocast) or auto: "
                                 "bf16 where the device computes it fast, else no (see fast_bf16)."})  # fmt: skip
    num_workers: int = field(default=0, metadata={"help": "DataLoader worker processes."})

    def __post_init__(self):
        for name in ("max_steps", "per_device_batch_size", "chunk_size", "save_steps", "logging_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1, got {getattr(self, name)}")
        if not self.max_grad_norm > 0:
            raise ValueError(f"--max_grad_norm must be > 0, got {self.max_grad_norm}")
        if self.mixed_precision not in ("no", "fp16", "bf16", "auto"):
            raise ValueError(f"--mixed_precision must be no, fp16, bf16 or auto, got {self.mixed_precision!r}")
        if self.mixed_precision == "auto":  # resolved here, so the saved settings name what the run computed in
            self.mixed_precision = "bf16" if fast_bf16() else "no"
        if not isinstance(getattr(torch, self.dtype, None), torch.dtype):
            raise ValueError(f"--dtype {self.dtype!r} is not a torch dtype name (float32, bfloat16, ...)")


@dataclass
class ContrastiveSettings(TrainSettings):
    temperature: float = field(default=0.02, metadata={"help": "InfoNCE temperature."})
    num_hard_negatives: int = field(default=0, metadata={"help": "Hard negatives per query (neg_text/neg_image_path)."})
    mask_duplicate_targets: bool = field(default=True, metadata={"help": "Leave an in-batch target with the same "
                                         "content as a query's positive out of that query's negatives."})  # fmt: skip
    trace_dropout: float = field(default=0.0, metadata={"help": "Embed each query with the empty trace instead of "
                                 "its trace with this probability, so that thinking and non-thinking queries share "
                                 "one space (think='auto' mixes them)."})  # fmt: skip

    def __post_init__(self):
        super().__post_init__()
        if not 0.0 <= self.trace_dropout < 1.0:
            raise ValueError(f"--trace_dropout must be in [0, 1), got {self.trace_dropout}")


@dataclass
class LoraSettings(TrainSettings):
    """LoRA / DoRA adapter settings (`add_adapter`); with `lora` false the script trains what it trains without."""

    lora: bool = field(default=False, metadata={"help": "Train LoRA adapters (merged on export), not all weights."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=64, metadata={"help": "LoRA alpha."})
    lora_dropout: float = field(default=0.1, metadata={"help": "LoRA dropout."})
    use_dora: bool = field(default=False, metadata={"help": "DoRA (weight-decomposed LoRA)."})


@dataclass
class AdapterSettings(LoraSettings):
    """Settings of scripts that train backbone weights, fully or through LoRA / DoRA adapters."""

    freeze_vision: bool = field(default=True, metadata={"help": "Keep the vision tower frozen. With --lora, false "
                                "trains the whole tower beside the adapters (the exported model holds both)."})


def parse_settings(settings_class: type, argv: list[str] | None = None):
    """Parse flags, or a single YAML/JSON file holding the same fields, into `settings_class`."""
    parser = HfArgumentParser(settings_class)
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 1 and argv[0].endswith((".yaml", ".yml")):
        return parser.parse_yaml_file(argv[0])[0]
    if len(argv) == 1 and argv[0].endswith(".json"):
        return parser.parse_json_file(argv[0])[0]
    return parser.parse_args_into_dataclasses(argv)[0]


def setup_logging(accelerator: Accelerator) -> None:
    """INFO logs on the main process, warnings only elsewhere."""
    level = logging.INFO if accelerator.is_main_process else logging.WARNING
    logging.basicConfig(format="%(asctime)s %(name)s %(levelname)s: %(message)s", level=level, force=True)
    if not accelerator.is_main_process:
        transformers.logging.set_verbosity_error()


def make_accelerator(**kwargs) -> Accelerator:
    """An `Accelerator` that has joined every process the launcher started.

    Raises:
        ValueError: the launcher started several processes but accelerate set up fewer. This happens on machines
            without GPUs unless `ACCELERATE_USE_CPU=1` is set; each process would otherwise train (or generate)
            alone and repeat the others' work.
    """
    accelerator = Accelerator(**kwargs)
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if accelerator.num_processes != launched:
        raise ValueError(
            f"launched {launched} processes but accelerate joined {accelerator.num_processes}; on a machine without "
            "GPUs set ACCELERATE_USE_CPU=1 (multi-process CPU runs with gloo)"
        )
    setup_logging(accelerator)
    return accelerator


def start_run(settings: TrainSettings) -> Accelerator:
    """Create the accelerator, seed every library, and refuse to overwrite a run unless resuming it."""
    accelerator = make_accelerator(
        mixed_precision=settings.mixed_precision,
        # We count global optimizer steps; accelerate would otherwise step the scheduler once per process.
        step_scheduler_with_optimizer=False,
        # A text-only batch leaves a trainable vision tower without gradients; DDP must allow that.
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        raise ValueError(
            "DeepSpeed is not supported: accelerate's DeepSpeed wrapper steps the optimizer on every backward, and "
            "GradCache and SFT chunks backpropagate several times per step; use DDP or FSDP"
        )
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true" and \
            accelerator.distributed_type != DistributedType.FSDP:  # fmt: skip
        raise ValueError(
            f"an FSDP config was given but accelerate set up {accelerator.distributed_type}: accelerate runs FSDP "
            "only on GPU-like devices (not with ACCELERATE_USE_CPU=1)"
        )
    if accelerator.distributed_type == DistributedType.FSDP and getattr(settings, "lora", False):
        raise ValueError("--lora under FSDP is not supported (adapters cannot be merged into sharded weights); "
                         "use DDP for LoRA runs")  # fmt: skip
    if not settings.resume and latest_checkpoint(settings.output_dir) is not None:
        raise ValueError(f"{settings.output_dir!r} holds a checkpoint; pass --resume or pick a new --output_dir")
    set_seed(settings.seed)
    return accelerator


def load_model(settings: TrainSettings) -> TTEModel:
    model = TTEModel.from_pretrained(settings.model_path, dtype=getattr(torch, settings.dtype))
    model.processor  # load the processor now: it is saved with the exported model
    return model


def set_vision_tower_trainable(module: torch.nn.Module, trainable: bool) -> None:
    """Freeze or unfreeze every vision tower (`visual`, with its merger) inside `module`, peft-wrapped or not."""
    for name, submodule in module.named_modules():
        if name.split(".")[-1] == "visual":
            submodule.requires_grad_(trainable)


def add_adapter(module: torch.nn.Module, settings: LoraSettings, prefix: str = "") -> PeftModel:
    """Wrap `module` with LoRA / DoRA adapters on its decoder projections (names matching `prefix + LORA_TARGETS`)."""
    config = LoraConfig(r=settings.lora_r, lora_alpha=settings.lora_alpha, lora_dropout=settings.lora_dropout,
                        use_dora=settings.use_dora, target_modules=prefix + LORA_TARGETS)  # fmt: skip
    return get_peft_model(module, config)


def merge_adapters(module: torch.nn.Module) -> torch.nn.Module:
    """Fold trained adapters into the weights they wrap (in place) and drop the peft wrapper."""
    return module.merge_and_unload() if isinstance(module, PeftModel) else module


def pause_if_requested(count: int) -> None:
    """Fault injection for the crash tests: with `TTE_PAUSE_AFTER=n` the process stops after its n-th step (or
    trace batch) and waits to be killed, so a test can interrupt it at a known point."""
    if os.environ.get(PAUSE_ENV) == str(count):
        print(f"{PAUSE_ENV}: paused after {count}", file=sys.stderr, flush=True)
        while True:
            time.sleep(1)


def trim_metrics(path: str, last_step: int) -> None:
    """Drop logged steps after `last_step`: a resumed run logs them again."""
    if not os.path.exists(path):
        return
    with open(path) as handle:
        kept = [line for line in handle if line.endswith("\n") and json.loads(line)["step"] <= last_step]
    write_atomic(path, "".join(kept))


def log_metrics(path: str, record: dict) -> None:
    with open(path, "a") as handle:
        handle.write(json.dumps(record) + "\n")
    logger.info(" ".join(f"{key}={value:.6g}" if isinstance(value, float) else f"{key}={value}"
                         for key, value in record.items()))  # fmt: skip


def prepare_training(accelerator: Accelerator, module: torch.nn.Module, settings: TrainSettings):
    """AdamW over the trainable parameters and a transformers scheduler, prepared with the module."""
    trainable = [parameter for parameter in module.parameters() if parameter.requires_grad]
    if not trainable:
        raise ValueError("nothing to train: every parameter of the module is frozen")
    optimizer = torch.optim.AdamW(trainable, lr=settings.learning_rate, weight_decay=settings.weight_decay)
    scheduler = get_scheduler(settings.lr_scheduler, optimizer, num_warmup_steps=settings.warmup_steps,
                              num_training_steps=settings.max_steps)  # fmt: skip
    return accelerator.prepare(module, optimizer, scheduler)


def run_steps(accelerator, module, step_fn, loader, optimizer, scheduler, progress, settings) -> None:
    """The optimizer loop from `progress.step` to `settings.max_steps`, with logging and checkpoints."""
    is_main = accelerator.is_main_process
    metrics_path = os.path.join(settings.output_dir, METRICS)
    trainable = [parameter for parameter in module.parameters() if parameter.requires_grad]
    global_batch = settings.per_device_batch_size * accelerator.num_processes
    first_step, started = progress.step, time.perf_counter()
    bar = tqdm(total=settings.max_steps, initial=progress.step, disable=not is_main, desc="Training")
    module.train()
    for batch in loader:
        metrics = step_fn(batch)
        grad_norm = accelerator.clip_grad_norm_(trainable, settings.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        progress.step += 1
        bar.update(1)
        bar.set_postfix({key: f"{value:.4f}" for key, value in metrics.items()})
        if is_main and (progress.step % settings.logging_steps == 0 or progress.step == settings.max_steps):
            elapsed = time.perf_counter() - started
            throughput = (progress.step - first_step) * global_batch / elapsed
            log_metrics(metrics_path, {"step": progress.step, **metrics, "grad_norm": float(grad_norm),
                                       "lr": scheduler.get_last_lr()[0], "elapsed_s": elapsed,
                                       "examples_per_s": throughput})  # fmt: skip
        if progress.step % settings.save_steps == 0 or progress.step == settings.max_steps:
            save_checkpoint(accelerator, settings.output_dir, progress.step, settings)
        pause_if_requested(progress.step)
    bar.close()


def fit_contrastive(accelerator: Accelerator, model: TTEModel, module: torch.nn.Module, dataset: PairDataset,
                    settings: ContrastiveSettings) -> str:  # fmt: skip
    """`fit` with InfoNCE through GradCache over embedding-input chunks (the embedder's and the head's training)."""
    kinds = parse_trace_kinds(settings.trace_sides)
    traces = load_traces(settings.traces, kinds, model.processor)
    collator = PairCollator(model.processor, traces, kinds, settings.num_hard_negatives, settings.chunk_size,
                            settings.mask_duplicate_targets, settings.trace_dropout, settings.seed)  # fmt: skip
    return fit(accelerator, model, module, dataset, collator,
               lambda prepared: GradCache(prepared, accelerator, settings.temperature), settings)  # fmt: skip


def fit(accelerator: Accelerator, model: TTEModel, module: torch.nn.Module, dataset: PairDataset, collator,
        make_step, settings: TrainSettings) -> str:  # fmt: skip
    """Train `module` (the trainable part of `model`, possibly peft-wrapped) and export `model`.

    Args:
        accelerator: from `start_run`.
        model: the whole TTE model; it is what gets exported.
        module: what the optimizer trains and accelerate prepares (`model`, a submodule, or a peft wrapper).
        dataset: the training pairs.
        collator: turns a list of examples into the step function's batch.
        make_step: `prepared_module -> step_fn`; `step_fn(batch)` accumulates gradients, returns loss floats.
        settings: the run settings.

    Returns:
        The exported model folder, `output_dir/model`.
    """
    module, optimizer, scheduler = prepare_training(accelerator, module, settings)
    progress = Progress()
    accelerator.register_for_checkpointing(progress)
    if settings.resume and (folder := load_checkpoint(accelerator, settings.output_dir)) is not None:
        logger.info("resumed from %s at step %d", folder, progress.step)
    if accelerator.is_main_process:
        os.makedirs(settings.output_dir, exist_ok=True)
        trim_metrics(os.path.join(settings.output_dir, METRICS), progress.step)
    loader = build_loader(dataset, collator, settings, accelerator, progress.step)
    run_steps(accelerator, module, make_step(module), loader, optimizer, scheduler, progress, settings)
    merge_adapters(accelerator.unwrap_model(module))
    return export_model(accelerator, exportable_model(accelerator, model, module).eval(), settings.output_dir)


def exportable_model(accelerator: Accelerator, model: TTEModel, module: torch.nn.Module) -> TTEModel:
    """The model to save: `model` itself, or under FSDP an unsharded copy holding the gathered weights.

    FSDP2 shards in place and swaps the class of each sharded module for a torch-generated one, which
    `save_pretrained` would record (and copy) as the model's code; hence a plain `TTEModel` copy. Every process must
    call this (gathering is collective); the copy is built on the main process only.
    """
    if accelerator.distributed_type != DistributedType.FSDP:
        return model
    trained = accelerator.get_state_dict(module)
    if not accelerator.is_main_process:
        return model
    unwrapped = accelerator.unwrap_model(module)
    prefix = "" if unwrapped is model else next(n for n, m in model.named_modules() if m is unwrapped) + "."
    state = {key: value for key, value in model.state_dict().items() if prefix and not key.startswith(prefix)}
    state.update({prefix + key: value for key, value in trained.items()})
    unsharded = TTEModel(model.config)
    unsharded.load_state_dict({key: value.full_tensor() if hasattr(value, "full_tensor") else value
                          for key, value in state.items()})  # fmt: skip
    unsharded.processor = model.processor
    return unsharded


__all__ = ["TrainSettings", "fast_bf16", "ContrastiveSettings", "LoraSettings", "AdapterSettings", "fit_contrastive",
           "parse_settings", "start_run", "load_model", "fit", "add_adapter", "set_vision_tower_trainable",
           "merge_adapters", "make_accelerator", "pause_if_requested"]  # fmt: skip
