"""Train the embedder of a TTE_t / TTE_s model contrastively on input + trace pairs.

InfoNCE (q -> t, temperature 0.02) over in-batch targets gathered across processes, optional hard negatives,
GradCache chunks, full training or LoRA / DoRA (merged on export). Only `model.backbone` trains; a student's
reasoner stays frozen.

    accelerate launch -m training.train_embedder --model_path tte-init --data_config data.yaml \
        --traces traces/ --output_dir runs/embedder --lora --max_steps 5000 --per_device_batch_size 128
"""

from dataclasses import dataclass, field

import torch

from training.data import PairCollator, PairDataset, load_sources, load_traces, parse_trace_kinds
from training.loop import AdapterSettings, add_adapter, fit, freeze_vision_tower, load_model, parse_settings, start_run
from training.losses import GradCache
from tte.modeling_tte import TTEModel


@dataclass
class EmbedderSettings(AdapterSettings):
    temperature: float = field(default=0.02, metadata={"help": "InfoNCE temperature."})
    num_hard_negatives: int = field(default=0, metadata={"help": "Hard negatives per query (neg_text/neg_image_path)."})


def trainable_part(model: TTEModel, settings: EmbedderSettings) -> torch.nn.Module:
    """The module to optimise: the backbone's weights, or LoRA adapters on its decoder projections."""
    if model.config.variant == "unified":
        raise ValueError("a unified model's embedder is its head: train it with training.train_head")
    model.requires_grad_(False)
    if settings.lora:
        return add_adapter(model, settings, prefix=r"backbone\.")
    model.backbone.requires_grad_(True)
    if settings.freeze_vision:
        freeze_vision_tower(model.backbone)
    return model


def main(argv: list[str] | None = None) -> str:
    settings = parse_settings(EmbedderSettings, argv)
    accelerator = start_run(settings)
    dataset = PairDataset(load_sources(settings.data_config))
    model = load_model(settings)
    kinds = parse_trace_kinds(settings.trace_sides)
    traces = load_traces(settings.traces, kinds, model.processor)
    collator = PairCollator(model.processor, traces, kinds, settings.num_hard_negatives, settings.chunk_size)
    module = trainable_part(model, settings)
    return fit(accelerator, model, module, dataset, collator,
               lambda prepared: GradCache(prepared, accelerator, settings.temperature), settings)  # fmt: skip


if __name__ == "__main__":
    main()
