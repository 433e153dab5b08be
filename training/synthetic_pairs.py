"""A small synthetic pair-data task, for the tests and the benchmark scripts that train tiny random-weight models
(`training.tiny_models`): a query names a colour and a thing, its positive names the same pair, so a model can learn to
match them; plus a trace store of deterministic synthetic 'teacher' traces for it.
"""

import json
import os

import yaml
from PIL import Image, ImageDraw

from training.traces import TraceStore, make_manifest


COLOURS = ("red", "blue", "green", "yellow")
THINGS = ("cat", "dog", "bus", "car", "tree", "square", "circle", "triangle")


def word_rows(negatives: int = 2) -> list[dict]:
    """32 text pairs: query `what colour is the <thing> ? <colour>`, positive `<colour> <thing>`, hard negatives that
    share the thing but not the colour."""
    rows = []
    for c, colour in enumerate(COLOURS):
        for thing in THINGS:
            others = [COLOURS[(c + j + 1) % len(COLOURS)] for j in range(negatives)]
            rows.append({"qry": f"what colour is the {thing} ? {colour}", "pos_text": f"{colour} {thing}",
                         "neg_text": [f"{other} {thing}" for other in others]})  # fmt: skip
    return rows


def picture_rows(image_dir: str) -> list[dict]:
    """8 image queries (a coloured circle or square) whose positive names colour and shape."""
    os.makedirs(image_dir, exist_ok=True)
    rows = []
    for colour in COLOURS:
        for shape in ("circle", "square"):
            image = Image.new("RGB", (56, 56), "white")
            draw = ImageDraw.Draw(image)
            (draw.ellipse if shape == "circle" else draw.rectangle)((8, 8, 48, 48), fill=colour)
            image.save(os.path.join(image_dir, f"{colour}-{shape}.png"))
            rows.append({"qry": "<|image_1|>\nwhat is on this picture ?", "qry_image_path": f"{colour}-{shape}.png",
                         "pos_text": f"{colour} {shape}", "neg_text": ["one", "two"]})  # fmt: skip
    return rows


def write_pair_data(folder, with_images: bool = True) -> str:
    """Write a JSONL text source (and a parquet image source) plus their data config; returns the config path."""
    import datasets

    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "words.jsonl"), "w") as handle:
        handle.writelines(json.dumps(row) + "\n" for row in word_rows())
    sources = [{"name": "words", "path": "words.jsonl", "weight": 3.0, "task": "retrieval"}]
    if with_images:
        datasets.Dataset.from_list(picture_rows(os.path.join(folder, "images"))).to_parquet(
            os.path.join(folder, "pictures.parquet")
        )
        sources.append({"name": "pictures", "path": "pictures.parquet", "image_dir": "images", "task": "vqa"})
    config = os.path.join(folder, "data.yaml")
    with open(config, "w") as handle:
        yaml.safe_dump({"sources": sources}, handle)
    return config


def synthetic_trace(example) -> str:
    """A deterministic 'teacher' trace: the query's last word (the colour) and its text, in the ECR format."""
    text = example.inputs["query"].get("text", "")
    return f"<think> {text.split()[-1]} </think> {text}"


def write_trace_store(folder, data_config: str, prompt_set_version: str = "ecr-v1") -> str:
    """A trace store holding a synthetic query trace for every example (as if a teacher had written them)."""
    from training.data import PairDataset, load_sources

    dataset = PairDataset(load_sources(data_config))
    store = TraceStore.create(str(folder), make_manifest("synthetic-teacher", prompt_set_version,
                                                         {"greedy": True, "max_new_tokens": 16}))  # fmt: skip
    examples = [dataset[index] for index in range(len(dataset))]
    store.append([(example.id, "query", synthetic_trace(example)) for example in examples])
    return str(folder)
