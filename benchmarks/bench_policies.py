"""Latency of the thinking policies of one model, side by side in one run: never, queries (every query thinks) and
the adaptive policies the model has: auto (its gate decides) and tasks (the queries of its `think_tasks` families
think), on queries of a tte-eval tasks folder.

Every repeat times each policy once, alternating, and each policy keeps its best time, so machine noise hits all
alike. The think rate and generated tokens come from `embed(return_stats=True)`.

    python benchmarks/bench_policies.py --model runs/gate/model --tasks-dir data/scene-tasks/test [--queries 64]
"""

import argparse
import json
import time

import torch


def task_queries(tasks_dir: str, count: int) -> list[dict]:
    """`count` query inputs, taken round-robin over the folder's tasks (their first rows)."""
    from tte_eval.user_tasks import load_user_tasks

    per_task = [[row.query.model_input() for row in task.data.rows] for task in load_user_tasks(tasks_dir)]
    queries = []
    for position in range(max(map(len, per_task))):
        queries += [rows[position] for rows in per_task if position < len(rows)]
    return queries[:count]


def main(argv=None) -> dict:
    from transformers import AutoModel

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="A TTE model folder with a think='auto' gate or think_tasks.")
    parser.add_argument("--tasks-dir", required=True, help="A tte-eval user tasks folder; its queries are timed.")
    parser.add_argument("--queries", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--output", help="Also write the rows as JSON here.")
    args = parser.parse_args(argv)
    model = AutoModel.from_pretrained(args.model, trust_remote_code=True).eval()
    settings = (("auto", model.config.gate_threshold), ("tasks", getattr(model.config, "think_tasks", None)))
    adaptive = [policy for policy, setting in settings if setting is not None]  # (code older than think_tasks: none)
    if not adaptive:
        parser.error(f"--model {args.model!r} has neither a gate nor think_tasks; fit a gate with training.train_gate "
                     "or choose the families with training.think_tasks")
    queries = task_queries(args.tasks_dir, args.queries)
    policies = ("never", "queries", *adaptive)
    best, stats = dict.fromkeys(policies, float("inf")), {}
    with torch.no_grad():
        for round_index in range(1 + args.repeats):  # round 0 warms up and is not timed
            for policy in policies:
                started = time.perf_counter()
                _, stats[policy] = model.embed(queries, side="query", think=policy, batch_size=args.batch_size,
                                               return_stats=True)  # fmt: skip
                if round_index:
                    best[policy] = min(best[policy], time.perf_counter() - started)
    rows = {policy: {"seconds_per_query": best[policy] / len(queries), "ratio_to_never": best[policy] / best["never"],
                     "think_rate": stats[policy].think_rate,
                     "generated_tokens_per_query": stats[policy].generated_tokens / len(queries)}
            for policy in policies}  # fmt: skip
    print(f"{len(queries)} queries, batch {args.batch_size}, {torch.get_num_threads()} CPU threads, {args.model}")
    print("| policy | seconds per query | / never | think rate | generated tokens per query |\n|---|---|---|---|---|")
    for policy, row in rows.items():
        print(f"| {policy} | {row['seconds_per_query']:.3f} | {row['ratio_to_never']:.2f} | "
              f"{100 * row['think_rate']:.0f}% | {row['generated_tokens_per_query']:.1f} |")  # fmt: skip
    if args.output:
        with open(args.output, "w") as handle:
            json.dump({"settings": vars(args), "rows": rows}, handle, indent=2)
    return rows


if __name__ == "__main__":
    main()
