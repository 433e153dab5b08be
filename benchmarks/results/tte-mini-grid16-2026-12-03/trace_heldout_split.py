"""Throw-away: per-object colour / shape accuracy of a model's own traces of held-out test queries (the first 20
image queries of each scene task, as `training.trace_quality` reads them), split by whether the true object is a
held-out colour-shape combination; also the most common misreadings of held-out objects."""
import collections, json, os, sys
from training.scene_tasks import HELD_OUT
from training.trace_quality import image_queries, model_traces, read_cells
from tte.modeling_tte import TTEModel
from tte_eval.runner import read_query_traces
model_dir, test_dir = sys.argv[1], sys.argv[2]
oracle, _ = read_query_traces(os.path.join(test_dir, "oracle-traces"))
queries = {k: q for k, q in image_queries(test_dir, 20).items() if read_cells(oracle.get(k, ""))}
traces = model_traces(TTEModel.from_pretrained(model_dir).eval(), queries, 16)
counts = {True: [0, 0, 0, 0], False: [0, 0, 0, 0]}  # objects, read as present, colour right, shape right
misread = collections.Counter()
for key, trace in traces.items():
    truth, read = read_cells(oracle[key]), read_cells(trace)
    for cell, (colour, shape) in truth.items():
        held = (colour, shape) in HELD_OUT
        c = counts[held]
        c[0] += 1
        if cell in read:
            c[1] += 1; c[2] += read[cell][0] == colour; c[3] += read[cell][1] == shape
            if held and read[cell] != (colour, shape):
                misread[f"{colour} {shape} -> {' '.join(read[cell])}"] += 1
out = {("held_out" if h else "seen"): {"objects": n, "present": 100 * r / n, "colour": 100 * col / max(r, 1),
       "shape": 100 * sh / max(r, 1)} for h, (n, r, col, sh) in counts.items()}
out["held_out_misreadings"] = dict(misread.most_common(12))
out["read_as_a_held_out_combination"] = sum(tuple(v) in HELD_OUT for t in traces.values() for v in read_cells(t).values())
print(json.dumps(out, indent=1))
