"""Offline: per scene task, the gated seed-1 model's hit@1 thinking vs not, and its trace tokens; then every per-task
think/skip policy's overall score and token-weighted cost (reporting only: chosen on the test split)."""
import itertools, json, os, sys
import numpy as np
sys.path.insert(0, '/work/main')
from tte_eval.cache import input_key
from tte_eval.user_tasks import load_user_tasks
run = '/work/exp/seed1a'
tasks = [t.data for t in load_user_tasks(os.path.join(run, "data", "scene-tasks", "test"))]
tr = json.load(open('/work/exp/cut1/traces.json'))
tokens = {k: len(i) for k, i in zip(tr['keys'], tr['ids'])}
def cache(folder, name):
    with np.load(os.path.join(run, "eval", folder, "cache", "user", f"{name}.npz"), allow_pickle=False) as c:
        return dict(zip(c["query_keys"].tolist(), c["query_embeddings"])), dict(zip(c["document_keys"].tolist(), c["document_embeddings"]))
stats = {}
for task in tasks:
    if not task.spec.name.startswith('scene-'): continue
    (qa, da), (qn, dn) = cache("unified-think-queries", task.spec.name), cache("unified-think-never", task.spec.name)
    hits = []
    for row in task.rows:
        k = input_key(row.query.model_input()); right = []
        for q, d in ((qa[k], da), (qn[k], dn)):
            s = [d[input_key(c.item.model_input())] @ q for c in row.candidates]
            right.append(row.candidates[int(np.argmax(s))].cand_id in row.labels)
        hits.append(right)
    h = np.array(hits)
    toks = np.mean([tokens[f"{task.spec.name}/{r.row_id}"] for r in task.rows])
    stats[task.spec.name] = (100 * h[:, 0].mean(), 100 * h[:, 1].mean(), toks)
    print(task.spec.name, 'think %.0f never %.0f tokens %.1f' % stats[task.spec.name])
names = list(stats)
A, B = 150.0, 65.0  # ms per query outside decoding, ms per generated token (seed-1 measurements, approximate)
full = np.mean([A + B * stats[n][2] for n in names])
student = full / 0.92
best = []
for mask in itertools.product([0, 1], repeat=len(names)):
    score = np.mean([stats[n][0] if m else stats[n][1] for n, m in zip(names, mask)])
    cost = np.mean([A + (B * stats[n][2] if m else 0) for n, m in zip(names, mask)])
    best.append((cost / student, score, ''.join(map(str, mask))))
best.sort()
front = []; top = -1
for c, s, m in best:
    if s > top: front.append((round(c, 2), round(s, 1), {n[6:]: int(x) for n, x in zip(names, m)})); top = s
for f in front: print(f)
