"""Experiment: a per-task-family thinking policy for the gated seed-1 unified model, chosen on the development split,
scored on the test split from the evaluation caches, and timed against the student side by side.

1. On dev (eval caches of --think queries and --think never on scene-tasks/dev): per task, hit@1 with and without the
   trace; per family, the oracle trace tokens of its queries (the student copies the oracle's lengths).
2. The policy: the subset of ECR families that think with the fewest dev trace tokens whose dev overall score is
   within 2 points of every query thinking (the recipe gate's tolerance).
3. Test: the overall score of that policy from the test caches (think=queries / think=never), reporting only.
4. Latency: student vs unified (every query thinks) vs unified (the policy, per-input "think"), batch 1, variants
   alternating, each query's median over the rounds, averaged over the comparison's 16 latency queries.
Usage: python family_policy.py RUN DEV_EVAL_DIR"""
import itertools, json, os, sys, time
import numpy as np, torch
sys.path.insert(0, '/work/main')
from transformers import AutoModel, AutoTokenizer
from tte_eval.cache import input_key
from tte_eval.user_tasks import load_user_tasks
from tte_eval.runner import read_query_traces
from training.compare_variants import latency_sample, variant_model

run, dev_eval = sys.argv[1:3]
tokenizer = AutoTokenizer.from_pretrained(os.path.join(run, 'published'))

def hits(tasks_dir, queries_dir, never_dir):
    out = {}
    for task in load_user_tasks(tasks_dir):
        data = task.data
        if not data.spec.name.startswith('scene-'):
            continue
        caches = []
        for folder in (queries_dir, never_dir):
            with np.load(os.path.join(folder, 'cache', 'user', f'{data.spec.name}.npz'), allow_pickle=False) as c:
                caches.append((dict(zip(c['query_keys'].tolist(), c['query_embeddings'])),
                               dict(zip(c['document_keys'].tolist(), c['document_embeddings']))))
        rows = []
        for row in data.rows:
            k = input_key(row.query.model_input()); right = []
            for q, d in caches:
                s = [d[input_key(c.item.model_input())] @ q[k] for c in row.candidates]
                right.append(row.candidates[int(np.argmax(s))].cand_id in row.labels)
            rows.append((row.row_id, right))
        out[data.spec.name] = (task.ecr_task, rows)
    return out

dev_dir = os.path.join(run, 'data', 'scene-tasks', 'dev')
dev = hits(dev_dir, os.path.join(dev_eval, 'queries'), os.path.join(dev_eval, 'never'))
oracle_dev, _ = read_query_traces(os.path.join(dev_dir, 'oracle-traces'))
dev_tokens = {name: np.mean([len(tokenizer(oracle_dev[f'{name}/{rid}'], add_special_tokens=False)['input_ids'])
                             for rid, _ in rows]) for name, (_, rows) in dev.items()}
families = sorted({family for family, _ in dev.values()})
def score(table, thinking):
    return 100 * np.mean([np.mean([r[0] if family in thinking else r[1] for _, r in rows])
                          for family, rows in table.values()])
def token_share(thinking):
    return sum(dev_tokens[n] * len(rows) for n, (f, rows) in dev.items() if f in thinking) / sum(dev_tokens[n] * len(rows) for n, (f, rows) in dev.items())
report = {'dev_tasks': {n: {'family': f, 'think': 100 * np.mean([r[0] for _, r in rows]), 'never': 100 * np.mean([r[1] for _, r in rows]), 'oracle_tokens': dev_tokens[n]} for n, (f, rows) in dev.items()}}
subsets = [set(c) for k in range(len(families) + 1) for c in itertools.combinations(families, k)]
full = score(dev, set(families))
report['dev_subsets'] = [{'thinking': sorted(s), 'dev_score': score(dev, s), 'token_share': token_share(s)} for s in subsets]
eligible = [s for s in subsets if score(dev, s) >= full - 2.0]
chosen = min(eligible, key=lambda s: (token_share(s), -score(dev, s)))
report['chosen'] = sorted(chosen); report['dev_all_think'] = full
test_dir = os.path.join(run, 'data', 'scene-tasks', 'test')
test = hits(test_dir, os.path.join(run, 'eval', 'unified-think-queries'), os.path.join(run, 'eval', 'unified-think-never'))
report['test'] = {'policy': score(test, chosen), 'all_think': score(test, set(families)), 'never': score(test, set())}
print(json.dumps(report, indent=1), flush=True)

# latency, side by side
student = AutoModel.from_pretrained(variant_model(run, 'student'), trust_remote_code=True).eval()
unified = AutoModel.from_pretrained(variant_model(run, 'unified'), trust_remote_code=True).eval()
unified.config.think = 'queries'
oracle, _ = read_query_traces(os.path.join(test_dir, 'oracle-traces'))
plain, _ = latency_sample(test_dir, 16, oracle)
family = [unified.processor.parse_inputs([q])[0].task for q in plain]
policy_inputs = [{**q, 'think': f in chosen} for q, f in zip(plain, family)]
runs = {'student': (student, plain), 'unified, every query thinks': (unified, plain), 'unified, family policy': (unified, policy_inputs)}
seconds = {name: [] for name in runs}
tokens = {}
with torch.no_grad():
    for _ in range(2):
        for name, (model, inputs) in runs.items():
            times, traces = [], []
            for item in inputs:
                start = time.perf_counter()
                _, reasoning = model.encode_query([item], return_reasoning=True)
                times.append(time.perf_counter() - start); traces += reasoning
            seconds[name].append(times)
            tokens[name] = float(np.mean([len(tokenizer(t or '', add_special_tokens=False)['input_ids']) for t in traces]))
lat = {name: 1000 * float(np.median(seconds[name], axis=0).mean()) for name in runs}
report['latency_ms'] = lat; report['think_tokens'] = tokens
report['latency_ratio'] = {name: lat[name] / lat['student'] for name in runs}
report['latency_queries_thinking'] = sum(i['think'] for i in policy_inputs)
print(json.dumps({k: report[k] for k in ('latency_ms', 'think_tokens', 'latency_ratio', 'latency_queries_thinking')}, indent=1))
json.dump(report, open(os.path.join(dev_eval, 'family-policy.json'), 'w'), indent=1)
