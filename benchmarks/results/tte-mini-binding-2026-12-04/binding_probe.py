"""Throw-away probe: are a reasoner's misread objects unseen, or seen and put in the wrong cell?

Per object of the oracle's scene ("The image shows ..."): read in its own cell, read in another cell (moved
up-down, left-right or diagonally), or not read anywhere; and the share of the scene's colours read anywhere.

    # traces already in a store (e.g. the student's traces of the embedder's training rows)
    python binding_probe.py store <oracle store> <trace store> <output.json>
    # a model's answers to "describe the image." on the first N test scenes
    python binding_probe.py describe <model> <scene-tasks/test> <N> <output.json>
"""

import collections
import json
import os
import sys

from training.trace_quality import read_cells
from tte_eval.runner import read_query_traces


def describe_test_scenes(model_dir: str, test_dir: str, count: int) -> list[tuple[dict, dict]]:
    import torch
    from tte.modeling_tte import TTEModel
    from tte_eval.user_tasks import load_user_tasks

    model = TTEModel.from_pretrained(model_dir).eval()
    oracle, _ = read_query_traces(os.path.join(test_dir, "oracle-traces"))
    scenes = {}
    for task in load_user_tasks(test_dir):
        for row in task.data.rows:
            truth = read_cells(oracle.get(f"{task.data.spec.name}/{row.row_id}", ""))
            if row.query.image and truth:
                scenes.setdefault(row.query.image, truth)
    paths, answers = list(scenes)[:count], []
    with torch.no_grad():
        for start in range(0, len(paths), 16):
            items = [{"image": path, "text": "describe the image."} for path in paths[start:start + 16]]
            answers += model.encode_query(items, task="vqa", think="always", return_reasoning=True)[1]
    return [(scenes[path], read_cells(f"The image shows {answer.strip().rstrip('.')}.")) for path, answer in
            zip(paths, answers)]


def binding(pairs: list[tuple[dict, dict]]) -> dict:
    outcomes, colours_anywhere, objects = collections.Counter(), 0, 0
    for truth, read in pairs:
        colours_anywhere += sum((collections.Counter(colour for colour, _ in truth.values())
                                 & collections.Counter(colour for colour, _ in read.values())).values())
        for cell, thing in truth.items():
            objects += 1
            elsewhere = [other for other, seen in read.items() if seen == thing and other != cell]
            if read.get(cell) == thing:
                outcomes["in its cell"] += 1
            elif not elsewhere:
                outcomes["not read anywhere"] += 1
            else:
                (row, column), (row2, column2) = cell.split(), elsewhere[0].split()
                outcomes["moved up-down (same column)" if column == column2 else
                         "moved left-right (same row)" if row == row2 else "moved diagonally"] += 1
    return {"scenes": len(pairs), "objects": objects,
            "objects_percent": {name: round(100 * n / objects, 1) for name, n in sorted(outcomes.items())},
            "colours_read_anywhere_in_the_scene_percent": round(100 * colours_anywhere / objects, 1)}


if __name__ == "__main__":
    mode, *arguments = sys.argv[1:]
    if mode == "store":
        oracle_store, trace_store, output = arguments
        (oracle, _), (traces, _) = read_query_traces(oracle_store), read_query_traces(trace_store)
        scenes = {key: read_cells(oracle.get(key, "")) for key in traces}
        pairs = [(scenes[key], read_cells(trace)) for key, trace in traces.items() if scenes[key]]
        source = trace_store
    else:
        model_dir, test_dir, count, output = arguments
        pairs, source = describe_test_scenes(model_dir, test_dir, int(count)), model_dir
    result = {"source": source, **binding(pairs)}
    with open(output, "w") as handle:
        json.dump(result, handle, indent=1)
    print(json.dumps(result))
