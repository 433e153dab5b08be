"""Train the embedding head of a unified model (TTE_u stage 2).

The backbone (the stage-1 reasoner, see `train_reasoner.py`) stays frozen; the head starts as a copy of its last N
decoder layers and final norm and is trained with InfoNCE (GradCache, in-batch targets gathered across processes).

    accelerate launch -m training.train_head --model_path runs/reasoner/model --data_config data.yaml \
        --traces traces/ --output_dir runs/head --max_steps 2000 --per_device_batch_size 128
"""

from training.data import PairDataset, load_sources
from training.loop import ContrastiveSettings, fit_contrastive, load_model, parse_settings, start_run


def main(argv: list[str] | None = None) -> str:
    settings = parse_settings(ContrastiveSettings, argv)
    accelerator = start_run(settings)
    dataset = PairDataset(load_sources(settings.data_config))
    model = load_model(settings)
    if model.config.variant != "unified":
        variant = model.config.variant
        raise ValueError(f"{settings.model_path!r} is a {variant!r} model; the head exists only in 'unified'")
    model.requires_grad_(False)
    # Start from the stage-1 backbone's top layers; a resumed run then loads the trained head over this.
    model.init_head_from_backbone()
    model.head.requires_grad_(True)
    return fit_contrastive(accelerator, model, model, dataset, settings)


if __name__ == "__main__":
    main()
