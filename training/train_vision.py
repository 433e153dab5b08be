"""Align a new vision tower to a frozen language model (TTE-mini's second stage).

The vision tower and its merger train; every language weight stays frozen, except that `next_token` with `--lora`
also trains LoRA adapters on the language model's decoder projections (merged on export), so that the LM learns to
read the tokens the tower learns to write. Two objectives, run one after the other (each is one run of this script;
the second starts from the first's exported model):

- `regression` (cheap, no pass through the LM): each image's merged visual tokens regress onto the LM's *input
  embeddings* of its caption's tokens ("a red triangle", truncated or padded with its last token to the number of
  visual tokens). Loss: MSE / mean |E|^2 + (1 - cosine). About 45x more images per second than end to end, but on
  its own the LM does not answer from these tokens.
- `next_token`: the answer to an image question given the exact reasoning prompt the model uses at inference
  (`processor.build_sft_inputs`: ECR system turn, image, question), next-token loss on the answer and the stop token.

Rows are MMEB-train rows (`training/data.py`): the query is image + question, `pos_text` the answer or caption
(`training.scenes.write_alignment_source` writes them).

    python -m training.train_vision --model_path runs/init --data_config captions.yaml --objective regression ...
"""

from dataclasses import dataclass, field
from functools import partial

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from transformers import BatchFeature

from training.data import Example, PairDataset, chunked, load_sources, parse_side
from training.loop import (LoraSettings, add_adapter, fit, load_model, parse_settings, set_vision_tower_trainable,
                           start_run)
from training.losses import next_token_step


OBJECTIVES = ("regression", "next_token")


@dataclass
class VisionSettings(LoraSettings):
    objective: str = field(default="next_token", metadata={"help": f"One of {OBJECTIVES}."})

    def __post_init__(self):
        super().__post_init__()
        if self.objective not in OBJECTIVES:
            raise ValueError(f"--objective {self.objective!r} is not one of {OBJECTIVES}")
        if self.lora and self.objective == "regression":
            raise ValueError("--lora needs --objective next_token: the regression objective never runs the language "
                             "model, so adapters on it would not train")


def _answer(example: Example) -> str:
    text = example.inputs["positive"].get("text")
    if not text or "image" in example.inputs["positive"]:
        raise ValueError(f"{example.where}: the positive must be a text answer (pos_text), with no image")
    return text


class AnswerCollator:
    """Next-token chunks: reasoning prompt of the query (image + question), then the answer as the only labels."""

    def __init__(self, processor, chunk_size: int):
        self.processor, self.chunk_size = processor, chunk_size

    def __call__(self, examples: list[Example]) -> list[BatchFeature]:
        return [self.processor.build_sft_inputs([parse_side(self.processor, example, "query") for example in chunk],
                                                [_answer(example) for example in chunk])
                for chunk in chunked(examples, self.chunk_size)]  # fmt: skip


class CaptionCollator:
    """Regression batches: the images' vision inputs and their captions' token ids (one row per image)."""

    def __init__(self, processor):
        self.processor = processor

    def __call__(self, examples: list[Example]) -> BatchFeature:
        for example in examples:  # one row of targets per image: a video has no place here
            if "video" in example.inputs["query"]:
                raise ValueError(f"{example.where}: the regression objective aligns images with their captions; this "
                                 "row's query is a video (train video rows with --objective next_token)")  # fmt: skip
        items = [parse_side(self.processor, example, "query") for example in examples]
        captions = self.processor.tokenizer([_answer(example) for example in examples], add_special_tokens=False)
        return BatchFeature({**self.processor.build_image_inputs(items), "caption_ids": captions["input_ids"]})


def caption_targets(caption_ids: list[list[int]], embeddings: torch.nn.Embedding,
                    tokens_per_image: int) -> torch.Tensor:  # fmt: skip
    """`(images * tokens_per_image, hidden)`: each caption's input embeddings, cut or padded with its last token."""
    rows = [(ids + ids[-1:] * tokens_per_image)[:tokens_per_image] for ids in caption_ids]
    return embeddings(torch.tensor(rows, device=embeddings.weight.device)).flatten(0, 1)


def regression_loss(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MSE scaled by the targets' mean squared norm (scale-free), plus one minus the mean cosine.

    The scale is taken over the rows given, so with several processes each scales by its own share of the batch: the
    gradients then match a one-process run closely but not exactly (TTE-mini was trained on one process).
    """
    mse = (predicted - target).pow(2).sum(-1).mean() / target.pow(2).sum(-1).mean()
    return mse + (1 - F.cosine_similarity(predicted, target, dim=-1).mean())


def regression_step(vision_tower, embeddings: torch.nn.Embedding, accelerator: Accelerator,
                    batch: BatchFeature) -> dict[str, float]:  # fmt: skip
    """One regression step over this process's images; DDP averages the gradients over processes.

    Args:
        vision_tower: the prepared vision tower; its `pooler_output` is the merged visual tokens of all images.
        embeddings: the LM's (frozen) input embeddings.
        accelerator: the run's accelerator.
        batch: from `CaptionCollator`.
    """
    pixels, grid = batch["pixel_values"].to(accelerator.device), batch["image_grid_thw"].to(accelerator.device)
    predicted = vision_tower(pixels, grid_thw=grid).pooler_output.float()  # (images * tokens per image, hidden)
    tokens_per_image = predicted.shape[0] // len(batch["caption_ids"])
    with torch.no_grad():
        target = caption_targets(batch["caption_ids"], embeddings, tokens_per_image).float()
    loss = regression_loss(predicted, target)
    accelerator.backward(loss)
    return {"regression_loss": accelerator.reduce(loss.detach(), reduction="mean").item()}


def main(argv: list[str] | None = None) -> str:
    settings = parse_settings(VisionSettings, argv)
    accelerator = start_run(settings)
    dataset = PairDataset(load_sources(settings.data_config))
    model = load_model(settings)
    generator = model.generator()
    if not hasattr(generator.model, "visual"):
        raise ValueError(f"{settings.model_path!r} has no vision tower to align")
    model.requires_grad_(False)
    vision_tower = generator.model.visual
    vision_tower.requires_grad_(True)
    if settings.objective == "regression":  # the tower alone is trained and prepared: the LM never runs
        embeddings = generator.get_input_embeddings()
        return fit(accelerator, model, vision_tower, dataset, CaptionCollator(model.processor),
                   lambda prepared: partial(regression_step, prepared, embeddings, accelerator), settings)  # fmt: skip
    if settings.lora:  # peft freezes all but its adapters, so the tower is made trainable again inside the wrapper
        generator = add_adapter(generator, settings)
        set_vision_tower_trainable(generator, True)
    return fit(accelerator, model, generator, dataset, AnswerCollator(model.processor, settings.chunk_size),
               lambda prepared: partial(next_token_step, prepared, accelerator), settings)  # fmt: skip


__all__ = ["VisionSettings", "AnswerCollator", "CaptionCollator", "regression_loss", "caption_targets", "main"]


if __name__ == "__main__":
    main()
