"""Experiment: per-query latency of the published TTE-mini (think=queries, and think=tasks with the families chosen on
the development split) against the student's cost, side by side in one run (training.compare_variants.measure_costs:
batch 1, variants alternating each round, each query's median over the rounds, averaged over the comparison's 16
latency queries).

The trained student's embedder is not published (only the unified model's parts are assets), and the run folder that
held it was lost. Its cost is measured with a stand-in: a student-variant TTEModel whose reasoner is the published
backbone (the SFT'd reasoner, which the trained student used too, so the same greedy traces) and whose embedder is
that backbone without its LM head (the trained student's embedder has the same architecture, the same backbone with
its top 4 layers trained; weights do not change a dense model's compute). Its embeddings are not the student's; only
its time is used.

Usage: python latency.py MODEL TEST_TASKS THINK_TASKS_MODEL OUTPUT_JSON [ROUNDS]"""
import copy, json, os, sys
sys.path.insert(0, '/work/main')
import torch
from transformers import AutoModel
from training.compare_variants import latency_sample, measure_costs
from tte_eval.runner import read_query_traces
from tte.modeling_tte import TTEModel

model_dir, tasks_dir, policy_dir, output = sys.argv[1:5]
rounds = int(sys.argv[5]) if len(sys.argv) > 5 else 2
unified = AutoModel.from_pretrained(model_dir, trust_remote_code=True).eval()
unified.config.think = 'queries'
policy = AutoModel.from_pretrained(policy_dir, trust_remote_code=True).eval()
assert policy.config.think == 'tasks', policy.config.think
loaded = TTEModel.from_pretrained(model_dir).eval()
student = TTEModel.from_backbone(loaded.backbone, loaded.processor, 'student', reasoner=loaded.backbone,
                                 max_new_tokens=loaded.config.max_new_tokens).eval()
student.config.think = 'queries'
oracle, _ = read_query_traces(os.path.join(tasks_dir, 'oracle-traces'))
plain, with_trace = latency_sample(tasks_dir, 16, oracle)
models = {'student (cost stand-in)': student, 'unified, think=queries': unified, 'unified, think=tasks': policy}
print(f"{torch.get_num_threads()} threads, {len(plain)} queries, {rounds} rounds; think_tasks={policy.config.think_tasks}")
with torch.no_grad():
    costs = measure_costs(models, plain, with_trace, rounds)
base = costs['student (cost stand-in)']['latency_ms_per_query']
for name, cost in costs.items():
    cost['vs_student'] = cost['latency_ms_per_query'] / base
    print(f"| {name} | {cost['latency_ms_per_query']:.0f} | {cost['vs_student']:.2f}x | {cost['think_tokens_per_query']:.1f} | {cost['parameters'] / 1e6:.1f} |")
json.dump({'queries': len(plain), 'rounds': rounds, 'threads': torch.get_num_threads(),
           'think_tasks': policy.config.think_tasks, 'costs': costs}, open(output, 'w'), indent=1)
