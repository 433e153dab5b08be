"""Throw-away experiment (not project code): train the vision tower alone to say, per cell token, the cell's colour
and shape, through two linear heads shared by the 4 cell tokens (cross-entropy, no pass through the language model;
the heads are thrown away). Run as it was on 2026-12-04:

    PYTHONPATH=. python cells_objective.py <run>/vision-answers/model <run>/data/scene-tasks/train 1500 OUT_MODEL

Data: the "-describe" rows of perception.jsonl (the grid stage's captions, 3,000 training scenes; held-out
combinations never occur), batches of 64 images, AdamW 1e-3 one-cycle, bf16 autocast. 1,500 steps take 3.5 min on
the 2-core CPU.
"""
import json, os, sys, time

import torch
import torch.nn.functional as F
from PIL import Image

from training.scene_tasks import CELLS
from training.scenes import COLOURS, SHAPES
from training.trace_quality import read_cells
from tte.modeling_tte import TTEModel

model_dir, train_dir, steps, output = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
torch.manual_seed(0)
model = TTEModel.from_pretrained(model_dir)
tower = model.backbone.model.visual
colours, shapes = ["none", *COLOURS], ["none", *SHAPES]
rows = [json.loads(line) for line in open(os.path.join(train_dir, "perception.jsonl"))]
rows = [row for row in rows if row["id"].endswith("-describe")]
labels = torch.tensor([[[colours.index(colour), shapes.index(shape)]
                        for colour, shape in (read_cells(f"The image shows {row['pos_text']}.").get(cell, ("none", "none"))
                                              for cell in CELLS)] for row in rows])  # fmt: skip
images = [Image.open(os.path.join(train_dir, row["qry_image_path"])).convert("RGB") for row in rows]
inputs = model.processor.image_processor(images=images, return_tensors="pt")
patches = inputs["pixel_values"].view(len(rows), -1, inputs["pixel_values"].shape[-1])
grid = inputs["image_grid_thw"][:1]
heads = torch.nn.Linear(tower.config.hidden_size, len(colours) + len(shapes))
optimizer = torch.optim.AdamW([*tower.parameters(), *heads.parameters()], lr=1e-3, weight_decay=0.01)
schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, 1e-3, total_steps=steps, pct_start=0.05)
tower.train()
start = time.time()
for step in range(steps):
    batch = torch.randint(0, len(rows), (64,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        tokens = tower(patches[batch].flatten(0, 1), grid_thw=grid.repeat(64, 1)).pooler_output.float()
    logits, truth = heads(tokens), labels[batch].view(-1, 2)
    loss = F.cross_entropy(logits[:, :len(colours)], truth[:, 0]) + F.cross_entropy(logits[:, len(colours):], truth[:, 1])
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    schedule.step()
    if step % 100 == 0:
        print(f"step {step} loss {loss.item():.4f} {time.time() - start:.0f} s", flush=True)
model.save_pretrained(output)
