"""Train the embedding head of a unified model (TTE_u stage 2).

The backbone (the stage-1 reasoner, see `train_reasoner.py`) stays frozen; the head starts as a copy of its last N
decoder layers and final norm and is trained with InfoNCE (GradCache, in-batch targets gathered across processes).

    accelerate launch -m training.train_head --model_path runs/reasoner/model --data_config data.yaml \
        --traces traces/ --output_dir runs/head --max_steps 2000 --per_device_batch_size 128
"""

from dataclasses import dataclass, field

from training.data import PairCollator, PairDataset, load_sources, load_traces, parse_trace_kinds
from training.loop import TrainSettings, fit, load_model, parse_settings, start_run
from training.losses import GradCache


@dataclass
class HeadSettings(TrainSettings):
    temperature: float = field(default=0.02, metadata={"help": "InfoNCE temperature."})
    num_hard_negatives: int = field(default=0, metadata={"help": "Hard negatives per query (neg_text/neg_image_path)."})


def main(argv: list[str] | None = None) -> str:
    settings = parse_settings(HeadSettings, argv)
    accelerator = start_run(settings)
    dataset = PairDataset(load_sources(settings.data_config))
    model = load_model(settings)
    if model.config.variant != "unified":
        variant = model.config.variant
        raise ValueError(f"{settings.model_path!r} is a {variant!r} model; the head exists only in 'unified'")
    kinds = parse_trace_kinds(settings.trace_sides)
    collator = PairCollator(model.processor, load_traces(settings.traces, kinds, model.processor), kinds,
                            settings.num_hard_negatives, settings.chunk_size)  # fmt: skip
    model.requires_grad_(False)
    # Start from the stage-1 backbone's top layers; a resumed run then loads the trained head over this.
    model.init_head_from_backbone()
    model.head.requires_grad_(True)
    return fit(accelerator, model, model, dataset, collator,
               lambda prepared: GradCache(prepared, accelerator, settings.temperature), settings)  # fmt: skip


if __name__ == "__main__":
    main()
