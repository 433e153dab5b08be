"""Atomic checkpoints and exact resume.

A checkpoint is `accelerator.save_state` (model, optimizer, scheduler, every process's RNG states, and the
`Progress` object: the step, which is also the data position) plus `settings.json`, written to a temporary folder
that is renamed into place. The file `checkpoints/latest` names the newest complete checkpoint and is itself replaced
atomically, so a crash at any moment leaves the previous checkpoint usable:

    output_dir/checkpoints/step-00000020/   model.safetensors, optimizer.bin, scheduler.bin, random_states_*.pkl, ...
    output_dir/checkpoints/latest           "step-00000020"
    output_dir/model/                       the exported model (`save_pretrained`), after the last step
"""

import hashlib
import json
import os
import shutil
from dataclasses import asdict

from accelerate import Accelerator


CHECKPOINTS = "checkpoints"
LATEST = "latest"


def write_atomic(path: str, data: str | bytes) -> None:
    """Write `data` (text or bytes) to `path` through a temporary file and `os.replace`, so readers see the old or the
    new file."""
    temporary = f"{path}.tmp{os.getpid()}"
    try:
        with open(temporary, "wb" if isinstance(data, bytes) else "w") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):  # the write failed: leave no stray temporary file
            os.remove(temporary)


def sha256_of(path: str) -> str:
    """The sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class Progress:
    """Training position saved with every checkpoint; the sampler resumes from `step`."""

    def __init__(self):
        self.step = 0

    def state_dict(self) -> dict:
        return {"step": self.step}

    def load_state_dict(self, state: dict) -> None:
        self.step = state["step"]


def latest_checkpoint(output_dir: str) -> str | None:
    """Folder of the newest complete checkpoint, or None."""
    pointer = os.path.join(output_dir, CHECKPOINTS, LATEST)
    if not os.path.isfile(pointer):
        return None
    with open(pointer) as handle:
        return os.path.join(output_dir, CHECKPOINTS, handle.read().strip())


def save_checkpoint(accelerator: Accelerator, output_dir: str, step: int, settings) -> str:
    """Save the full training state atomically; every process must call this (each saves its RNG state).

    Returns:
        The checkpoint folder.
    """
    root = os.path.join(output_dir, CHECKPOINTS)
    name = f"step-{step:08d}"
    temporary, final = os.path.join(root, name + ".tmp"), os.path.join(root, name)
    if accelerator.is_main_process and os.path.exists(temporary):
        shutil.rmtree(temporary)  # left by a crash during an earlier save of this step
    accelerator.wait_for_everyone()
    accelerator.save_state(temporary)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_atomic(os.path.join(temporary, "settings.json"), json.dumps(asdict(settings), indent=2))
        previous = latest_checkpoint(output_dir)
        if os.path.exists(final):
            shutil.rmtree(final)  # renamed by a run that died before updating `latest`
        os.replace(temporary, final)
        write_atomic(os.path.join(root, LATEST), name)
        if previous is not None and previous != final and os.path.exists(previous):
            shutil.rmtree(previous)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator: Accelerator, output_dir: str) -> str | None:
    """Restore the newest checkpoint of `output_dir` into the prepared objects; returns its folder, or None."""
    folder = latest_checkpoint(output_dir)
    if folder is not None:
        accelerator.load_state(folder)
    return folder


def prune_training_state(output_dir: str) -> None:
    """Delete the newest checkpoint's training state (weights, optimizer, RNG), keeping its `settings.json`.

    For a finished stage whose exported `model/` is its result: a full checkpoint of a 135M-parameter model with its
    optimizer state is about 1 GB, and a recipe of a dozen stages would otherwise keep one per stage. The settings stay
    as the record of how the stage was trained. Does nothing when the folder has no checkpoint.
    """
    folder = latest_checkpoint(output_dir)
    if folder is None or not os.path.isdir(folder):
        return
    for name in os.listdir(folder):
        if name != "settings.json":
            path = os.path.join(folder, name)
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)


def export_model(accelerator: Accelerator, model, output_dir: str) -> str:
    """`save_pretrained` the final model to `output_dir/model` through a temporary folder (main process only).

    The folder holds config, weights, the root code files and the processor, so it loads with
    `AutoModel.from_pretrained(folder, trust_remote_code=True)`.
    """
    final = os.path.join(output_dir, "model")
    if accelerator.is_main_process:
        temporary = final + ".tmp"
        shutil.rmtree(temporary, ignore_errors=True)
        model.save_pretrained(temporary)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(temporary, final)
    accelerator.wait_for_everyone()
    return final


__all__ = ["Progress", "save_checkpoint", "prune_training_state", "load_checkpoint", "latest_checkpoint",
           "export_model", "sha256_of", "write_atomic"]  # fmt: skip
