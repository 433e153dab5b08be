"""Load a TTE model folder for evaluation and fingerprint it for the cache manifest."""

import glob
import hashlib
import os


def model_hash(folder: str) -> str:
    """sha256 over the folder's `config.json` and `*.safetensors` files (names and bytes, in sorted order).

    Raises:
        ValueError: if `config.json` or every `*.safetensors` file is missing.
    """
    config = os.path.join(folder, "config.json")
    weights = sorted(glob.glob(os.path.join(folder, "*.safetensors")))
    if not os.path.isfile(config):
        raise ValueError(f"model folder {folder!r} has no config.json")
    if not weights:
        raise ValueError(f"model folder {folder!r} has no *.safetensors weight files")
    digest = hashlib.sha256()
    for path in [config, *weights]:
        digest.update(os.path.basename(path).encode("utf-8") + b"\0")
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def load_tte_model(folder: str):
    """Load a TTE model with `AutoModel.from_pretrained(folder, trust_remote_code=True)`, in eval mode.

    The model implements the runner's encoder protocol (`encode_query` / `encode_document`); its config carries
    `prompt_set_version` and its `processor` carries `max_pixels`.
    """
    from transformers import AutoModel  # imported here so metric and aggregation use never loads transformers

    return AutoModel.from_pretrained(folder, trust_remote_code=True).eval()


class ModelEncoder:
    """The runner's encoder (`runner.Encoder`) over a TTE model: one thinking policy for the whole run, an optional
    trace cache, and what the run cost (`TTEModel.embed`'s `EmbedStats`, summed per side).

    Args:
        model: a loaded TTE model.
        think: the thinking policy (default the model's `config.think`).
        trace_cache: a trace cache file, or None.
        num_frames: the harness's frames per video (`--num-frames`): the loaders sample the frame lists, and the
            model keeps them all (its own `num_frames` would sample them again).
    """

    def __init__(self, model, think: str | bool | None = None, trace_cache: str | None = None, num_frames: int = 8):
        self.model = model
        self.think = model.config.think if think is None else think
        self.trace_cache = trace_cache
        self.video_sampling = {"num_frames": num_frames}
        self.stats = {}  # side -> EmbedStats of this run

    def _encode(self, inputs: list[dict], batch_size: int, side: str):
        embeddings, stats = self.model.embed(inputs, side=side, batch_size=batch_size, think=self.think,
                                             trace_cache=self.trace_cache, return_stats=True,
                                             video_sampling=self.video_sampling)  # fmt: skip
        self.stats[side] = self.stats[side] + stats if side in self.stats else stats
        return embeddings

    def encode_query(self, inputs: list[dict], batch_size: int):
        return self._encode(inputs, batch_size, "query")

    def encode_document(self, inputs: list[dict], batch_size: int):
        return self._encode(inputs, batch_size, "document")

    def cost_report(self) -> dict:
        """Per side: the summed stats and the think rate (inputs embedded with a trace the model made, generated or
        from the trace cache, over all inputs). Counts only what this run embedded: tasks the embedding cache
        reused add nothing."""
        report = {}
        for side, stats in self.stats.items():
            report[side] = {**stats.to_dict(), "think_rate": stats.think_rate}
        return report


def model_settings(model) -> dict:
    """The model-side comparability knobs recorded in results files (harness doc §8.4)."""
    config = model.config
    settings = {
        "variant": config.variant,
        "think": config.think,  # "queries": only queries reason; candidates are embedded without a trace
        "max_new_tokens": config.max_new_tokens,
        "prompt_set_version": config.prompt_set_version,
        "max_pixels": model.processor.max_pixels,
    }
    # The families whose queries think under "tasks"; a folder whose code predates the setting has no such field.
    if getattr(config, "think_tasks", None) is not None:
        settings["think_tasks"] = config.think_tasks
    if not model.processor.text_only:  # how a video's frames are sized (their count is the harness's --num-frames)
        sampling = model.processor.video_sampling
        settings.update(max_frame_pixels=sampling.max_frame_pixels, max_video_pixels=sampling.max_video_pixels)
    return settings
