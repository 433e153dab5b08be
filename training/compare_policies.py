"""One table of thinking policies from `tte-eval evaluate --think POLICY` results files of one model.

Per policy: the mean score of the user tasks, the share of queries that thought, tokens generated per query, and
seconds per query (generation + embedding, from the run's `cost`, so each policy's run measured on its own).

    python -m training.compare_policies --results never=runs/eval-never/results.json \
        always=runs/eval-always/results.json auto=runs/eval-auto/results.json --output runs/policies
"""

import argparse
import json
import os

from training.checkpoint import write_atomic


def policy_row(results: dict) -> dict:
    """The table's numbers of one results file (it must hold user tasks and a `cost` section)."""
    if results.get("user_tasks") is None or "cost" not in results:
        raise ValueError("a results file of tte-eval evaluate with user tasks (--tasks-dir) and its cost is needed")
    queries = results["cost"]["query"]
    documents = results["cost"].get("document", {"generated_tokens": 0, "inputs": 0})
    return {
        "think": results["metadata"]["think"],
        "accuracy": 100 * results["user_tasks"]["mean"],
        "think_rate": queries["think_rate"],
        "generated_tokens_per_query": queries["generated_tokens"] / queries["inputs"],
        "document_generated_tokens": documents["generated_tokens"],
        "seconds_per_query": (queries["generation_seconds"] + queries["embedding_seconds"]) / queries["inputs"],
        "queries": queries["inputs"],
        "tasks": {name: 100 * task["score"] for name, task in results["user_tasks"]["tasks"].items()},
    }


def policies_markdown(rows: dict[str, dict]) -> str:
    lines = ["| policy | accuracy | think rate | generated tokens per query | query latency (s) |",
             "|---|---|---|---|---|"]  # fmt: skip
    for name, row in rows.items():
        lines.append(f"| {name} | {row['accuracy']:.1f} | {100 * row['think_rate']:.0f}% | "
                     f"{row['generated_tokens_per_query']:.1f} | {row['seconds_per_query']:.3f} |")  # fmt: skip
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
            rows[name] = {**policy_row(json.load(handle)), "results": path}
    os.makedirs(args.output, exist_ok=True)
    write_atomic(os.path.join(args.output, "policies.json"), json.dumps(rows, indent=2))
    markdown = policies_markdown(rows)
    write_atomic(os.path.join(args.output, "policies.md"), markdown)
    print(markdown, end="")
    return rows


if __name__ == "__main__":
    main()
