"""How well a reasoner reads a scene: the scene description in its traces against the oracle's, on test queries.

Every oracle trace of an image query in the scene tasks opens with "The image shows <caption>." (the shapes and
their cells, `training.scene_tasks.caption`), and a reasoner SFT'd on those traces writes the same sentence. Reading
that sentence back per cell separates perception (did it see the shapes?) from everything after it: a student whose
traces misread the scene cannot help its embedder, however well it reasons.

    python -m training.trace_quality --model runs/tte-mini/variants/student/model \
        --tasks_dir runs/tte-mini/data/scene-tasks/test --output runs/tte-mini/eval/student-reading.json

Reports, over the sampled image queries: the share of scenes read exactly, of cells whose occupancy is right, and
of the shapes present in both readings whose colour and whose shape are right. A trace without the sentence reads
every cell as empty.
"""

import json
import os
import re
from dataclasses import dataclass, field

import torch
from transformers import HfArgumentParser

from training.checkpoint import write_atomic
from training.scene_tasks import CELLS, PLACED
from tte.modeling_tte import TTEModel
from tte_eval.model_io import model_hash
from tte_eval.runner import read_query_traces
from tte_eval.user_tasks import load_user_tasks


SEEN = re.compile(r"The image shows (.*?)\.")


@dataclass
class TraceQualityArgs:
    model: str = field(metadata={"help": "A TTE model folder whose reasoner writes the traces."})
    tasks_dir: str = field(metadata={"help": "The scene tasks' test folder (with oracle-traces/)."})
    output: str = field(metadata={"help": "JSON file for the scores."})
    queries_per_task: int = field(default=20, metadata={"help": "First rows of each task with image queries."})
    batch_size: int = field(default=16, metadata={"help": "Queries per generation batch."})


def read_cells(trace: str) -> dict[str, tuple[str, str]]:
    """`{cell: (colour, shape)}` from the trace's "The image shows ..." sentence; parts it cannot read are left out."""
    seen = SEEN.search(trace)
    cells = {}
    for part in seen.group(1).split(", ") if seen else []:
        placed = PLACED.fullmatch(part.strip())
        if placed:
            cells[placed.group(3)] = (placed.group(1), placed.group(2))
    return cells


def reading_scores(traces: dict[str, str], oracle: dict[str, str]) -> dict:
    """Scene, occupancy, colour and shape accuracy (%) of `traces` against the oracle's, for the keys of `traces`."""
    scenes = exact = occupancy = both = colour = shape = 0
    for key, trace in traces.items():
        truth, read = read_cells(oracle[key]), read_cells(trace)
        scenes += 1
        exact += truth == read
        occupancy += sum((cell in truth) == (cell in read) for cell in CELLS)
        for cell in truth.keys() & read.keys():
            both += 1
            colour += truth[cell][0] == read[cell][0]
            shape += truth[cell][1] == read[cell][1]
    return {"queries": scenes, "scene_exact": 100 * exact / scenes, "cell_occupancy": 100 * occupancy / (4 * scenes),
            "colour": 100 * colour / max(both, 1), "shape": 100 * shape / max(both, 1), "shapes_compared": both}


def image_queries(tasks_dir: str, per_task: int) -> dict[str, dict]:
    """The first `per_task` image queries of each task, as model inputs by row key `"<task>/<row id>"`."""
    queries = {}
    for task in load_user_tasks(tasks_dir):
        rows = [row for row in task.data.rows if row.query.image][:per_task]
        queries.update({f"{task.data.spec.name}/{row.row_id}": row.query.model_input() for row in rows})
    return queries


def model_traces(model: TTEModel, queries: dict[str, dict], batch_size: int) -> dict[str, str]:
    """The model's trace of each query (its own reasoner, greedy, the tokens `tte-eval` embeds); no embedding."""
    keys, traces = list(queries), []
    with torch.no_grad():
        for start in range(0, len(keys), batch_size):
            batch = [queries[key] for key in keys[start : start + batch_size]]
            traces += model.reason(model.processor.parse_inputs(batch))
    return dict(zip(keys, traces))


def main(argv: list[str] | None = None) -> dict:
    (args,) = HfArgumentParser(TraceQualityArgs).parse_args_into_dataclasses(argv)
    oracle, manifest = read_query_traces(os.path.join(args.tasks_dir, "oracle-traces"))
    queries = {key: item for key, item in image_queries(args.tasks_dir, args.queries_per_task).items()
               if read_cells(oracle.get(key, ""))}  # grid scenes: the one-shape control's traces name no cell
    if not queries:
        raise ValueError(f"{args.tasks_dir}: no image query of a grid scene with an oracle trace to compare with")
    model = TTEModel.from_pretrained(args.model).eval()
    scores = {"model_hash": model_hash(args.model), "reference": manifest["reasoner"],
              **reading_scores(model_traces(model, queries, args.batch_size), oracle)}  # fmt: skip
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    write_atomic(args.output, json.dumps(scores, indent=2) + "\n")
    print(json.dumps(scores, indent=2))
    return scores


if __name__ == "__main__":
    main()
