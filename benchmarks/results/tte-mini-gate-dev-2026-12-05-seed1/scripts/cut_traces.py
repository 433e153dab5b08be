"""Experiment: trace stores of the test traces cut shorter. Usage: python cut_traces.py MODEL OUT_DIR K1 K2 ..."""
import json, os, sys
from transformers import AutoProcessor
from training.traces import TraceStore, make_manifest

model_dir, out, *ks = sys.argv[1:]
from transformers import AutoModel
processor = AutoModel.from_pretrained(model_dir, trust_remote_code=True).processor
data = json.load(open(os.path.join(out, "traces.json")))
def write(name, texts):
    folder = os.path.join(out, name)
    if os.path.exists(folder):
        return
    store = TraceStore.create(folder, make_manifest(f"unified-backbone-{name}", "ecr-v1", {"greedy": True}))
    store.append([(k, "query", t) for k, t in zip(data["keys"], texts)])
for k in map(int, ks):
    write(f"cut{k}", [processor.decode_trace(ids[:k]) for ids in data["ids"]])
write("think-only", [t.split("</think>")[0] + "</think>" if "</think>" in t else t for t in data["texts"]])
print([processor.decode_trace(ids[:20]) for ids in data["ids"][:3]])
