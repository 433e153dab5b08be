"""Experiment: the unified backbone's own traces for every test query, as a trace store tte-eval --traces reads,
plus variants of them cut shorter. Usage: python test_traces.py MODEL TASKS_DIR OUT_DIR"""
import json, os, sys, time
import torch
from transformers import AutoModel
from tte_eval.user_tasks import load_user_tasks
from training.traces import TraceStore, make_manifest

model_dir, tasks_dir, out = sys.argv[1:4]
torch.manual_seed(0)
model = AutoModel.from_pretrained(model_dir, trust_remote_code=True).eval()
tasks = load_user_tasks(os.path.abspath(tasks_dir))
rows = [(t.data.spec.name, r) for t in tasks for r in t.data.rows]
keys, items = [f"{n}/{r.row_id}" for n, r in rows], [r.query.model_input() for n, r in rows]
for item in items:
    item.pop("reasoning", None)
parsed = model.processor.parse_inputs(items)
texts, ids = [], []
start = time.time()
with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=False):
    for s in range(0, len(parsed), 16):
        t, i, _ = model.generate_traces(parsed[s:s + 16], where=keys[s:s + 16])
        texts += t; ids += i
        print(s, time.time() - start, flush=True)
store = TraceStore.create(os.path.join(out, "full"), make_manifest("unified-backbone", "ecr-v1", {"greedy": True, "max_new_tokens": model.config.max_new_tokens}))
store.append([(k, "query", t) for k, t in zip(keys, texts)])
json.dump({"keys": keys, "texts": texts, "ids": ids}, open(os.path.join(out, "traces.json"), "w"))
print("tokens/query", sum(map(len, ids)) / len(ids))
