"""One table of thinking policies from `tte-eval evaluate --think POLICY` results files of one model.

Per policy: the mean score of the user tasks, the share of queries that thought, trace tokens per query (of the
traces the queries were embedded with, generated or from the trace cache; documents that think add theirs), and
seconds per query (generation + embedding, from the run's `cost`: each policy's run is timed on its own, and a run
that read traces from the cache did not pay for them; `benchmarks/bench_policies.py` times policies side by side).

    python -m training.compare_policies --results never=runs/eval-never/results.json \
        always=runs/eval-always/results.json auto=runs/eval-auto/results.json --output runs/policies
"""

import argparse
import json
import os

from training.checkpoint import write_atomic


def with_trace_tokens(stats: dict) -> dict:
    """Stats of an older tte-eval, before `trace_tokens`: where nothing came from the cache or the caller, the
    traces embedded are the ones generated; else the count is unknown (None)."""
    if "trace_tokens" in stats:
        return stats
    known = stats.get("cache_hits", 0) == 0 and stats.get("given", 0) == 0
    return {**stats, "trace_tokens": stats.get("generated_tokens", 0) if known else None}


def policy_row(results: dict, where: str) -> dict:
    """The table's numbers of one results file (of user tasks). A file written before tte-eval recorded the cost
    (`cost`) gives its accuracy only."""
    if results.get("user_tasks") is None:
        raise ValueError(f"{where}: not a tte-eval results file with user tasks (--tasks-dir)")
    row = {"think": results["metadata"]["model_settings"]["think"], "accuracy": 100 * results["user_tasks"]["mean"],
           "tasks": {name: 100 * task["score"] for name, task in results["user_tasks"]["tasks"].items()}}
    if "cost" not in results:
        return {**row, "think_rate": None, "trace_tokens_per_query": None, "seconds_per_query": None}
    queries = results["cost"]["query"]
    documents = results["cost"].get("document", {"trace_tokens": 0})
    queries, documents = with_trace_tokens(queries), with_trace_tokens(documents)
    return {
        **row,
        "think_rate": queries["think_rate"],
        "trace_tokens_per_query": per_query(queries["trace_tokens"], queries["inputs"]),
        "document_trace_tokens_per_query": per_query(documents["trace_tokens"], queries["inputs"]),
        "seconds_per_query": (queries["generation_seconds"] + queries["embedding_seconds"]) / queries["inputs"],
        "queries": queries["inputs"],
    }


def per_query(total, queries: int):
    return None if total is None else total / queries


def tokens_cell(row: dict) -> str:
    queries, documents = row["trace_tokens_per_query"], row["document_trace_tokens_per_query"]
    if queries is None or documents is None:
        return "not recorded (cached traces)"
    return f"{queries:.1f}" + (f" (+ {documents:.1f})" if documents else "")


def policies_markdown(rows: dict[str, dict]) -> str:
    lines = ["| policy | accuracy | think rate | trace tokens per query (+ documents') | seconds per query in its run |",
             "|---|---|---|---|---|"]  # fmt: skip
    for name, row in rows.items():
        if row["think_rate"] is None:
            lines.append(f"| {name} | {row['accuracy']:.1f} | not recorded | not recorded | not recorded |")
            continue
        lines.append(f"| {name} | {row['accuracy']:.1f} | {100 * row['think_rate']:.0f}% | {tokens_cell(row)} | "
                     f"{row['seconds_per_query']:.3f} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", nargs="+", required=True, help="NAME=results.json, one per policy run.")
    parser.add_argument("--output", required=True, help="Folder for policies.md and policies.json.")
    args = parser.parse_args(argv)
    rows = {}
    for entry in args.results:
        name, separator, path = entry.partition("=")
        if not separator or not name:
            raise SystemExit(f"--results {entry!r}: expected NAME=path/to/results.json")
        with open(path) as handle:
            rows[name] = {**policy_row(json.load(handle), path), "results": path}
    os.makedirs(args.output, exist_ok=True)
    write_atomic(os.path.join(args.output, "policies.json"), json.dumps(rows, indent=2))
    markdown = policies_markdown(rows)
    write_atomic(os.path.join(args.output, "policies.md"), markdown)
    print(markdown, end="")
    return rows


if __name__ == "__main__":
    main()
