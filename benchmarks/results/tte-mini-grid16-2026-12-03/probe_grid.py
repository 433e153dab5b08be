"""Throw-away probe of a grid-stage model's perception (not project code): ask each scene image "describe the image."
under the vqa prompt family, as the grid stage trains it, and read the answer back per cell against the truth.

    PYTHONPATH=. python probe_grid.py MODEL TRAIN_DIR TEST_DIR N
train: the first N "-describe" rows of TRAIN_DIR/perception.jsonl (truth: their captions);
test: the first N distinct query images of TEST_DIR's scene tasks (truth: the oracle trace's scene sentence).
"""
import json, os, sys

import torch

from training.trace_quality import read_cells, reading_scores
from tte.modeling_tte import TTEModel
from tte_eval.runner import read_query_traces
from tte_eval.user_tasks import load_user_tasks

model_dir, train_dir, test_dir, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
model = TTEModel.from_pretrained(model_dir).eval()


def describe(images):
    answers = []
    with torch.no_grad():
        for start in range(0, len(images), 16):
            items = [{"image": image, "text": "describe the image."} for image in images[start:start + 16]]
            answers += model.encode_query(items, task="vqa", think="always", return_reasoning=True)[1]
    return [f"The image shows {answer.strip().rstrip('.')}." for answer in answers]


rows = [json.loads(line) for line in open(os.path.join(train_dir, "perception.jsonl"))]
rows = [row for row in rows if row["id"].endswith("-describe")][:n]
truth = {row["id"]: f"The image shows {row['pos_text']}." for row in rows}
read = dict(zip(truth, describe([os.path.join(train_dir, row["qry_image_path"]) for row in rows])))
results = {"model": model_dir, "train": reading_scores(read, truth)}

oracle, _ = read_query_traces(os.path.join(test_dir, "oracle-traces"))
images = {}
for task in load_user_tasks(test_dir):
    for row in task.data.rows:
        key = f"{task.data.spec.name}/{row.row_id}"
        if row.query.image and read_cells(oracle.get(key, "")) and row.query.image not in images:
            images[row.query.image] = oracle[key]
images = dict(list(images.items())[:n])
truth = {image: trace for image, trace in images.items()}
read = dict(zip(truth, describe(list(truth))))
results["test"] = reading_scores(read, truth)
print(json.dumps(results, indent=2))
