"""Where a trained TTE model's trace decoding spends its time at batch 1, and what the attention kernel and the
weights' precision change.

At batch 1 every generated token reads all the weights once, so decoding is mostly the linear layers' matrix-vector
products. This prints the share of CPU time (torch.profiler) in the linear layers, in attention and in the rest, and
one trace timed with eager and sdpa attention and with fp32 and bf16 weights, side by side in one run. It bounds what
a faster attention kernel could save, and shows why the unified model's latency stays close to the student's: both
generate the same trace, and the unified model saves only the student embedder's second pass. Usage:

    python benchmarks/bench_decode_profile.py --model models/tte-mini --image scene.png \
        --text "what is above the red triangle?" [--instruction "Answer the question about the image."] [--threads 2]
"""

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

from tte.modeling_tte import TTEModel


LINEAR_OPS = ("aten::mm", "aten::addmm", "aten::bmm")
ATTENTION_OPS = ("aten::_scaled_dot_product_flash_attention_for_cpu", "aten::_scaled_dot_product_attention_math",
                 "aten::_efficient_attention_forward", "aten::_flash_attention_forward", "aten::softmax")  # fmt: skip


SETTINGS = {"eager, fp32": ("eager", torch.float32), "sdpa, fp32": ("sdpa", torch.float32),
            "sdpa, bf16": ("sdpa", torch.bfloat16)}  # fmt: skip


def use(model: TTEModel, setting: str) -> None:
    implementation, dtype = SETTINGS[setting]
    model.set_attn_implementation(implementation)
    model.to(dtype)


def trace_seconds(model: TTEModel, item, setting: str) -> tuple[float, list[int]]:
    """Seconds to generate the query's trace with this setting's attention and weights, and the trace's ids."""
    use(model, setting)
    started = time.perf_counter()
    _, trace_ids, _ = model.generate_traces([item], where=["query"])
    return time.perf_counter() - started, trace_ids[0]


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
    with torch.no_grad():
        _, reference = trace_seconds(model, item, "sdpa, fp32")  # warm-up
        seconds, traces = {setting: [] for setting in SETTINGS}, {}
        for _ in range(args.rounds):
            for setting in SETTINGS:
                elapsed, traces[setting] = trace_seconds(model, item, setting)
                seconds[setting].append(elapsed)
        use(model, "sdpa, fp32")
        shares = time_shares(model, item)
    print(f"{args.model}: one trace of {len(reference)} tokens at batch 1, {args.threads} CPU threads")
    for setting, values in seconds.items():
        best = min(values)
        same = "the same trace" if traces[setting] == reference else "a DIFFERENT trace from fp32's"
        print(f"  {setting}: {1000 * best:.0f} ms ({1000 * best / len(traces[setting]):.1f} ms per token, best of "
              f"{len(values)}; {same})")  # fmt: skip
    fastest = min(seconds["sdpa, fp32"])
    print(f"  eager / sdpa (fp32): {min(seconds['eager, fp32']) / fastest:.2f}x; "
          f"bf16 / fp32 (sdpa): {min(seconds['sdpa, bf16']) / fastest:.2f}x")  # fmt: skip
    print("  self CPU time (sdpa, fp32): " + ", ".join(f"{name} {100 * share:.0f} %" for name, share in shares.items()))


if __name__ == "__main__":
    main()
