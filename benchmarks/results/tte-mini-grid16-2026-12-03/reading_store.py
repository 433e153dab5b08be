import sys
from training.traces import TraceStore
from training.trace_quality import reading_scores, read_cells
oracle = {k: t for (k, s), t in TraceStore(sys.argv[1]).read().items()}
model = {k: t for (k, s), t in TraceStore(sys.argv[2]).read().items()}
keys = [k for k in model if k in oracle and read_cells(oracle[k])]
print(reading_scores({k: model[k] for k in keys}, oracle))
