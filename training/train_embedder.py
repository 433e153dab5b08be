"""Train the embedder of a TTE_t / TTE_s model contrastively on input + trace pairs.

InfoNCE (q -> t, temperature 0.02) over in-batch targets gathered across processes, optional hard negatives,
GradCache chunks, full training or LoRA / DoRA (merged on export). Only `model.backbone` trains; a student's
reasoner stays frozen. `--top_layers N` trains only the last N decoder layers and the final norm: the same
trainable capacity as a unified model's N-layer head (`train_head.py`), which makes the variants comparable at one
budget, and the frozen layers below need no backward pass.

    accelerate launch -m training.train_embedder --model_path tte-init --data_config data.yaml \
        --traces traces/ --output_dir runs/embedder --lora --max_steps 5000 --per_device_batch_size 128
"""

from dataclasses import dataclass, field

import torch

from training.data import PairDataset, load_sources
from training.loop import (
    AdapterSettings,
    ContrastiveSettings,
    add_adapter,
    fit_contrastive,
    load_model,
    parse_settings,
    set_vision_tower_trainable,
    start_run,
)
from tte.modeling_tte import TTEModel, decoder_of


@dataclass
class EmbedderSettings(ContrastiveSettings, AdapterSettings):
    """InfoNCE settings plus full or LoRA / DoRA training of the backbone."""

    top_layers: int = field(default=0, metadata={"help": "Train only the last N decoder layers and the final norm "
                            "(full weights); 0 trains the whole backbone."})  # fmt: skip

    def __post_init__(self):
        super().__post_init__()
        if self.top_layers < 0:
            raise ValueError(f"--top_layers must be >= 0, got {self.top_layers}")
        if self.top_layers and self.lora:
            raise ValueError("--top_layers trains full layers; it does not combine with --lora")


def trainable_part(model: TTEModel, settings: EmbedderSettings) -> torch.nn.Module:
    """The module to optimise: the backbone's weights, or LoRA adapters on its decoder projections."""
    if model.config.variant == "unified":
        raise ValueError("a unified model's embedder is its head: train it with training.train_head")
    model.requires_grad_(False)
    if settings.lora:
        model = add_adapter(model, settings, prefix=r"backbone\.")
        set_vision_tower_trainable(model.get_base_model().backbone, not settings.freeze_vision)
        return model
    if settings.top_layers:
        decoder = decoder_of(model.backbone)
        if settings.top_layers > len(decoder.layers):
            raise ValueError(f"--top_layers {settings.top_layers} exceeds the backbone's {len(decoder.layers)} layers")
        for module in (*decoder.layers[-settings.top_layers:], decoder.norm):
            module.requires_grad_(True)
        return model
    model.backbone.requires_grad_(True)
    set_vision_tower_trainable(model.backbone, not settings.freeze_vision)
    return model


def main(argv: list[str] | None = None) -> str:
    settings = parse_settings(EmbedderSettings, argv)
    accelerator = start_run(settings)
    dataset = PairDataset(load_sources(settings.data_config))
    model = load_model(settings)
    return fit_contrastive(accelerator, model, trainable_part(model, settings), dataset, settings)


if __name__ == "__main__":
    main()
