"""Train the embedder of a TTE_t / TTE_s model contrastively on input + trace pairs.

InfoNCE (q -> t, temperature 0.02) over in-batch targets gathered across processes, optional hard negatives,
GradCache chunks, full training or LoRA / DoRA (merged on export). Only `model.backbone` trains; a student's
reasoner stays frozen.

    accelerate launch -m training.train_embedder --model_path tte-init --data_config data.yaml \
        --traces traces/ --output_dir runs/embedder --lora --max_steps 5000 --per_device_batch_size 128
"""

from dataclasses import dataclass

import torch

from training.data import PairDataset, load_sources
from training.loop import (
    AdapterSettings,
    ContrastiveSettings,
    add_adapter,
    fit_contrastive,
    freeze_vision_tower,
    load_model,
    parse_settings,
    start_run,
)
from tte.modeling_tte import TTEModel


@dataclass
class EmbedderSettings(ContrastiveSettings, AdapterSettings):
    """InfoNCE settings plus full or LoRA / DoRA training of the backbone."""


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
    return fit_contrastive(accelerator, model, trainable_part(model, settings), dataset, settings)


if __name__ == "__main__":
    main()
