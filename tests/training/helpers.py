"""Helpers of the training tests: the shared training flags, subprocess runners, metrics and weights readers.

Every model here has random weights (`training.tiny_models`); the data is the small synthetic task of
`training.synthetic_pairs`.
"""

import json
import os
import signal
import subprocess
import sys
import threading
from contextlib import contextmanager


REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SUBPROCESS_TIMEOUT_S = 900  # a bound against hangs, not a speed check: a busy 2-core CI machine is slow


def train_arguments(model: str, data: str, traces: str, output: str, *extra: str) -> list[str]:
    """Flags of the tiny training runs the tests share: batches of 8 in same-source blocks of 4, chunks of 4, a
    checkpoint every 100 steps (a later flag in `extra` overrides any of these)."""
    return ["--model_path", model, "--data_config", data, "--traces", traces, "--output_dir", output,
            "--per_device_batch_size", "8", "--block_size", "4", "--chunk_size", "4", "--learning_rate", "1e-3",
            "--logging_steps", "1", "--save_steps", "100", *extra]  # fmt: skip


# The subprocesses get a PATH with system directories only: the suite may run as `<venv>/bin/python -m pytest` without
# the venv on PATH, so anything a test starts must come through `sys.executable`, never a console script found on
# PATH. A test that starts one then fails here on every machine, not only on the machines that lack it.
SYSTEM_PATH = "/usr/bin:/bin"


def subprocess_env(**extra: str) -> dict:
    return {**os.environ, "PATH": SYSTEM_PATH, "PYTHONPATH": REPO_ROOT, "OMP_NUM_THREADS": "1",
            "TOKENIZERS_PARALLELISM": "false", **extra}  # fmt: skip


# Two processes on CPU: accelerate joins them (gloo) only with ACCELERATE_USE_CPU=1; `--cpu` would start one process.
# The launcher is accelerate's module under this interpreter, not the `accelerate` script on PATH (see SYSTEM_PATH).
TWO_PROCESSES = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                 "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]  # fmt: skip


def run_module(module: str, args: list[str], launcher: list[str] | None = None) -> str:
    """Run `python -m module args` (or under `launcher`) to completion; returns its output, raising on failure."""
    command = (launcher or [sys.executable]) + ["-m", module, *args]
    result = subprocess.run(command, cwd=REPO_ROOT, env=subprocess_env(ACCELERATE_USE_CPU="1"), capture_output=True,
                            text=True, timeout=SUBPROCESS_TIMEOUT_S)  # fmt: skip
    assert result.returncode == 0, f"{command} failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    return result.stdout + result.stderr


@contextmanager
def paused_process(module: str, args: list[str], pause_after):
    """Start `python -m module args` with `TTE_PAUSE_AFTER=pause_after`, yield `(process, output so far)` once it
    pauses there (still alive), then SIGKILL it on exit."""
    process = subprocess.Popen([sys.executable, "-m", module, *args], cwd=REPO_ROOT, text=True,
                               env=subprocess_env(TTE_PAUSE_AFTER=str(pause_after)), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT)  # fmt: skip
    watchdog = threading.Timer(SUBPROCESS_TIMEOUT_S, process.kill)  # bounded even if the pause never comes
    watchdog.start()
    lines = []
    try:
        for line in process.stdout:
            lines.append(line)
            if f"paused after {pause_after}" in line:
                break
        output = "".join(lines)
        assert f"paused after {pause_after}" in output, f"the run never paused:\n{output[-6000:]}"
        yield process, output
    finally:
        watchdog.cancel()
        process.send_signal(signal.SIGKILL)
        process.wait()


def run_until_paused_then_kill(module: str, args: list[str], pause_after) -> str:
    """Run `python -m module args` with `TTE_PAUSE_AFTER=pause_after`, wait until it pauses there, then SIGKILL it.

    Returns:
        The output up to the pause.
    """
    with paused_process(module, args, pause_after) as (process, output):
        pass
    assert process.returncode == -signal.SIGKILL
    return output


def read_metrics(output_dir: str) -> list[dict]:
    with open(os.path.join(output_dir, "metrics.jsonl")) as handle:
        return [json.loads(line) for line in handle]


def saved_weights(folder: str) -> dict:
    """The tensors of a `save_pretrained` folder's `model.safetensors`."""
    from safetensors.torch import load_file

    return load_file(os.path.join(folder, "model.safetensors"))
