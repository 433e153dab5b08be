"""Time a SmolLM2-sized decoder forward in fp32 and under bf16 autocast, side by side in one run.

`training.loop.fast_bf16` decides what `--mixed_precision auto` means from the hardware; this prints what the two
precisions cost on this machine, so the decision can be checked. Random weights with SmolLM2-135M's shape (30 layers,
hidden 576); the batch is a training chunk's (16 rows of 109 tokens by default). Usage:

    python benchmarks/bench_bf16.py [--device cpu|cuda] [--batch 16] [--tokens 109] [--repeats 3]
"""

import argparse
import time

import torch
from transformers import LlamaConfig, LlamaModel

from training.loop import fast_bf16


SMOLLM2_135M = dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                    num_key_value_heads=3, vocab_size=49152)  # fmt: skip


def seconds_per_forward(model, input_ids, device: str, autocast: bool, repeats: int) -> float:
    with torch.no_grad(), torch.autocast(device, dtype=torch.bfloat16, enabled=autocast):
        model(input_ids=input_ids)  # warm-up
        if device == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        for _ in range(repeats):
            model(input_ids=input_ids)
        if device == "cuda":
            torch.cuda.synchronize()
    return (time.perf_counter() - started) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=109)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = LlamaModel(LlamaConfig(**SMOLLM2_135M)).to(args.device).eval()
    input_ids = torch.randint(0, SMOLLM2_135M["vocab_size"], (args.batch, args.tokens), device=args.device)
    fp32 = seconds_per_forward(model, input_ids, args.device, False, args.repeats)
    bf16 = seconds_per_forward(model, input_ids, args.device, True, args.repeats)
    print(f"device {args.device}, batch {args.batch} x {args.tokens} tokens, {args.repeats} repeats")
    print(f"fp32 forward  {fp32 * 1000:9.1f} ms")
    print(f"bf16 autocast {bf16 * 1000:9.1f} ms")
    print(f"bf16 / fp32 time ratio {bf16 / fp32:.2f}; fast_bf16() = {fast_bf16()} "
          f"(--mixed_precision auto trains in {'bf16' if fast_bf16() else 'fp32'})")


if __name__ == "__main__":
    main()
