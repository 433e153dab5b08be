"""Test-split analysis (reporting only, never for choosing the threshold): the published gated model's overall hit@1
and think rate at each gate threshold, from its think=queries / think=never evaluation caches (every query thinks / none does; documents never) and its gate's logits."""
import json, os, sys
import numpy as np, torch
from tte.modeling_tte import TTEModel
from tte_eval.cache import input_key
from tte_eval.user_tasks import load_user_tasks

run = sys.argv[1]
model = TTEModel.from_pretrained(os.path.join(run, "published")).eval()
tasks = [t.data for t in load_user_tasks(os.path.join(run, "data", "scene-tasks", "test"))]

def cache(folder, name):
    with np.load(os.path.join(run, "eval", folder, "cache", "user", f"{name}.npz"), allow_pickle=False) as c:
        return dict(zip(c["query_keys"].tolist(), c["query_embeddings"])), dict(zip(c["document_keys"].tolist(), c["document_embeddings"]))

per_task = []
for task in tasks:
    (qa, da), (qn, dn) = cache("unified-think-queries", task.spec.name), cache("unified-think-never", task.spec.name)
    inputs = [row.query.model_input() for row in task.rows]
    with torch.no_grad():
        logits = model.gate(model.gate_features(inputs, batch_size=16).to(model.dtype)).float().numpy()
    hits = []
    for row in task.rows:
        k = input_key(row.query.model_input())
        right = []
        for q, d in ((qa[k], da), (qn[k], dn)):
            scores = [d[input_key(c.item.model_input())] @ q for c in row.candidates]
            right.append(row.candidates[int(np.argmax(scores))].cand_id in row.labels)
        hits.append(right)
    per_task.append((task.spec.name, logits, np.array(hits)))

scene = [p for p in per_task if p[0].startswith("scene-")]
logits = np.concatenate([p[1] for p in scene])
print("published threshold", model.config.gate_threshold)
rows = []
for threshold in [model.config.gate_threshold, *np.quantile(logits, np.linspace(0, 1, 11))]:
    scores, thinking = [], []
    for name, l, h in scene:
        think = l > threshold
        scores.append(100 * np.where(think, h[:, 0], h[:, 1]).mean()); thinking.append(think)
    rows.append({"threshold": float(threshold), "think_rate": float(np.concatenate(thinking).mean()), "overall": float(np.mean(scores))})
    print(json.dumps(rows[-1]))
oracle = np.mean([100 * (h[:, 0] | h[:, 1]).mean() for _, _, h in scene])
print("oracle gate", oracle, "queries", np.mean([100*h[:,0].mean() for *_, h in scene]), "never", np.mean([100*h[:,1].mean() for *_, h in scene]))
