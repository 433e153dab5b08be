"""Where a trained TTE model's trace decoding spends its time at batch 1, and what the attention kernel and the
weights' precision change.

At batch 1 every generated token reads all the weights once, so decoding is mostly the linear layers' matrix-vector
products. This prints the share of CPU time (torch.profiler) in the linear layers, in attention and in the rest, and
one trace timed with eager and sdpa attention and with fp32 and bf16 weights, side by side in one run
(`suite.best_times`: the calls alternate, each keeps its best time). It bounds what a faster attention kernel could
save, and shows why the unified model's latency stays close to the student's: both
generate the same trace, and the unified model saves only the student embedder's second pass. Usage:

    python benchmarks/bench_decode_profile.py --model models/tte-mini --image scene.png \
        --text "what is above the red triangle?" [--instruction "Answer the question about the image."] [--threads 2]
"""

import argparse
import copy

import torch
from suite import best_times  # benchmarks/suite.py: alternating calls, each one's best time
from torch.profiler import ProfilerActivity, profile

from tte.modeling_tte import TTEModel


LINEAR_OPS = ("aten::mm", "aten::addmm", "aten::bmm")
ATTENTION_OPS = ("aten::_scaled_dot_product_flash_attention_for_cpu", "aten::_scaled_dot_product_attention_math",
                 "aten::_efficient_attention_forward", "aten::_flash_attention_forward", "aten::softmax")  # fmt: skip


def trace_call(model: TTEModel, item, attention: str, traces: dict, name: str):
    """A call that generates the query's trace with this attention implementation and keeps its ids in `traces`."""

    def call():
        model.set_attn_implementation(attention)
        traces[name] = model.generate_traces([item], where=["query"])[1][0]

    return call


def time_shares(model: TTEModel, item) -> dict[str, float]:
    """Shares of self CPU time of one trace's generation: linear layers, attention, the rest."""
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        model.generate_traces([item], where=["query"])
    totals = {event.key: event.self_cpu_time_total for event in profiler.key_averages()}
    whole = sum(totals.values())
    linear = sum(totals.get(name, 0) for name in LINEAR_OPS)
    attention = sum(totals.get(name, 0) for name in ATTENTION_OPS)
    return {"linear": linear / whole, "attention": attention / whole, "rest": (whole - linear - attention) / whole}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="A TTE model folder whose reasoner generates traces.")
    parser.add_argument("--image", required=True, help="The query's image.")
    parser.add_argument("--text", required=True, help="The query's text.")
    parser.add_argument("--instruction", default="Answer the question about the image.")
    parser.add_argument("--task", default="vqa", help="The query's task family (its ECR prompt).")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2, help="Timed rounds, implementations alternating.")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    model = TTEModel.from_pretrained(args.model).eval()
    item = model.processor.parse_input({"image": args.image, "text": args.text, "instruction": args.instruction,
                                        "task": args.task}, 0)  # fmt: skip
    bf16 = copy.deepcopy(model).to(torch.bfloat16)  # converted once, outside the timed calls
    traces = {}
    settings = {"eager, fp32": (model, "eager"), "sdpa, fp32": (model, "sdpa"), "sdpa, bf16": (bf16, "sdpa")}
    calls = {name: trace_call(weights, item, attention, traces, name)
             for name, (weights, attention) in settings.items()}  # fmt: skip
    with torch.no_grad():
        seconds = best_times(calls, args.rounds, sync=lambda: None)
        shares = time_shares(model, item)  # sdpa, fp32: the last setting `model` ran with
    reference = traces["sdpa, fp32"]
    print(f"{args.model}: one trace of {len(reference)} tokens at batch 1, {args.threads} CPU threads")
    for name, best in seconds.items():
        same = "the same trace" if traces[name] == reference else "a DIFFERENT trace from fp32's"
        print(f"  {name}: {1000 * best:.0f} ms ({1000 * best / len(traces[name]):.1f} ms per token, best of "
              f"{args.rounds}; {same})")  # fmt: skip
    fastest = seconds["sdpa, fp32"]
    print(f"  eager / sdpa (fp32): {seconds['eager, fp32'] / fastest:.2f}x; "
          f"bf16 / fp32 (sdpa): {seconds['sdpa, bf16'] / fastest:.2f}x")  # fmt: skip
    print("  self CPU time (sdpa, fp32): " + ", ".join(f"{name} {100 * share:.0f} %" for name, share in shares.items()))


if __name__ == "__main__":
    main()
