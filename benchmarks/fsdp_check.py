"""FSDP check (needs a CUDA GPU: accelerate runs FSDP only on GPU-like devices, never on the CPU).

Trains the embedder (TTE_t) and the unified head (TTE_u stage 2) of tiny random-weight models on the synthetic
colour/thing task, once as a plain single process and once under FSDP2 (`benchmarks/fsdp.yaml`), then compares
loss curves and exported weights, reloads the FSDP exports, and resumes an FSDP run from its last checkpoint (zero
steps left) to check that the restored state exports the same weights. Prints PASS / FAIL lines; exits non-zero on
a failure. Usage: python benchmarks/fsdp_check.py WORK_DIR
"""

import json
import os
import shutil
import subprocess
import sys

import torch
from safetensors.torch import load_file


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from training.tiny_models import build_tte  # noqa: E402
from training.synthetic_pairs import write_pair_data, write_trace_store  # noqa: E402


def run(arguments: list[str], fsdp: bool, work: str) -> None:
    launcher = ["accelerate", "launch", "--config_file", os.path.join(REPO, "benchmarks", "fsdp.yaml")] if fsdp \
        else [sys.executable]  # fmt: skip
    command = launcher + ["-m", *arguments]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    with open(os.path.join(work, "log.txt"), "a") as log:
        log.write(" ".join(command) + "\n" + result.stdout[-3000:] + result.stderr[-6000:] + "\n")
    if result.returncode != 0:
        raise SystemExit(f"command failed ({result.returncode}): {' '.join(command)}\n{result.stderr[-3000:]}")


def losses(output: str) -> list[float]:
    with open(os.path.join(output, "metrics.jsonl")) as handle:
        return [json.loads(line)["contrastive_loss"] for line in handle]


def max_weight_difference(first: str, second: str) -> float:
    a, b = load_file(os.path.join(first, "model.safetensors")), load_file(os.path.join(second, "model.safetensors"))
    if a.keys() != b.keys():
        return float("inf")
    return max(float((a[key].float() - b[key].float()).abs().max()) for key in a)


def check(label: str, ok: bool, detail: str, failures: list) -> None:
    print(f"{'PASS' if ok else 'FAIL'} {label}: {detail}", flush=True)
    if not ok:
        failures.append(label)


def compare_stage(stage: str, variant: str, work: str, data: str, traces: str, failures: list) -> None:
    model = os.path.join(work, f"init-{variant}")
    build_tte("qwen2_vl", variant).save_pretrained(model)
    arguments = lambda out: [f"training.{stage}", "--model_path", model, "--data_config", data, "--traces", traces,
                             "--output_dir", out, "--per_device_batch_size", "8", "--block_size", "4",
                             "--chunk_size", "4", "--learning_rate", "1e-3", "--logging_steps", "1",
                             "--max_steps", "12", "--save_steps", "6"]  # fmt: skip
    plain, fsdp = os.path.join(work, f"{stage}-plain"), os.path.join(work, f"{stage}-fsdp")
    run(arguments(plain), False, work)
    run(arguments(fsdp), True, work)
    difference = max(abs(a - b) for a, b in zip(losses(plain), losses(fsdp)))
    check(f"{stage} loss curve FSDP vs plain", difference <= 1e-4 and len(losses(fsdp)) == 12,
          f"max |diff| {difference:.2e} over {len(losses(fsdp))} steps; first {losses(fsdp)[0]:.4f} last "
          f"{losses(fsdp)[-1]:.4f}", failures)  # fmt: skip
    weights = max_weight_difference(os.path.join(plain, "model"), os.path.join(fsdp, "model"))
    check(f"{stage} exported weights FSDP vs plain", weights <= 1e-3, f"max |diff| {weights:.2e}", failures)
    from transformers import AutoModel

    loaded, info = AutoModel.from_pretrained(os.path.join(fsdp, "model"), trust_remote_code=True,
                                             output_loading_info=True)  # fmt: skip
    vectors = loaded.embed(["red cat", "what colour is the dog ? blue"], think=False)
    check(f"{stage} FSDP export reloads", not info["missing_keys"] and not info["unexpected_keys"]
          and vectors.shape == (2, 32), f"missing {sorted(info['missing_keys'])[:3]}", failures)  # fmt: skip
    shutil.move(os.path.join(fsdp, "model"), os.path.join(work, f"{stage}-fsdp-first-export"))
    run(arguments(fsdp) + ["--resume"], True, work)
    resumed = max_weight_difference(os.path.join(work, f"{stage}-fsdp-first-export"), os.path.join(fsdp, "model"))
    check(f"{stage} FSDP resume from checkpoint", resumed == 0.0, f"max |diff| {resumed:.2e}", failures)


def main(work: str) -> None:
    print(torch.__version__, torch.cuda.get_device_name(0), flush=True)
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    data = write_pair_data(os.path.join(work, "data"))
    traces = write_trace_store(os.path.join(work, "traces"), data)
    failures = []
    compare_stage("train_embedder", "teacher", work, data, traces, failures)
    compare_stage("train_head", "unified", work, data, traces, failures)
    print("FAILED: " + ", ".join(failures) if failures else "ALL PASSED", flush=True)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main(sys.argv[1])
