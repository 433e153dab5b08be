"""Where the unified model's single pass pays: its latency against the student's as the input grows, side by side in
one run.

The student generates a trace with its reasoner and then runs its embedder over prompt + trace; the unified model
generates the same trace with the same backbone (TTE-mini: the SFT'd reasoner is both) and embeds it from the states
generation computed, through its head. So what the unified model saves is the embedder's pass over the input, and
that grows with the input while the trace does not. TTE-mini's scene queries are short (a 64x64 image is 4 visual
tokens), so on the test tasks both costs are mostly generation. This script lengthens test queries with a neutral
passage of N extra tokens and times both variants at batch 1 (`training.compare_variants.measure_costs`: variants
alternating each round, each query's median over the rounds, averaged over the queries).

    python benchmarks/bench_unified_vs_student.py --run_dir RUN [--extra_tokens 0 256 1024] [--output rows.json]
    python benchmarks/bench_unified_vs_student.py --model models/tte-mini --tasks_dir TEST_TASKS [...]

RUN is a `training.recipes.tte_mini --variants` run folder (its student and unified models and test tasks). Without
one, `--model` is a published unified model (TTE-mini's assets hold no student) and the student is a **cost
stand-in** (`student_cost_stand_in`): its reasoner is the unified model's backbone, which TTE-mini's student reasoner
is too (the same traces), and its embedder that backbone without its LM head, the architecture of the trained
student's embedder (a dense model's compute does not depend on its weights). Its time is the student's; its
embeddings are not, and the script reports only times. `--tasks_dir`: test tasks with `oracle-traces/`
(`training.scene_tasks`, e.g. `write_test_tasks(folder, 50, seed + 1, 20)` for the split of seed `seed`).
"""

import argparse
import json
import os
import sys

import torch


sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from training.compare_variants import latency_sample, measure_costs, variant_model  # noqa: E402
from tte.modeling_tte import TTEModel  # noqa: E402
from tte_eval.runner import read_query_traces  # noqa: E402


PASSAGE = ("Note: the picture comes from a set of rendered scenes; each scene places up to four shapes on a two by "
           "two grid, and each shape has one of eight colours. ")  # fmt: skip


def lengthened(queries: list[dict], tokenizer, extra_tokens: int) -> list[dict]:
    """Each query with `extra_tokens` tokens of `PASSAGE` (repeated, cut at a token) after its text."""
    if extra_tokens == 0:
        return queries
    ids = tokenizer(PASSAGE, add_special_tokens=False)["input_ids"]
    passage = tokenizer.decode((ids * (extra_tokens // len(ids) + 1))[:extra_tokens])
    return [{**query, "text": f"{query.get('text', '')}\n{passage}".strip()} for query in queries]


def prompt_tokens(model, queries: list[dict]) -> float:
    """Mean tokens of the reasoning prompts (what generation's prefill reads)."""
    prompts = model.processor.build_reasoning_inputs(model.processor.parse_inputs(queries))
    return float(prompts["attention_mask"].sum(dim=1).float().mean())


def student_cost_stand_in(unified: TTEModel) -> TTEModel:
    """A student whose reasoner is `unified`'s backbone and whose embedder is that backbone without its LM head: the
    cost of a student trained from it (see the module docstring), not its embeddings."""
    if unified.config.variant != "unified":
        raise ValueError(f"--model must be a unified model, got variant={unified.config.variant!r}")
    student = TTEModel.from_backbone(unified.backbone, unified.processor, "student", reasoner=unified.backbone,
                                     max_new_tokens=unified.config.max_new_tokens)  # fmt: skip
    student.config.think = "queries"
    return student.eval()


def load_models(args) -> tuple[dict[str, TTEModel], str]:
    """The student and the unified model (thinking about every query, as the student does), and the test tasks."""
    from transformers import AutoModel

    if args.run_dir is not None:
        models = {name: AutoModel.from_pretrained(variant_model(args.run_dir, name), trust_remote_code=True).eval()
                  for name in ("student", "unified")}  # fmt: skip
        tasks_dir = os.path.join(args.run_dir, "data", "scene-tasks", "test")
    else:
        unified = AutoModel.from_pretrained(args.model, trust_remote_code=True).eval()
        models = {"student": student_cost_stand_in(TTEModel.from_pretrained(args.model)), "unified": unified}
        tasks_dir = args.tasks_dir
    models["unified"].config.think = "queries"  # a gated model too: every query thinks, as the student's does
    return models, tasks_dir


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run_dir", help="A part-2 run folder (its trained student); or --model and --tasks_dir.")
    parser.add_argument("--model", help="A published unified model, against a student cost stand-in.")
    parser.add_argument("--tasks_dir", help="With --model: the test tasks (with oracle-traces/).")
    parser.add_argument("--extra_tokens", type=int, nargs="+", default=[0, 256, 1024])
    parser.add_argument("--queries", type=int, default=8, help="Test queries, spread over the tasks.")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--output", help="Also write the rows as JSON here.")
    args = parser.parse_args(argv)
    if (args.run_dir is None) == (args.model is None) or (args.model is None) != (args.tasks_dir is None):
        parser.error("give --run_dir, or --model with --tasks_dir")
    models, tasks_dir = load_models(args)
    student_kind = "trained" if args.run_dir is not None else "cost stand-in"
    oracle, _ = read_query_traces(os.path.join(tasks_dir, "oracle-traces"))
    queries, _ = latency_sample(tasks_dir, args.queries, oracle)  # spread over the tasks, as the comparison picks them
    rows = []
    print(f"{torch.get_num_threads()} CPU threads, batch 1, {len(queries)} test queries, {args.rounds} rounds; the "
          f"student: {student_kind}")
    print("| extra input tokens | prompt tokens | think tokens | student (ms) | unified (ms) | unified / student |")
    print("|---|---|---|---|---|---|")
    for extra in args.extra_tokens:
        inputs = lengthened(queries, models["unified"].processor.tokenizer, extra)
        with torch.no_grad():
            costs = measure_costs(models, inputs, inputs, args.rounds)
        student, unified = (costs[name]["latency_ms_per_query"] for name in ("student", "unified"))
        row = {"extra_tokens": extra, "prompt_tokens": prompt_tokens(models["unified"], inputs),
               "think_tokens": {name: costs[name]["think_tokens_per_query"] for name in costs},
               "student": student_kind, "student_ms": student, "unified_ms": unified,
               "ratio": unified / student}  # fmt: skip
        rows.append(row)
        print(f"| {extra} | {row['prompt_tokens']:.0f} | {row['think_tokens']['unified']:.1f} "
              f"(student {row['think_tokens']['student']:.1f}) | {student:.0f} | {unified:.0f} | {row['ratio']:.2f} |",
              flush=True)  # fmt: skip
    if args.output:
        with open(args.output, "w") as handle:
            json.dump(rows, handle, indent=2)
    return rows


if __name__ == "__main__":
    main()
