"""Batch compaction: generating traces with `decoding_tte.decode_greedily` (rows leave the batch once their trace
ended) / transformers' `generate` (every row decodes until the batch's longest trace ends), side by side in one run
on the same reasoning prompts, with the same greedy tokens (checked).

The gain depends on how unequal the trace lengths of a batch are, so the queries come from a tte-eval tasks folder
(real inputs of a model's own tasks) and the printout gives the lengths. Every repeat times both ways once,
alternating; each keeps its best time.

    python benchmarks/bench_compaction.py --model models/tte-mini --tasks-dir <tasks>/test [--queries 64]
"""

import argparse
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_policies import task_queries  # noqa: E402


def main(argv=None) -> dict:
    from transformers import AutoModel

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="models/tte-mini", help="A unified or student TTE model folder.")
    parser.add_argument("--tasks-dir", required=True, help="A tte-eval user tasks folder; its queries are timed.")
    parser.add_argument("--queries", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, help="The trace bound (default: the model's).")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--output", help="Also write the result as JSON here.")
    args = parser.parse_args(argv)
    model = AutoModel.from_pretrained(args.model, trust_remote_code=True).eval()
    decoding = sys.modules[type(model).__module__.rsplit(".", 1)[0] + ".decoding_tte"]  # the folder's own code
    items = model.processor.parse_inputs(task_queries(args.tasks_dir, args.queries))
    batches = [items[start : start + args.batch_size] for start in range(0, len(items), args.batch_size)]
    config = model.generator_generation_config(args.max_new_tokens)

    def prompt(batch):
        return model._generation_inputs(model.processor.build_reasoning_inputs(batch, with_prefix_lengths=True))

    def traces_of(decode) -> list[list[int]]:
        return [trace for batch in batches for trace in decode(model.generator(), prompt(batch), config).trace_ids]

    def compacting() -> list[list[int]]:
        return traces_of(decoding.decode_greedily)

    def generate() -> list[list[int]]:
        return traces_of(decoding.decode_with_generate)

    best = {"compacting": float("inf"), "generate": float("inf")}
    results = {}
    with torch.no_grad():
        for round_index in range(1 + args.repeats):  # round 0 warms up and is not timed
            for name, run in (("compacting", compacting), ("generate", generate)):
                started = time.perf_counter()
                results[name] = run()
                if round_index:
                    best[name] = min(best[name], time.perf_counter() - started)
    lengths = [len(trace) for trace in results["generate"]]
    row = {"queries": len(items), "batch_size": args.batch_size, "max_new_tokens": config.max_new_tokens,
           "compacting_seconds": best["compacting"], "generate_seconds": best["generate"],
           "ratio": best["compacting"] / best["generate"], "same_tokens": results["compacting"] == results["generate"],
           "trace_tokens_mean": statistics.mean(lengths), "trace_tokens_max": max(lengths),
           "cut_at_bound": sum(length == config.max_new_tokens for length in lengths)}  # fmt: skip
    print(f"{len(items)} queries, batch {args.batch_size}, bound {config.max_new_tokens} tokens, "
          f"{torch.get_num_threads()} CPU threads, {args.model}")  # fmt: skip
    print(f"trace tokens: mean {row['trace_tokens_mean']:.1f}, max {row['trace_tokens_max']}, "
          f"{row['cut_at_bound']} cut at the bound; same tokens both ways: {row['same_tokens']}")  # fmt: skip
    print(f"compacting decode {best['compacting']:.2f} s / generate {best['generate']:.2f} s = {row['ratio']:.3f}")
    if args.output:
        with open(args.output, "w") as file:
            json.dump(row, file, indent=2)
    return row


if __name__ == "__main__":
    main()
