"""GPU checks (run on a lent CUDA machine): tiny random-weight TTE models on CUDA in fp32 and bf16.

Checks, per backbone family: CUDA fp32 embeddings match CPU (same traces); the unified single pass matches the
recomputation on CUDA; bf16 embeddings stay close to fp32 for the same traces. Prints one line per check and exits
non-zero if any fails. Usage: python benchmarks/device_check.py
"""

import os
import sys

import numpy as np
import torch


sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from training.tiny_models import build_tte, make_image  # noqa: E402


def inputs_for(name: str) -> list:
    texts = ["a red square", {"text": "what is on the table ?", "instruction": "find the image"}]
    return texts if name == "llama" else texts + [make_image(1), {"text": "a cat", "image": make_image(2)}]


def check(label: str, value: float, bound: float, failures: list, above: bool = False) -> None:
    ok = value >= bound if above else value <= bound
    print(f"{'PASS' if ok else 'FAIL'} {label}: {value:.3g} ({'>=' if above else '<='} {bound})")
    if not ok:
        failures.append(label)


def main() -> None:
    torch.backends.cuda.matmul.allow_tf32 = False  # compare fp32 with fp32, not TF32
    torch.backends.cudnn.allow_tf32 = False
    print(torch.__version__, torch.cuda.get_device_name(0))
    failures = []
    for name in ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "llama"):
        model = build_tte(name, "unified")
        inputs = inputs_for(name)
        cpu, traces = model.embed(inputs, return_reasoning=True)
        model = model.to("cuda")
        gpu_single, gpu_traces = model.embed(inputs, return_reasoning=True)
        gpu_recomputed = model.embed(inputs, reasoning=gpu_traces)
        check(f"{name} cuda single pass vs recompute", np.abs(gpu_single - gpu_recomputed).max(), 1e-4, failures)
        check(f"{name} cuda vs cpu (same traces)", np.abs(model.embed(inputs, reasoning=traces) - cpu).max(), 1e-4,
              failures)  # fmt: skip
        model = model.to(torch.bfloat16)
        bf16 = model.embed(inputs, reasoning=traces)
        check(f"{name} bf16 vs fp32 min cosine", float((bf16 * cpu).sum(1).min()), 0.99, failures, above=True)
        student = build_tte(name, "student").to("cuda", torch.bfloat16)
        embeddings = student.embed(inputs)
        check(f"{name} student bf16 norm error", float(np.abs(np.linalg.norm(embeddings, axis=1) - 1).max()), 1e-3,
              failures)  # fmt: skip
    print("FAILED: " + ", ".join(failures) if failures else "ALL PASSED")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
