"""Throw-away probe (not project code): what a model's 4 visual tokens carry, read by linear probes.

    PYTHONPATH=. python token_probe.py MODEL SCENE_TASKS_DIR OUT.json

One logistic-regression probe for colour (8 + empty) and one for shape (3 + empty), each shared by the 4 cell tokens
(standardised features, C=10), fitted on the merged visual tokens of the training scenes (SCENE_TASKS_DIR/train, the
captions of perception.jsonl) and scored on the distinct images of the held-out test tasks (truth: the oracle trace's
scene sentence), split into objects of combinations seen in training grids, held-out combinations and empty cells.
A third probe asks each token which cell it is, from its content alone.
"""
import json, os, sys

import numpy as np, torch
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from training.scene_tasks import CELLS, HELD_OUT
from training.trace_quality import read_cells
from tte.modeling_tte import TTEModel
from tte_eval.runner import read_query_traces
from tte_eval.user_tasks import load_user_tasks

model_dir, tasks_dir, output = sys.argv[1:4]
model = TTEModel.from_pretrained(model_dir).eval()


def visual_tokens(paths: list[str]) -> np.ndarray:
    """(images, 4, hidden): the merged visual tokens, in raster order of the cells."""
    tokens = []
    with torch.no_grad():
        for start in range(0, len(paths), 64):
            images = [Image.open(path).convert("RGB") for path in paths[start:start + 64]]
            inputs = model.processor.image_processor(images=images, return_tensors="pt")
            features = model.backbone.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"])
            tokens += [image.float().numpy() for image in features.pooler_output]
    return np.stack(tokens)


def per_cell(cells: dict) -> list[tuple[str, str]]:
    return [cells.get(cell, ("none", "none")) for cell in CELLS]


train_dir = os.path.join(tasks_dir, "train")
rows = [json.loads(line) for line in open(os.path.join(train_dir, "perception.jsonl"))]
rows = [row for row in rows if row["id"].endswith("-describe")]
train_x = visual_tokens([os.path.join(train_dir, row["qry_image_path"]) for row in rows])
train_y = np.array([per_cell(read_cells(f"The image shows {row['pos_text']}.")) for row in rows])
oracle, _ = read_query_traces(os.path.join(tasks_dir, "test", "oracle-traces"))
test = {}
for task in load_user_tasks(os.path.join(tasks_dir, "test")):
    for row in task.data.rows:
        trace = oracle.get(f"{task.data.spec.name}/{row.row_id}", "")
        if row.query.image and read_cells(trace) and row.query.image not in test:
            test[row.query.image] = per_cell(read_cells(trace))
test_x, test_y = visual_tokens(list(test)), np.array(list(test.values()))

scaler = StandardScaler().fit(train_x.reshape(-1, train_x.shape[-1]))
train_flat, test_flat = (scaler.transform(x.reshape(-1, x.shape[-1])) for x in (train_x, test_x))
combos = [tuple(pair) for pair in test_y.reshape(-1, 2)]
groups = {"seen combinations": np.array([c[0] != "none" and c not in HELD_OUT for c in combos]),
          "held-out combinations": np.array([c in HELD_OUT for c in combos]),
          "empty cells": np.array([c[0] == "none" for c in combos])}
results = {"model": model_dir, "train_scenes": len(train_x), "test_scenes": len(test_x),
           "test_cells": {name: int(mask.sum()) for name, mask in groups.items()}}
for name, column in (("colour", 0), ("shape", 1)):
    probe = LogisticRegression(max_iter=5000, C=10).fit(train_flat, train_y[:, :, column].reshape(-1))
    right = probe.predict(test_flat) == test_y[:, :, column].reshape(-1)
    results[name] = {"train_percent": round(100 * probe.score(train_flat, train_y[:, :, column].reshape(-1)), 1),
                     **{f"test_{group}_percent": round(100 * right[mask].mean(), 1) for group, mask in groups.items()}}
cell = LogisticRegression(max_iter=5000, C=10).fit(train_flat, np.tile(np.arange(4), len(train_x)))
results["cell_from_content_test_percent"] = round(100 * cell.score(test_flat, np.tile(np.arange(4), len(test_x))), 1)
print(json.dumps(results, indent=1))
with open(output, "w") as handle:
    json.dump(results, handle, indent=1)
