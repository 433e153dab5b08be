"""Scene tasks where an inference step matters: relations, counts, grounding, retrieval and classification.

Scenes are 2x2 grids (`grid_scene`): a 64x64 image whose four 32-pixel cells each hold at most one shape. The grid
matches the vision tower's 4 visual tokens (one merged token per cell), so "what is left of the red circle?" asks
for one perception step per cell and one relational step over them: the step a reasoning trace can write out.

Task kinds (MMEB's families; the ECR prompt family of each is in `KINDS`):

| kind | query | target |
|---|---|---|
| colour | image + "what color is the shape at the top left?" | "red" |
| count | image + "how many circles are there?" | "two" |
| relation | image + "what is left of the red circle?" | "a blue triangle" or "nothing" |
| grounding | image + "the shape above the blue rectangle" | "a green triangle" |
| i2t | image | its caption, among captions of scenes changed in one detail |
| t2i | a caption | its image, among images of scenes changed in one detail |
| classification | image | the kinds of shapes it holds ("circles and triangles") |

Held out: `HELD_OUT` colour-shape combinations never appear in a training scene, and every test scene holds at least
one of them, so test scenes, relation pairings and captions are all new combinations.

The teacher is an **oracle describer**, not a model: `oracle_trace` writes the ECR trace (`<think>` the objects and
the step the question needs `</think>` + a final line) from the scene graph. Its traces go into a trace store whose
manifest names it as such (`ORACLE_REASONER`).

    python -m training.scene_tasks --output_dir data/scene-tasks     # train rows, test tasks and oracle traces
"""

import hashlib
import json
import os
import random
import re
from dataclasses import dataclass, field

from PIL import Image
from transformers import HfArgumentParser

from training.checkpoint import write_atomic
from training.easy_vqa_data import write_easy_vqa_control
from training.scenes import ANSWER_LEAD, CAPTION_QUESTION, COLOURS, NUMBER_WORDS, SHAPES, Scene, SceneObject, render
from training.traces import TraceStore, make_manifest
from tte.processing_tte import THINK_END, THINK_START
from tte_eval.rows import read_records
from tte_eval.user_tasks import ROWS_STEM, write_task


GRID = 64  # image side in pixels; each cell is GRID // 2
CELLS = ("top left", "top right", "bottom left", "bottom right")  # raster order, as the visual tokens
HELD_OUT = (("red", "triangle"), ("blue", "circle"), ("green", "rectangle"), ("gray", "triangle"))
COMBOS = [(colour, shape) for colour in COLOURS for shape in SHAPES]
TRAIN_COMBOS = [combo for combo in COMBOS if combo not in HELD_OUT]
RELATIONS = {"left of": (0, -1), "right of": (0, 1), "above": (-1, 0), "below": (1, 0)}  # (row, column) steps
ORACLE_REASONER = "oracle-describer-v1 (scene-graph oracle, not a model)"
PROMPT_SET_VERSION = "ecr-v1"
TRACE_SIDE = "query"
# kind -> (ECR prompt family, instruction, test metric)
KINDS = {
    "colour": ("vqa", "Answer the question about the image.", "hit@1"),
    "count": ("vqa", "Answer the question about the image.", "hit@1"),
    "relation": ("vqa", "Answer the question about the image.", "hit@1"),
    "grounding": ("grounding", "Find the shape the expression refers to.", "hit@1"),
    "i2t": ("retrieval", "Find a caption for the image.", "hit@1"),
    "t2i": ("retrieval", "Find the image that this caption describes.", "hit@1"),
    "classification": ("classification", "Which kinds of shapes does the image contain?", "hit@1"),
}
RELATIONAL_KINDS = ("count", "relation", "grounding")  # where the trace's inference step should matter most
NAMES = [f"a {colour} {shape}" for colour, shape in COMBOS]
SHAPE_SETS = ["circles", "rectangles", "triangles", "circles and rectangles", "circles and triangles",
              "rectangles and triangles", "circles, rectangles and triangles"]  # fmt: skip


def cell_of(obj: SceneObject) -> int:
    """Index in `CELLS` of the cell holding the shape's centre."""
    x, y = obj.centre
    return 2 * int(y >= GRID // 2) + int(x >= GRID // 2)


def grid_scene(rng: random.Random, num_objects: int, combos=TRAIN_COMBOS, must_hold=()) -> Scene:
    """A 2x2 grid scene of `num_objects` distinct colour-shape combinations, one per cell, from `combos`;
    `must_hold` combinations are placed first. Shapes span 12-26 px inside their 32-px cell."""
    cells = rng.sample(range(4), num_objects)
    chosen = list(must_hold) + rng.sample([c for c in combos if c not in must_hold], num_objects - len(must_hold))
    half, objects = GRID // 2, []
    for cell, (colour, shape) in zip(cells, chosen):
        width, height = rng.randint(12, 26), rng.randint(12, 26)
        left = (cell % 2) * half + rng.randint(3, half - width - 3)
        top = (cell // 2) * half + rng.randint(3, half - height - 3)
        objects.append(SceneObject(colour, shape, (left, top, left + width, top + height)))
    return Scene(GRID, tuple(rng.randint(230, 255) for _ in range(3)), sorted(objects, key=cell_of))


def by_cell(scene: Scene) -> dict[int, SceneObject]:
    return {cell_of(obj): obj for obj in scene.objects}


def caption(scene: Scene) -> str:
    """The objects in raster order: "red circle at top left, blue triangle at bottom right"."""
    return ", ".join(f"{obj.name} at {CELLS[cell]}" for cell, obj in sorted(by_cell(scene).items()))


PLACED = re.compile(rf"({'|'.join(COLOURS)}) ({'|'.join(SHAPES)}) at ({'|'.join(CELLS)})")  # one part of a caption


def parse_caption(text: str) -> dict[str, tuple[str, str]]:
    """The inverse of `caption`: `{cell: (colour, shape)}`; raises on a part it cannot read or a cell named twice."""
    cells = {}
    for part in text.split(", "):
        placed = PLACED.fullmatch(part)
        if placed is None or placed.group(3) in cells:
            raise ValueError(f"{part!r} in the caption {text!r} is not '<colour> <shape> at <cell>' with a cell of "
                             f"{CELLS} named once")  # fmt: skip
        cells[placed.group(3)] = (placed.group(1), placed.group(2))
    return cells


def neighbour(cell: int, relation: str) -> int | None:
    """The cell `relation` of `cell` ("left of" the top right cell is the top left one), None off the grid."""
    row, column = divmod(cell, 2)
    step_row, step_column = RELATIONS[relation]
    row, column = row + step_row, column + step_column
    return 2 * row + column if 0 <= row < 2 and 0 <= column < 2 else None


def shape_set(scene: Scene) -> str:
    kinds = {obj.shape for obj in scene.objects}
    return next(label for label in SHAPE_SETS if set(label.replace(",", "").replace(" and", "").split()) ==
                {f"{kind}s" for kind in kinds})  # fmt: skip


@dataclass
class Query:
    """One query about a scene: its kind, text (with the image, or alone for t2i), answer and oracle trace."""

    kind: str
    text: str
    answer: str
    trace: str


def _trace(steps: str, final: str) -> str:
    return f"{THINK_START}{steps}{THINK_END} {final}"


def oracle_trace_of(seen: str, answer: str) -> str:
    """The oracle's trace of a one-step question: what the image shows, then the answer."""
    return _trace(seen, f"{ANSWER_LEAD} {answer}.")


def ask(kind: str, scene: Scene, rng: random.Random) -> Query | None:
    """A random query of `kind` about `scene`, with its answer and the oracle's trace; None when the scene has no
    such question (e.g. no shape has a neighbour)."""
    cells = by_cell(scene)
    seen = f"The image shows {caption(scene)}."
    if kind == "colour":
        cell = rng.choice(sorted(cells))
        obj = cells[cell]
        return Query(kind, f"what color is the shape at the {CELLS[cell]}?", obj.colour,
                     oracle_trace_of(f"{seen} The shape at the {CELLS[cell]} is the {obj.name}.", obj.colour))
    if kind == "count":
        attribute = rng.choice(["shape", "colour", "all"])
        if attribute == "shape":
            value = rng.choice(SHAPES)
            matches, question = [o for o in scene.objects if o.shape == value], f"how many {value}s are there?"
        elif attribute == "colour":
            value = rng.choice(sorted({o.colour for o in scene.objects} | {rng.choice(list(COLOURS))}))
            matches, question = [o for o in scene.objects if o.colour == value], f"how many {value} shapes are there?"
        else:
            matches, question = scene.objects, "how many shapes are there?"
        number = NUMBER_WORDS[len(matches)]
        listed = " and ".join(f"the {o.name}" for o in matches) or "none"
        return Query(kind, question, number, oracle_trace_of(f"{seen} Matching: {listed}; {number} in all.", number))
    if kind in ("relation", "grounding"):
        options = [(cell, relation) for cell in cells for relation in RELATIONS
                   if neighbour(cell, relation) is not None and (kind == "relation" or neighbour(cell, relation) in cells)]
        if not options:
            return None
        cell, relation = rng.choice(options)
        reference, target = cells[cell], cells.get(neighbour(cell, relation))
        where = f"The {reference.name} is at the {CELLS[cell]}; {relation} it is the {CELLS[neighbour(cell, relation)]}"
        found = f"{where}, which holds the {target.name}." if target else f"{where}, which is empty."
        answer = f"a {target.name}" if target else "nothing"
        if kind == "relation":
            return Query(kind, f"what is {relation} the {reference.name}?", answer,
                         oracle_trace_of(f"{seen} {found}", answer))
        return Query(kind, f"the shape {relation} the {reference.name}", answer,
                     _trace(f"{seen} {found}", f"The shape is {answer}."))
    if kind == "i2t":
        return Query(kind, "", caption(scene), _trace(seen, f"A caption: {caption(scene)}."))
    if kind == "t2i":
        empty = [CELLS[c] for c in range(4) if c not in cells]
        rest = f" The {' and '.join(empty)} {'cells are' if len(empty) > 1 else 'cell is'} empty." if empty else ""
        return Query(kind, caption(scene), "", _trace(f"The caption asks for {caption(scene)}.{rest}",
                                                      f"A matching image shows {caption(scene)}."))
    if kind == "classification":
        label = shape_set(scene)
        return Query(kind, "", label, _trace(f"{seen} Its shapes are {label}.", f"The image contains {label}."))
    raise ValueError(f"unknown query kind {kind!r}; known: {sorted(KINDS)}")


def moved(obj: SceneObject, cell: int, target: int) -> SceneObject:
    """The shape shifted from `cell` to the same place in `target`."""
    shift_x, shift_y = (target % 2 - cell % 2) * (GRID // 2), (target // 2 - cell // 2) * (GRID // 2)
    left, top, right, bottom = obj.box
    return SceneObject(obj.colour, obj.shape, (left + shift_x, top + shift_y, right + shift_x, bottom + shift_y))


def perturb(scene: Scene, rng: random.Random, combos) -> Scene:
    """The scene changed in one detail: a colour, a shape, a position, one shape removed or one added."""
    cells = by_cell(scene)
    used = {(o.colour, o.shape) for o in scene.objects}
    free = [c for c in range(4) if c not in cells]
    changes = ["colour", "shape"] + (["move", "add"] if free else []) + (["remove"] if len(cells) > 1 else [])
    change, cell = rng.choice(changes), rng.choice(sorted(cells))
    new = dict(cells)
    obj = cells[cell]
    if change in ("colour", "shape"):
        options = [c for c in combos if c not in used and (c[1] == obj.shape if change == "colour" else c[0] == obj.colour)]
        if not options:
            return perturb(scene, rng, combos)
        colour, shape = rng.choice(options)
        new[cell] = SceneObject(colour, shape, obj.box)
    elif change == "move":
        target = rng.choice(free)
        del new[cell]
        new[target] = moved(obj, cell, target)
    elif change == "remove":
        del new[cell]
    else:
        extra = grid_scene(rng, 1, [c for c in combos if c not in used])
        target = rng.choice(free)
        (added,) = extra.objects
        new[target] = moved(added, cell_of(added), target)
    return Scene(scene.size, scene.background, [new[c] for c in sorted(new)])


def distractors(scene: Scene, rng: random.Random, count: int) -> list[Scene]:
    """`count` scenes, each changed from `scene` in one detail, with pairwise different captions."""
    seen, result = {caption(scene)}, []
    while len(result) < count:
        other = perturb(scene, rng, COMBOS)
        if caption(other) not in seen:
            seen.add(caption(other))
            result.append(other)
    return result


def oracle_store(folder: str) -> TraceStore:
    """The oracle's trace store; its manifest says that it is an oracle, not a model."""
    return TraceStore.create(folder, make_manifest(ORACLE_REASONER, PROMPT_SET_VERSION, {"oracle": "scene graph"}))


def write_oracle_traces(folder: str, traces: list[tuple[str, str, str]]) -> None:
    """Store the oracle's `(id, side, trace)` entries; writing the data again after a crash (the recipe reruns a step
    whose outputs are incomplete) keeps the traces already stored and adds no duplicate."""
    oracle_store(folder).append(traces)


def write_train_sources(folder: str, num_images: int, seed: int) -> list[dict]:
    """Render `num_images` training scenes (1-3 shapes, held-out combinations excluded) and write one MMEB-train
    source per ECR family (`<family>.jsonl`: every kind of query each scene allows), the oracle's traces of every
    row (`oracle-traces/`), `perception.jsonl` (the vision tower's data: each scene's caption and what one cell
    holds) and `captions.jsonl` (its caption rows alone: the cells objective's data). Returns the data-config source
    entries of the family sources."""
    rng = random.Random(seed)
    os.makedirs(os.path.join(folder, "images"), exist_ok=True)
    rows = {family: [] for family, _, _ in KINDS.values()}
    traces, perception = [], []
    for index in range(num_images):
        scene = grid_scene(rng, rng.randint(1, 3))
        path = f"images/{index:06d}.png"
        render(scene).save(os.path.join(folder, path))
        cell = rng.randrange(4)
        here = by_cell(scene).get(cell)
        perception += [
            {"id": f"{index:06d}-describe", "qry": CAPTION_QUESTION, "qry_image_path": path, "pos_text": caption(scene)},
            {"id": f"{index:06d}-cell", "qry": f"what is at the {CELLS[cell]}?", "qry_image_path": path,
             "pos_text": f"a {here.name}" if here else "nothing"},
        ]  # fmt: skip
        for kind, (family, instruction, _) in KINDS.items():
            query = ask(kind, scene, rng)
            if query is None:
                continue
            row = {"id": f"{index:06d}-{kind}", "qry_inst": instruction, "qry": query.text}
            if kind == "t2i":
                row.update(pos_text="", pos_image_path=path)
            else:
                row.update(qry_image_path=path, pos_text=query.answer)
            rows[family].append(row)
            traces.append((row["id"], TRACE_SIDE, query.trace))
    write_oracle_traces(os.path.join(folder, "oracle-traces"), traces)
    write_atomic(os.path.join(folder, "perception.jsonl"), "".join(json.dumps(r) + "\n" for r in perception))
    write_atomic(os.path.join(folder, "captions.jsonl"),
                 "".join(json.dumps(r) + "\n" for r in perception if r["id"].endswith("-describe")))
    sources = []
    for family, family_rows in rows.items():
        write_atomic(os.path.join(folder, f"{family}.jsonl"), "".join(json.dumps(r) + "\n" for r in family_rows))
        sources.append({"name": f"scenes-{family}", "path": f"{family}.jsonl", "image_dir": ".", "task": family,
                        "weight": float(len(family_rows))})  # fmt: skip
    return sources


def write_one_shape_sft(scenes_dir: str, num_images: int, store_dir: str) -> list[dict]:
    """Part 1's one-shape data as reasoner-SFT rows, with the oracle's traces, so that an SFT on grid scenes keeps
    the single-shape skills that part 1 taught (the easy-VQA control, and the default model's descriptions).

    Reads the first `num_images` images of `training.scenes.write_alignment_source`'s `scenes_dir`: their colour,
    shape and yes/no questions as asked there (the `vqa` family, the question as text) go to
    `one-shape-questions.jsonl`, and a description request per image (the instruction `describe the image.` under the
    default `retrieval` family, as `training.eval_easy_vqa` asks it) to `one-shape-descriptions.jsonl`. Ids are
    prefixed with `one-shape-` so that they never meet a scene task's in the store. Each row's trace, appended to the
    oracle's store at `store_dir`: `<think>The image shows a <colour> <shape>.</think> The answer is <answer>.`

    Returns:
        Data-config source entries (paths relative to `scenes_dir`'s parent), weighted by their row counts.
    """
    with open(os.path.join(scenes_dir, "scenes.jsonl")) as handle:
        scenes = {graph["image"]: graph for graph in map(json.loads, handle.read().splitlines()[:num_images])}
    with open(os.path.join(scenes_dir, "rows.jsonl")) as handle:
        rows = [row for row in map(json.loads, handle) if row["qry_image_path"] in scenes]
    questions, descriptions, traces = [], [], []
    for row in rows:
        (shape,) = scenes[row["qry_image_path"]]["objects"]
        seen = f"The image shows a {shape['colour']} {shape['shape']}."
        kind = row["id"].rsplit("-", 1)[1]
        if kind == "caption":
            row = {"id": f"one-shape-{row['id']}", "qry_inst": CAPTION_QUESTION, "qry": "",
                   "qry_image_path": row["qry_image_path"], "pos_text": row["pos_text"]}  # fmt: skip
            descriptions.append(row)
        else:
            row = {**row, "id": f"one-shape-{row['id']}"}
            questions.append(row)
        traces.append((row["id"], TRACE_SIDE, oracle_trace_of(seen, row["pos_text"])))
    write_oracle_traces(store_dir, traces)  # with the scene tasks' traces
    sources, folder = [], os.path.basename(os.path.normpath(scenes_dir))
    for name, family, family_rows in (("questions", "vqa", questions), ("descriptions", "retrieval", descriptions)):
        filename = f"one-shape-{name}.jsonl"
        write_atomic(os.path.join(scenes_dir, filename), "".join(json.dumps(row) + "\n" for row in family_rows))
        sources.append({"name": f"one-shape-{name}", "path": os.path.join(folder, filename), "image_dir": folder,
                        "task": family, "weight": float(len(family_rows))})  # fmt: skip
    return sources


def row_fingerprint(kind: str, text: str, image: Image.Image) -> str:
    """What makes two scene-task rows the same query: the kind, the query text and the scene's pixels (the query
    image; for t2i, whose query is text, the positive image)."""
    return hashlib.sha256(b"\0".join([kind.encode(), text.encode(), image.convert("RGB").tobytes()])).hexdigest()


def split_fingerprints(folder: str) -> set[str]:
    """The `row_fingerprint` of every row of the scene tasks written in `folder` (by `write_test_tasks`)."""
    found = set()
    for kind in KINDS:
        task_dir = os.path.join(folder, f"scene-{kind}")
        for row in read_records(task_dir, ROWS_STEM):
            with Image.open(os.path.join(task_dir, row["qry_img_path"] or row["tgt_img_path"][0])) as image:
                found.add(row_fingerprint(kind, row["qry_text"], image))
    return found


def write_test_tasks(folder: str, rows_per_task: int, seed: int, control_images: int = 0,
                     exclude: frozenset[str] = frozenset()) -> list[str]:  # fmt: skip
    """One `tte_eval` user task per kind (`folder/scene-<kind>/`), each scene holding a held-out combination, the
    easy-VQA control task on `control_images` test images (`write_easy_vqa_control`, none when 0), and the oracle's
    traces of every query in `folder/oracle-traces/` (id `"<task name>/<row index>"`).

    `exclude`: `row_fingerprint`s of another split's rows (`split_fingerprints`), drawn again here, so that a
    development split drawn like the test split shares none of its queries."""
    rng = random.Random(seed)
    traces, written = [], []
    for kind, (family, instruction, metric) in KINDS.items():
        name = f"scene-{kind}"
        task_dir = os.path.join(folder, name)
        os.makedirs(os.path.join(task_dir, "images"), exist_ok=True)
        rows = []
        while len(rows) < rows_per_task:
            scene = grid_scene(rng, rng.randint(2, 3), COMBOS, must_hold=[rng.choice(HELD_OUT)])
            query = ask(kind, scene, rng)
            if query is None:
                continue
            image = render(scene)
            if exclude and row_fingerprint(kind, query.text, image) in exclude:
                continue
            index = len(rows)
            path = f"images/{index:04d}.png"
            image.save(os.path.join(task_dir, path))
            row = {"qry_inst": instruction, "qry_text": query.text, "qry_img_path": path, "tgt_inst": "",
                   "positives": [0]}  # fmt: skip
            if kind == "t2i":
                others = distractors(scene, rng, 9)
                for number, other in enumerate(others):
                    render(other).save(os.path.join(task_dir, f"images/{index:04d}-{number}.png"))
                row.update(qry_img_path="", tgt_text=[""] * 10,
                           tgt_img_path=[path] + [f"images/{index:04d}-{n}.png" for n in range(9)])  # fmt: skip
            else:
                row.update(tgt_text=[query.answer, *candidates(kind, query.answer, scene, rng)])
                row["tgt_img_path"] = [""] * len(row["tgt_text"])
            rows.append(row)
            traces.append((f"{name}/{index}", TRACE_SIDE, query.trace))
        spec = {"name": name, "modality": "image", "eval_type": "local", "metric": metric, "task": family}
        write_task(task_dir, spec, rows)
        written.append(task_dir)
    if control_images:
        control = os.path.join(folder, "easy-vqa-control")
        traces += [(key, TRACE_SIDE, trace) for key, trace in write_easy_vqa_control(control, control_images)]
        written.append(control)
    write_oracle_traces(os.path.join(folder, "oracle-traces"), traces)
    return written


def candidates(kind: str, answer: str, scene: Scene, rng: random.Random) -> list[str]:
    """The wrong targets of a text-answer query: every other answer of its kind (captions: 9 one-detail changes)."""
    pools = {"colour": list(COLOURS), "count": list(NUMBER_WORDS), "relation": NAMES + ["nothing"],
             "grounding": NAMES, "classification": SHAPE_SETS}  # fmt: skip
    if kind == "i2t":
        return [caption(other) for other in distractors(scene, rng, 9)]
    return [option for option in pools[kind] if option != answer]


@dataclass
class SceneTaskArgs:
    output_dir: str = field(metadata={"help": "Writes train/ (sources + oracle traces) and test/ (user tasks)."})
    train_images: int = field(default=4000, metadata={"help": "Training scenes."})
    test_rows: int = field(default=50, metadata={"help": "Query rows per test task."})
    control_images: int = field(default=40, metadata={"help": "easy-VQA test images of the control task (0: none)."})
    seed: int = field(default=0, metadata={"help": "Training scenes use seed, test scenes seed + 1."})


def write_scene_tasks(args: SceneTaskArgs) -> tuple[list[dict], list[str]]:
    sources = write_train_sources(os.path.join(args.output_dir, "train"), args.train_images, args.seed)
    test = os.path.join(args.output_dir, "test")
    return sources, write_test_tasks(test, args.test_rows, args.seed + 1, args.control_images)


def main(argv: list[str] | None = None) -> None:
    (args,) = HfArgumentParser(SceneTaskArgs).parse_args_into_dataclasses(argv)
    sources, tasks = write_scene_tasks(args)
    print(f"wrote {len(sources)} training sources and {len(tasks)} test tasks to {args.output_dir}")


__all__ = ["CELLS", "HELD_OUT", "KINDS", "ORACLE_REASONER", "RELATIONAL_KINDS", "Query", "ask", "caption",
           "grid_scene", "oracle_store", "row_fingerprint", "split_fingerprints", "write_scene_tasks",
           "write_test_tasks", "write_train_sources"]  # fmt: skip


if __name__ == "__main__":
    main()
