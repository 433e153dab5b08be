"""Experiment: trace stores holding only the final answer line of the model's own test traces (test_traces.py of
../../tte-mini-gate-dev-2026-12-05-seed1/scripts wrote them), to measure how much of the embedding the answer line
carries alone. Usage: python answer_traces.py OUT_DIR"""
import json, os, sys
sys.path.insert(0, '/work/main')
from training.traces import TraceStore, make_manifest

out = sys.argv[1]
data = json.load(open(os.path.join(out, 'traces.json')))
answers = [t.split('</think>', 1)[1].strip() if '</think>' in t else '' for t in data['texts']]
print('without </think>:', sum('</think>' not in t for t in data['texts']), 'of', len(answers))
for name, texts in {'answer-only': answers, 'empty-think-answer': [f'<think></think> {a}' for a in answers]}.items():
    folder = os.path.join(out, name)
    if not os.path.exists(folder):
        store = TraceStore.create(folder, make_manifest(f'unified-backbone-{name}', 'ecr-v1', {'greedy': True}))
        store.append([(k, 'query', t) for k, t in zip(data['keys'], texts)])
