"""Throw-away: per-cell colour / shape accuracy of a grid model's "describe the image." answers on held-out test
scenes, split by whether the true object is a held-out colour-shape combination."""
import json, os, sys
import torch
from training.scene_tasks import HELD_OUT
from training.trace_quality import read_cells
from tte.modeling_tte import TTEModel
from tte_eval.runner import read_query_traces
from tte_eval.user_tasks import load_user_tasks
model_dir, test_dir, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
model = TTEModel.from_pretrained(model_dir).eval()
oracle, _ = read_query_traces(os.path.join(test_dir, "oracle-traces"))
images = {}
for task in load_user_tasks(test_dir):
    for row in task.data.rows:
        key = f"{task.data.spec.name}/{row.row_id}"
        if row.query.image and read_cells(oracle.get(key, "")) and row.query.image not in images:
            images[row.query.image] = read_cells(oracle[key])
images = dict(list(images.items())[:n])
answers = []
with torch.no_grad():
    paths = list(images)
    for s in range(0, len(paths), 16):
        items = [{"image": p, "text": "describe the image."} for p in paths[s:s + 16]]
        answers += model.encode_query(items, task="vqa", think="always", return_reasoning=True)[1]
counts = {True: [0, 0, 0, 0], False: [0, 0, 0, 0]}  # present, read, colour right, shape right
for path, answer in zip(images, answers):
    read = read_cells(f"The image shows {answer.strip().rstrip('.')}.")
    for cell, (colour, shape) in images[path].items():
        c = counts[(colour, shape) in HELD_OUT]
        c[0] += 1
        if cell in read:
            c[1] += 1; c[2] += read[cell][0] == colour; c[3] += read[cell][1] == shape
for held, (n_, r, col, sh) in counts.items():
    print(f"held_out={held}: objects {n_}, read as present {100*r/n_:.1f} %, colour {100*col/max(r,1):.1f} %, shape {100*sh/max(r,1):.1f} %")
