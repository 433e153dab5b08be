"""Helpers of the training tests: synthetic pair data, a synthetic trace store, subprocess runners.

Every model here has random weights (tests/tiny_models.py); the data is a small synthetic task the tests generate:
a query names a colour and a thing, its positive names the same pair, so a model can learn to match them.
"""

import json
import os
import signal
import subprocess
import sys
import threading
from contextlib import contextmanager

import yaml
from PIL import Image, ImageDraw

from training.traces import TraceStore, make_manifest


REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COLOURS = ("red", "blue", "green", "yellow")
THINGS = ("cat", "dog", "bus", "car", "tree", "square", "circle", "triangle")
SUBPROCESS_TIMEOUT_S = 900  # a bound against hangs, not a speed check: a busy 2-core CI machine is slow


def word_rows(negatives: int = 2) -> list[dict]:
    """32 text pairs: query `what colour is the <thing> ? <colour>`, positive `<colour> <thing>`, hard negatives that
    share the thing but not the colour."""
    rows = []
    for c, colour in enumerate(COLOURS):
        for thing in THINGS:
            others = [COLOURS[(c + j + 1) % len(COLOURS)] for j in range(negatives)]
            rows.append({"qry": f"what colour is the {thing} ? {colour}", "pos_text": f"{colour} {thing}",
                         "neg_text": [f"{other} {thing}" for other in others]})  # fmt: skip
    return rows


def picture_rows(image_dir: str) -> list[dict]:
    """8 image queries (a coloured circle or square) whose positive names colour and shape."""
    os.makedirs(image_dir, exist_ok=True)
    rows = []
    for colour in COLOURS:
        for shape in ("circle", "square"):
            image = Image.new("RGB", (56, 56), "white")
            draw = ImageDraw.Draw(image)
            (draw.ellipse if shape == "circle" else draw.rectangle)((8, 8, 48, 48), fill=colour)
            image.save(os.path.join(image_dir, f"{colour}-{shape}.png"))
            rows.append({"qry": "<|image_1|>\nwhat is on this picture ?", "qry_image_path": f"{colour}-{shape}.png",
                         "pos_text": f"{colour} {shape}", "neg_text": ["one", "two"]})  # fmt: skip
    return rows


def write_pair_data(folder, with_images: bool = True) -> str:
    """Write a JSONL text source (and a parquet image source) plus their data config; returns the config path."""
    import datasets

    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "words.jsonl"), "w") as handle:
        handle.writelines(json.dumps(row) + "\n" for row in word_rows())
    sources = [{"name": "words", "path": "words.jsonl", "weight": 3.0, "task": "retrieval"}]
    if with_images:
        datasets.Dataset.from_list(picture_rows(os.path.join(folder, "images"))).to_parquet(
            os.path.join(folder, "pictures.parquet")
        )
        sources.append({"name": "pictures", "path": "pictures.parquet", "image_dir": "images", "task": "vqa"})
    config = os.path.join(folder, "data.yaml")
    with open(config, "w") as handle:
        yaml.safe_dump({"sources": sources}, handle)
    return config


def synthetic_trace(example) -> str:
    """A deterministic 'teacher' trace: the query's last word (the colour) and its text, in the ECR format."""
    text = example.inputs["query"].get("text", "")
    return f"<think> {text.split()[-1]} </think> {text}"


def write_trace_store(folder, data_config: str, prompt_set_version: str = "ecr-v1") -> str:
    """A trace store holding a synthetic query trace for every example (as if a teacher had written them)."""
    from training.data import PairDataset, load_sources

    dataset = PairDataset(load_sources(data_config))
    store = TraceStore.create(str(folder), make_manifest("synthetic-teacher", prompt_set_version,
                                                         {"greedy": True, "max_new_tokens": 16}))  # fmt: skip
    examples = [dataset[index] for index in range(len(dataset))]
    store.append([(example.id, "query", synthetic_trace(example)) for example in examples])
    return str(folder)


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
