"""Embedding cache with a manifest: a cached task is reused only when every comparability knob and input matches.

VLM2Vec's `eval.py` skips any task whose embedding files exist, so stale embeddings survive a model change (harness
doc §8.1). Here each task's cache file (`<cache_dir>/<task>.npz`) stores the manifest it was built under and the
keys of the inputs it embeds; any difference rebuilds it. Files are written to a temporary file and moved into place
with `os.replace`, so a crash never leaves a half-written cache or results file.
"""

import dataclasses
import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Manifest:
    """The settings that decide what an embedding is; all are recorded in every results file.

    Args:
        model_hash: sha256 over the model folder's `config.json` and `*.safetensors` (`model_io.model_hash`).
        prompt_set_version: the model's reasoning prompt-set version (`TTEConfig.prompt_set_version`).
        max_pixels: the image pixel budget of the processor.
        num_frames: frames sampled per video.
        task_list_version: the pinned task list (`tasks.TASK_LIST_VERSIONS`).
        think: the thinking policy the embeddings were made under (`tte-eval evaluate --think`, default the model's).
        max_frame_pixels, max_video_pixels: the processor's video pixel budgets (`video_tte.VideoSampling`); None
            for a model without video (and in caches written before they were recorded: they match None).
    """

    model_hash: str
    prompt_set_version: str
    max_pixels: int | None
    num_frames: int
    task_list_version: str
    think: str | bool = "queries"
    max_frame_pixels: int | None = None
    max_video_pixels: int | None = None

    def to_dict(self) -> dict:
        """The manifest as a plain dict (what the cache and the results file store)."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class CachedEmbeddings:
    """One task's embeddings: unique query / document input keys and their `(n, d)` embeddings, row-aligned."""

    query_keys: list[str]
    query_embeddings: np.ndarray
    document_keys: list[str]
    document_embeddings: np.ndarray


def input_key(model_input: dict) -> str:
    """A canonical string for one encoder input; equal inputs are embedded once."""
    return json.dumps(model_input, sort_keys=True, ensure_ascii=False)


def write_atomic(path: str, write: Callable) -> None:
    """Call `write(file)` on a temporary file in `path`'s folder, then move it onto `path` with `os.replace`."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        with os.fdopen(handle, "wb") as f:
            write(f)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def save_embeddings(path: str, manifest: Manifest, embeddings: CachedEmbeddings) -> None:
    """Write one task's embeddings and the manifest they were built under, atomically."""
    arrays = {
        "manifest": np.array(json.dumps(manifest.to_dict(), sort_keys=True)),
        "query_keys": np.array(embeddings.query_keys, dtype=str),
        "query_embeddings": embeddings.query_embeddings,
        "document_keys": np.array(embeddings.document_keys, dtype=str),
        "document_embeddings": embeddings.document_embeddings,
    }
    write_atomic(path, lambda f: np.savez(f, **arrays))


def load_embeddings(
    path: str, manifest: Manifest, query_keys: list[str], document_keys: list[str]
) -> tuple[CachedEmbeddings | None, str]:
    """Load a task's cached embeddings if they were built under `manifest` for exactly these inputs.

    Returns:
        (embeddings or None, status): status is `"reused"`, `"missing"`, `"stale: <field> changed (<old> -> <new>)"`
        or `"stale: task inputs changed"`.
    """
    if not os.path.isfile(path):
        return None, "missing"
    with np.load(path, allow_pickle=False) as stored:
        cached_manifest = json.loads(str(stored["manifest"]))
        changed = [name for name, value in manifest.to_dict().items() if cached_manifest.get(name) != value]
        if changed:
            name = changed[0]
            return None, f"stale: {name} changed ({cached_manifest.get(name)!r} -> {manifest.to_dict()[name]!r})"
        if stored["query_keys"].tolist() != query_keys or stored["document_keys"].tolist() != document_keys:
            return None, "stale: task inputs changed"
        cached = CachedEmbeddings(
            query_keys, stored["query_embeddings"], document_keys, stored["document_embeddings"]
        )
    return cached, "reused"
