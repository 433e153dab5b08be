"""Align a new vision tower to a frozen language model (TTE-mini's second stage).

The vision tower and its merger train; every language weight stays frozen, except that `next_token` with `--lora`
also trains LoRA adapters on the language model's decoder projections (merged on export), so that the LM learns to
read the tokens the tower learns to write. Three objectives, each one run of this script (a later one starts from an
earlier one's exported model):

- `regression` (cheap, no pass through the LM): each image's merged visual tokens regress onto the LM's *input
  embeddings* of its caption's tokens ("a red triangle", truncated or padded with its last token to the number of
  visual tokens). Loss: MSE / mean |E|^2 + (1 - cosine). About 45x more images per second than end to end, but on
  its own the LM does not answer from these tokens.
- `next_token`: the answer to an image question given the exact reasoning prompt the model uses at inference
  (`processor.build_sft_inputs`: ECR system turn, image, question), next-token loss on the answer and the stop token.
- `cells` (2x2 grid scenes, `training.scene_tasks`; no pass through the LM): each of an image's 4 merged visual
  tokens, one per cell in raster order, says its cell's colour and shape through two linear classifiers shared by
  the 4 tokens (cross-entropy, "empty" a class of each; the classifiers are not exported). The labels are read from
  the row's caption (`pos_text`, `training.scene_tasks.caption`). It makes the tokens carry each cell's attributes
  linearly, held-out colour-shape combinations included, which next-token training through the LM did not
  (`benchmarks/results/tte-mini-readout-2026-12-04/`).

Rows are MMEB-train rows (`training/data.py`): the query is image + question, `pos_text` the answer or caption
(`training.scenes.write_alignment_source` writes them).

    python -m training.train_vision --model_path runs/init --data_config captions.yaml --objective regression ...
"""

from dataclasses import dataclass, field
from functools import partial

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import DistributedType
from transformers import BatchFeature

from training.data import Example, PairDataset, chunked, load_sources, parse_side
from training.loop import (LoraSettings, add_adapter, fit, load_model, parse_settings, set_vision_tower_trainable,
                           start_run)
from training.losses import next_token_step
from training.scene_tasks import CELLS, parse_caption
from training.scenes import COLOURS, SHAPES


OBJECTIVES = ("regression", "next_token", "cells")
CELL_COLOURS, CELL_SHAPES = ("empty", *COLOURS), ("empty", *SHAPES)  # the cells objective's classes


@dataclass
class VisionSettings(LoraSettings):
    objective: str = field(default="next_token", metadata={"help": f"One of {OBJECTIVES}."})

    def __post_init__(self):
        super().__post_init__()
        if self.objective not in OBJECTIVES:
            raise ValueError(f"--objective {self.objective!r} is not one of {OBJECTIVES}")
        if self.lora and self.objective != "next_token":
            raise ValueError(f"--lora needs --objective next_token: the {self.objective} objective never runs the "
                             "language model, so adapters on it would not train")


def _image_rows(processor, examples: list[Example], objective: str) -> list[dict]:
    """The queries' images as processor items; a video query is refused (these objectives have one target per image)."""
    for example in examples:
        if "video" in example.inputs["query"]:
            raise ValueError(f"{example.where}: the {objective} objective aligns images with their captions; this "
                             "row's query is a video (train video rows with --objective next_token)")  # fmt: skip
    return [parse_side(processor, example, "query") for example in examples]


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
        items = _image_rows(self.processor, examples, "regression")
        captions = self.processor.tokenizer([_answer(example) for example in examples], add_special_tokens=False)
        return BatchFeature({**self.processor.build_image_inputs(items), "caption_ids": captions["input_ids"]})


def cell_labels(caption: str) -> list[tuple[int, int]]:
    """Per cell of `CELLS`, the indices of its colour in `CELL_COLOURS` and of its shape in `CELL_SHAPES`."""
    cells = parse_caption(caption)
    return [(CELL_COLOURS.index(cells[cell][0]), CELL_SHAPES.index(cells[cell][1])) if cell in cells else (0, 0)
            for cell in CELLS]  # fmt: skip


class CellCollator:
    """Cells batches: the images' vision inputs and `cell_labels` `(images, cells, 2)` read from their captions."""

    def __init__(self, processor):
        self.processor = processor

    def __call__(self, examples: list[Example]) -> BatchFeature:
        items = _image_rows(self.processor, examples, "cells")
        labels = []
        for example in examples:
            try:
                labels.append(cell_labels(_answer(example)))
            except ValueError as error:
                raise ValueError(f"{example.where}: the cells objective needs a grid scene's caption as the "
                                 f"positive: {error}") from error  # fmt: skip
        return BatchFeature({**self.processor.build_image_inputs(items), "cell_labels": torch.tensor(labels)})


class CellReadout(torch.nn.Module):
    """The vision tower and the cells objective's classifiers: logits `(images, cells, colours + shapes)`."""

    def __init__(self, vision_tower: torch.nn.Module, width: int):
        super().__init__()
        self.vision_tower = vision_tower
        self.classifiers = torch.nn.Linear(width, len(CELL_COLOURS) + len(CELL_SHAPES))

    def forward(self, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor) -> torch.Tensor:
        tokens = self.vision_tower(pixel_values, grid_thw=image_grid_thw).pooler_output
        images = len(image_grid_thw)
        if tokens.shape[0] != images * len(CELLS):
            raise ValueError(f"the cells objective needs {len(CELLS)} merged visual tokens per image, one per cell of "
                             f"the 2x2 grid; these {images} images gave {tokens.shape[0]}")  # fmt: skip
        return self.classifiers(tokens).view(images, len(CELLS), -1)


def cells_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of each cell's colour plus that of its shape, averaged over cells (empty ones included)."""
    colours, shapes = logits.float().flatten(0, 1).split([len(CELL_COLOURS), len(CELL_SHAPES)], dim=-1)
    labels = labels.flatten(0, 1)
    return F.cross_entropy(colours, labels[:, 0]) + F.cross_entropy(shapes, labels[:, 1])


def cells_step(readout: CellReadout, accelerator: Accelerator, batch: BatchFeature) -> dict[str, float]:
    """One cells step over this process's images; DDP averages the gradients over processes."""
    logits = readout(batch["pixel_values"].to(accelerator.device), batch["image_grid_thw"].to(accelerator.device))
    loss = cells_loss(logits, batch["cell_labels"].to(accelerator.device))
    accelerator.backward(loss)
    return {"cells_loss": accelerator.reduce(loss.detach(), reduction="mean").item()}


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
    if settings.objective == "cells":  # the tower and its classifiers train; only the tower is exported
        if accelerator.distributed_type == DistributedType.FSDP:
            raise ValueError("the cells objective trains classifiers outside the model, which FSDP export cannot "
                             "gather: run it on one process or with DDP")  # fmt: skip
        readout = CellReadout(vision_tower, generator.get_input_embeddings().embedding_dim)
        return fit(accelerator, model, readout, dataset, CellCollator(model.processor),
                   lambda prepared: partial(cells_step, prepared, accelerator), settings)  # fmt: skip
    if settings.lora:  # peft freezes all but its adapters, so the tower is made trainable again inside the wrapper
        generator = add_adapter(generator, settings)
        set_vision_tower_trainable(generator, True)
    return fit(accelerator, model, generator, dataset, AnswerCollator(model.processor, settings.chunk_size),
               lambda prepared: partial(next_token_step, prepared, accelerator), settings)  # fmt: skip


__all__ = ["VisionSettings", "AnswerCollator", "CaptionCollator", "CellCollator", "CellReadout", "cell_labels",
           "cells_loss", "regression_loss", "caption_targets", "main"]


if __name__ == "__main__":
    main()
