"""Fine-tune a reasoner on stored traces (TTE_s reasoner; TTE_u stage 1).

Next-token loss on the trace tokens and the stop token only: the reasoning prompt is masked (-100), so the model
learns to write traces, not to reproduce prompts. Trains the model's generator (`model.reasoner` of a student,
`model.backbone` of a unified model), fully or through LoRA / DoRA, with the vision tower frozen by default
(`--freeze_vision false` trains it too).

    accelerate launch -m training.train_reasoner --model_path tte-init --data_config data.yaml \
        --traces teacher-traces/ --output_dir runs/reasoner --learning_rate 2e-5 --max_steps 1000
"""

from functools import partial

from training.data import PairDataset, SFTCollator, load_sources, load_traces, parse_trace_kinds
from training.loop import (AdapterSettings, add_adapter, fit, load_model, parse_settings, set_vision_tower_trainable,
                           start_run)
from training.losses import next_token_step


def main(argv: list[str] | None = None) -> str:
    settings = parse_settings(AdapterSettings, argv)
    accelerator = start_run(settings)
    dataset = PairDataset(load_sources(settings.data_config))
    model = load_model(settings)
    if model.config.variant == "teacher":
        raise ValueError(f"{settings.model_path!r} is a 'teacher' model: it has no reasoner to fine-tune")
    kinds = parse_trace_kinds(settings.trace_sides)
    collator = SFTCollator(model.processor, load_traces(settings.traces, kinds, model.processor), kinds,
                           settings.chunk_size)  # fmt: skip
    model.requires_grad_(False)
    generator = model.generator()
    if settings.lora:
        generator = add_adapter(generator, settings)
    else:
        generator.requires_grad_(True)
    # Also beside LoRA adapters: a tower trained in the SFT learns from the traces' description of every object, not
    # only from the captions it was aligned on.
    set_vision_tower_trainable(generator, not settings.freeze_vision)
    return fit(accelerator, model, generator, dataset, collator,
               lambda prepared: partial(next_token_step, prepared, accelerator), settings)  # fmt: skip


if __name__ == "__main__":
    main()
