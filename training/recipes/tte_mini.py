"""Reproduce TTE-mini from the SmolLM2 GGUF, every stage with fixed seeds.

    python -m training.recipes.tte_mini --output_dir runs/tte-mini           # the full recipe (CPU: see README)
    python -m training.recipes.tte_mini --output_dir /tmp/smoke --smoke      # the whole chain at toy size

Stages, each in its own folder of `output_dir` and each run as `python -m training.<stage>` (so that accelerate sets
up a fresh process; a CUDA device is used when present):

1. `backbone/`: `training.build_backbone` (SmolLM2 + a new 2.6M-parameter Qwen2-VL vision tower, 4 visual tokens);
2. `init/`: `training.init_model`, a unified TTE model of it (nothing trained);
3. `data/`: `training.scenes` renders one-shape scenes (never easy-VQA's images, which stay held out);
4. `vision-regression/`: `training.train_vision --objective regression` (the vision tower only, no LM pass);
5. `vision-answers/`: `training.train_vision --objective next_token` (the LM stays frozen);
6. `eval/easy_vqa.json`: `training.eval_easy_vqa` on the easy-VQA test images;
7. `--assets_dir`: `training.assets.extract_assets` stores what training changed (the vision tower and the new token
   rows), the stages' settings and summaries and the evaluation; `python -m training.assets` builds the model from it.

A stage whose output exists is skipped, and a training stage that was interrupted resumes from its newest
checkpoint, so rerunning the same command continues where a run stopped.
"""

import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass, field

import yaml
from transformers import HfArgumentParser

from training.assets import INIT_SETTINGS, extract_assets
from training.checkpoint import latest_checkpoint, write_atomic
from training.scenes import write_alignment_source


@dataclass
class RecipeArgs:
    output_dir: str = field(metadata={"help": "Run folder; rerun the same command to resume."})
    smoke: bool = field(default=False, metadata={"help": "Toy sizes: checks the chain in minutes, not the quality."})
    seed: int = field(default=0, metadata={"help": "Seed of every stage."})
    mixed_precision: str = field(default="bf16", metadata={"help": "accelerate mixed precision of training stages."})
    assets_dir: str | None = field(default=None, metadata={"help": "Where the trained parts go (default: "
                                   "output_dir/assets); the repository's are assets/tte-mini."})  # fmt: skip


@dataclass
class Sizes:
    """Every size of the recipe; `SMOKE` shrinks each to toy scale."""

    images: int = 40_000
    regression_steps: int = 5_000
    regression_batch: int = 64
    regression_lr: float = 2e-3
    answer_steps: int = 700
    answer_batch: int = 8
    answer_lr: float = 3e-4
    eval_images: int | None = None  # all 1,000


SMOKE = Sizes(images=16, regression_steps=3, regression_batch=8, answer_steps=2, answer_batch=4, eval_images=2)


def run_stage(module: str, arguments: list[str]) -> None:
    """`python -m module arguments` under this interpreter; raises with the stage's name when it fails."""
    command = [sys.executable, "-m", module, *arguments]
    print("$", " ".join(command), flush=True)
    if subprocess.run(command).returncode != 0:
        raise RuntimeError(f"stage {module} failed: {' '.join(command)}")


def training_stage(module: str, folder: str, arguments: list[str]) -> str:
    """Run (or resume, or skip when finished) one training stage; returns its exported model folder."""
    model = os.path.join(folder, "model")
    if os.path.isfile(os.path.join(model, "config.json")):
        return model
    resume = ["--resume"] if latest_checkpoint(folder) is not None else []
    run_stage(module, ["--output_dir", folder, *arguments, *resume])
    return model


def write_data(folder: str, sizes: Sizes, seed: int) -> tuple[str, str]:
    """Render the scenes once; returns the data configs of the answers and of the captions."""
    if not os.path.isfile(os.path.join(folder, "captions.yaml")):
        write_data_configs(folder, write_alignment_source(os.path.join(folder, "scenes"), sizes.images, seed))
    return os.path.join(folder, "answers.yaml"), os.path.join(folder, "captions.yaml")


def write_data_configs(folder: str, source: dict) -> None:
    """`answers.yaml` (questions and captions) and `captions.yaml` (the regression data) over the rendered scenes."""
    entry = {**source, "path": "scenes/rows.jsonl", "image_dir": "scenes"}
    # A fifth of the answer batches describe the image under the retrieval prompt, the model's default family.
    retrieval = {**entry, "name": "scene-captions-retrieval", "path": "scenes/retrieval.jsonl", "task": "retrieval",
                 "weight": 0.25}  # fmt: skip
    write_atomic(os.path.join(folder, "answers.yaml"), yaml.safe_dump({"sources": [entry, retrieval]}))
    captions = {**entry, "path": "scenes/captions.jsonl"}
    write_atomic(os.path.join(folder, "captions.yaml"), yaml.safe_dump({"sources": [captions]}))


def main(argv: list[str] | None = None) -> str:
    (args,) = HfArgumentParser(RecipeArgs).parse_args_into_dataclasses(argv)
    sizes = SMOKE if args.smoke else Sizes()
    root = os.path.abspath(args.output_dir)
    os.makedirs(root, exist_ok=True)
    write_atomic(os.path.join(root, "recipe.json"), json.dumps({**asdict(args), "sizes": asdict(sizes)}, indent=2))
    common = ["--seed", str(args.seed), "--mixed_precision", args.mixed_precision, "--logging_steps", "10"]

    backbone = os.path.join(root, "backbone")
    if not os.path.isfile(os.path.join(backbone, "config.json")):
        run_stage("training.build_backbone", ["--output_dir", backbone, "--seed", str(args.seed)])
    init = os.path.join(root, "init")
    if not os.path.isfile(os.path.join(init, "config.json")):
        run_stage("training.init_model", ["--backbone", backbone, "--output_dir", init, *INIT_SETTINGS])
    answers, captions = write_data(os.path.join(root, "data"), sizes, args.seed)
    regressed = training_stage("training.train_vision", os.path.join(root, "vision-regression"), [
        "--model_path", init, "--data_config", captions, "--objective", "regression",
        "--per_device_batch_size", str(sizes.regression_batch), "--max_steps", str(sizes.regression_steps),
        "--learning_rate", str(sizes.regression_lr), "--weight_decay", "0.01", "--lr_scheduler", "cosine",
        "--warmup_steps", str(sizes.regression_steps // 50), "--save_steps", "500", *common,
    ])  # fmt: skip
    aligned = training_stage("training.train_vision", os.path.join(root, "vision-answers"), [
        "--model_path", regressed, "--data_config", answers, "--objective", "next_token",
        "--per_device_batch_size", str(sizes.answer_batch), "--chunk_size", str(sizes.answer_batch),
        "--max_steps", str(sizes.answer_steps), "--learning_rate", str(sizes.answer_lr), "--weight_decay", "0.01",
        "--lr_scheduler", "cosine", "--warmup_steps", str(sizes.answer_steps // 20), "--save_steps", "100", *common,
    ])  # fmt: skip
    results = os.path.join(root, "eval", "easy_vqa.json")
    if not os.path.isfile(results):
        run_stage("training.eval_easy_vqa", ["--model_path", aligned, "--output", results, "--max_new_tokens", "4",
                                             *(["--max_images", str(sizes.eval_images)] if sizes.eval_images else [])])
    stages = {"vision-regression": os.path.join(root, "vision-regression"),
              "vision-answers": os.path.join(root, "vision-answers")}  # fmt: skip
    assets_dir = args.assets_dir or os.path.join(root, "assets")
    extract_assets(aligned, assets_dir, extra_files=stage_files(stages, results, root))
    print(f"trained parts of {aligned} stored in {assets_dir}")
    return aligned


def stage_files(stages: dict[str, str], results: str, root: str) -> dict[str, str]:
    """The files committed beside the weights: each stage's settings and run summary, and the evaluation."""
    files = {"easy_vqa.json": results}
    for name, folder in stages.items():
        files[f"settings/{name}.json"] = os.path.join(latest_checkpoint(folder), "settings.json")
        with open(os.path.join(folder, "metrics.jsonl")) as handle:
            last = json.loads(handle.readlines()[-1])
        summary = os.path.join(root, f"{name}-summary.json")
        write_atomic(summary, json.dumps({"stage": name, **last}, indent=2) + "\n")
        files[f"runs/{name}.json"] = summary
    return files


if __name__ == "__main__":
    main()
