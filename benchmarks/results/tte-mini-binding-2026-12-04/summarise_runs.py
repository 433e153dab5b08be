"""Throw-away: each variant's results file in one or more run folders, summarised as `training.compare_variants`
summarises them (overall = mean over the 7 scene tasks; families; relational/count; the easy-VQA control).

    PYTHONPATH=. python summarise_runs.py out.json label=<run folder> [label=<run folder> ...]
"""

import json
import os
import sys

from training.compare_variants import summarise, task_scores

output, runs = sys.argv[1], dict(argument.split("=", 1) for argument in sys.argv[2:])
table = {}
for label, run in runs.items():
    for name in sorted(os.listdir(os.path.join(run, "eval"))):
        path = os.path.join(run, "eval", name, "results.json")
        if os.path.isfile(path):
            scores, settings = task_scores(path)
            table[f"{label}/{name}"] = {"summary": {key: round(value, 1) for key, value in summarise(scores).items()},
                                        "tasks": {task: round(score, 1) for task, score in scores.items()},
                                        "model_hash": settings["model_hash"]}
with open(output, "w") as handle:
    json.dump(table, handle, indent=1)
for key, entry in table.items():
    print(f"{key:34s}", entry["summary"])
