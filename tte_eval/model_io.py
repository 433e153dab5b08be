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


def model_settings(model) -> dict:
    """The model-side comparability knobs recorded in results files (harness doc §8.4)."""
    config = model.config
    return {
        "variant": config.variant,
        "think": config.think,  # "queries": only queries reason; candidates are embedded without a trace
        "max_new_tokens": config.max_new_tokens,
        "prompt_set_version": config.prompt_set_version,
        "max_pixels": model.processor.max_pixels,
    }
