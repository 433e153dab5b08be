"""A scene generator: small images of coloured shapes with their scene graph, deterministic from a seed.

Training and tests share it. The style follows easy-VQA (64x64, a light background, one of 8 saturated colours,
circle / rectangle / triangle), so images rendered here train a vision tower that is then tested on easy-VQA's own
held-out images; scenes may also hold up to 4 non-overlapping shapes, for counting and relation tasks.

    scene = random_scene(random.Random(7), num_objects=2)
    image = render(scene)          # PIL image
    describe(scene)                # "a red circle and a blue triangle"

`write_alignment_source` turns scenes into an MMEB-train-style source (`training/data.py`): image questions with
one-word answers and captions, the data of `training.train_vision`.
"""

import json
import os
import random
from dataclasses import asdict, dataclass, field

from PIL import Image, ImageDraw

from training.checkpoint import write_atomic
from tte_eval.user_tasks import write_task


COLOURS = {
    "red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "yellow": (255, 255, 0),
    "teal": (0, 128, 128), "brown": (165, 42, 42), "gray": (128, 128, 128), "black": (0, 0, 0),
}  # fmt: skip
SHAPES = ("circle", "rectangle", "triangle")
SUPERSAMPLE = 4  # draw 4x larger, then downsample: smooth edges, as easy-VQA's images have
NUMBER_WORDS = ("zero", "one", "two", "three", "four")


@dataclass
class SceneObject:
    """One shape: its colour and kind, and its bounding box `(left, top, right, bottom)` in pixels."""

    colour: str
    shape: str
    box: tuple[int, int, int, int]

    @property
    def centre(self) -> tuple[float, float]:
        left, top, right, bottom = self.box
        return (left + right) / 2, (top + bottom) / 2

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"


@dataclass
class Scene:
    """An image's scene graph: its size, background colour and objects (left to right)."""

    size: int
    background: tuple[int, int, int]
    objects: list[SceneObject] = field(default_factory=list)

    def to_json(self) -> dict:
        return asdict(self)


def _random_box(rng: random.Random, size: int, min_extent: int, max_extent: int) -> tuple[int, int, int, int]:
    width, height = rng.randint(min_extent, max_extent), rng.randint(min_extent, max_extent)
    left, top = rng.randint(0, size - width), rng.randint(0, size - height)
    return left, top, left + width, top + height


def _overlaps(box, others, margin: int = 2) -> bool:
    return any(box[0] < o[2] + margin and o[0] < box[2] + margin and box[1] < o[3] + margin and o[1] < box[3] + margin
               for o in others)  # fmt: skip


def random_scene(rng: random.Random, num_objects: int = 1, size: int = 64, colours=tuple(COLOURS),
                 shapes=SHAPES, min_extent: int | None = None, max_extent: int | None = None) -> Scene:  # fmt: skip
    """A scene of `num_objects` non-overlapping shapes, drawn from `colours` x `shapes`.

    Single shapes span 10 to 34 px on a 64 px canvas, as in easy-VQA; with more objects they are smaller so that they
    fit. Extents scale with `size`.
    """
    if not 1 <= num_objects <= 4:
        raise ValueError(f"num_objects must be 1..4, got {num_objects}")
    scale = size / 64
    min_extent = min_extent or round(10 * scale)
    max_extent = max_extent or round((34 if num_objects == 1 else 22) * scale)
    background = tuple(rng.randint(230, 255) for _ in range(3))
    for _ in range(1000):  # rejection sampling: a few tries suffice for 4 objects of at most 22/64 of the side
        boxes = []
        while len(boxes) < num_objects:
            box = _random_box(rng, size, min_extent, max_extent)
            if _overlaps(box, boxes):
                break
            boxes.append(box)
        if len(boxes) == num_objects:
            objects = [SceneObject(rng.choice(list(colours)), rng.choice(list(shapes)), box) for box in boxes]
            return Scene(size, background, sorted(objects, key=lambda o: o.centre))
    raise ValueError(f"could not place {num_objects} shapes of {min_extent}-{max_extent} px on {size} px")


def render(scene: Scene) -> Image.Image:
    """The scene as an RGB image of `scene.size` pixels square."""
    big = Image.new("RGB", (scene.size * SUPERSAMPLE,) * 2, scene.background)
    draw = ImageDraw.Draw(big)
    for obj in scene.objects:
        left, top, right, bottom = (value * SUPERSAMPLE for value in obj.box)
        colour = COLOURS[obj.colour]
        if obj.shape == "circle":  # a circle of the box's smaller side, centred in it
            radius = min(right - left, bottom - top) / 2
            cx, cy = (left + right) / 2, (top + bottom) / 2
            draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=colour)
        elif obj.shape == "rectangle":
            draw.rectangle((left, top, right, bottom), fill=colour)
        elif obj.shape == "triangle":
            draw.polygon([((left + right) / 2, top), (right, bottom), (left, bottom)], fill=colour)
        else:
            raise ValueError(f"unknown shape {obj.shape!r}; known: {SHAPES}")
    return big.resize((scene.size, scene.size), Image.Resampling.BOX)


def describe(scene: Scene) -> str:
    """The objects left to right: "a red circle", "a red circle and a blue triangle", "a, b and c"."""
    names = [f"a {obj.name}" for obj in scene.objects]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def single_object_questions(scene: Scene, rng: random.Random) -> list[tuple[str, str]]:
    """(question, one-word answer) pairs about a one-shape scene: colour, shape, and a yes/no question."""
    (obj,) = scene.objects
    other_colour = rng.choice([c for c in COLOURS if c != obj.colour])
    other_shape = rng.choice([s for s in SHAPES if s != obj.shape])
    asked_colour, asked_shape = rng.choice([obj.colour, other_colour]), rng.choice([obj.shape, other_shape])
    yes_no = rng.choice([
        (f"is there a {asked_colour} shape in the image?", "yes" if asked_colour == obj.colour else "no"),
        (f"does the image contain a {asked_shape}?", "yes" if asked_shape == obj.shape else "no"),
    ])  # fmt: skip
    return [
        (rng.choice(["what color is the shape?", "what is the color of the shape?"]), obj.colour),
        (rng.choice(["what shape is in the image?", f"what is the {obj.colour} shape?"]), obj.shape),
        yes_no,
    ]


CAPTION_QUESTION = "describe the image."
ANSWER_LEAD = "The answer is"  # ECR traces (the oracle teacher's) state the answer after these words


def write_alignment_source(folder: str, num_images: int, seed: int, task: str = "vqa") -> dict:
    """Render `num_images` one-shape scenes to `folder/images/` and write `folder/rows.jsonl`, MMEB-train rows.

    Each image gives 4 rows: a colour question, a shape question, a yes/no question (answers are one word) and a
    caption (`describe`); `folder/captions.jsonl` repeats the caption rows alone (the regression objective's data)
    and `folder/retrieval.jsonl` the same under new ids (`retrieval_rows`).
    `folder/scenes.jsonl` keeps each image's scene graph. Writing is deterministic in `seed`.

    Returns:
        A data-config source entry (`training/data.py::Source` fields) for the rows.
    """
    rng = random.Random(seed)
    os.makedirs(os.path.join(folder, "images"), exist_ok=True)
    rows, scenes = [], []
    for index in range(num_images):
        scene = random_scene(rng)
        path = f"images/{index:06d}.png"
        render(scene).save(os.path.join(folder, path))
        scenes.append(json.dumps({"image": path, **scene.to_json()}))
        pairs = single_object_questions(scene, rng) + [(CAPTION_QUESTION, describe(scene))]
        for kind, (question, answer) in zip(("colour", "shape", "yes_no", "caption"), pairs):
            rows.append({"id": f"{index:06d}-{kind}", "qry": question, "qry_image_path": path, "pos_text": answer})
    captions = [row for row in rows if row["id"].endswith("-caption")]
    write_atomic(os.path.join(folder, "scenes.jsonl"), "\n".join(scenes) + "\n")
    for name, subset in (("rows", rows), ("captions", captions), ("retrieval", retrieval_rows(captions))):
        write_atomic(os.path.join(folder, f"{name}.jsonl"), "".join(json.dumps(row) + "\n" for row in subset))
    return {"name": os.path.basename(os.path.normpath(folder)), "path": "rows.jsonl", "image_dir": ".", "task": task}


def write_caption_task(folder: str, num_images: int, seed: int) -> str:
    """A `tte_eval` user task of `num_images` one-shape scenes: each image ranks all 24 possible captions (local).

    Every caption is a candidate of every query, so the task asks for colour and shape at once; the seed should
    differ from the training data's, so the images are new.
    """
    rng = random.Random(seed)
    captions = [f"a {colour} {shape}" for colour in COLOURS for shape in SHAPES]
    os.makedirs(os.path.join(folder, "images"), exist_ok=True)
    rows = []
    for index in range(num_images):
        scene = random_scene(rng)
        path = f"images/{index:06d}.png"
        render(scene).save(os.path.join(folder, path))
        ordered = [describe(scene)] + [caption for caption in captions if caption != describe(scene)]
        rows.append({"qry_inst": "", "qry_text": CAPTION_QUESTION, "qry_img_path": path, "tgt_inst": "",
                     "tgt_text": ordered, "tgt_img_path": [""] * len(ordered), "positives": [0]})  # fmt: skip
    write_task(folder, {"name": "scene-captions", "modality": "image", "eval_type": "local", "metric": "hit@1"}, rows)
    return folder


def retrieval_rows(caption_rows: list[dict]) -> list[dict]:
    """The caption rows again under their own ids, for a source of the `retrieval` task family: the model then
    describes an image under the default (retrieval) reasoning prompt too, not only under the `vqa` one."""
    return [{**row, "id": row["id"] + "-retrieval"} for row in caption_rows]


__all__ = ["CAPTION_QUESTION", "COLOURS", "SHAPES", "Scene", "SceneObject", "describe", "random_scene", "render",
           "retrieval_rows", "single_object_questions", "write_alignment_source", "write_caption_task"]  # fmt: skip
