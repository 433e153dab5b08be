"""Reproduce TTE-mini from the SmolLM2 GGUF, every stage with fixed seeds.

    python -m training.recipes.tte_mini --output_dir runs/tte-mini           # the full recipe (CPU: see README)
    python -m training.recipes.tte_mini --output_dir /tmp/smoke --smoke      # the whole chain at toy size

Stages, each in its own folder of `output_dir` and each run as `python -m training.<stage>` (so that accelerate sets
up a fresh process; a CUDA device is used when present):

1. `backbone/`: `training.build_backbone` (SmolLM2 + a new 2.6M-parameter Qwen2-VL vision tower, 4 visual tokens);
2. `init/`: `training.init_model`, a unified TTE model of it (nothing trained; 1 and 2 are removed once stage 4
   finished);
3. `data/`: `training.scenes` renders one-shape scenes (never easy-VQA's images, which stay held out);
4. `vision-regression/`: `training.train_vision --objective regression` (the vision tower only, no LM pass);
5. `vision-answers/`: `training.train_vision --objective next_token` (the LM stays frozen);
6. `eval/easy_vqa.json`: `training.eval_easy_vqa` on the easy-VQA test images;
7. `--assets_dir`: `training.assets.extract_assets` stores what training changed (the vision tower and the new token
   rows), the stages' settings and summaries and the evaluation; `python -m training.assets` builds the model from it.

With `--variants` (part 2, the paper's comparison), after stage 5:

8. `scene-tasks/`: `training.scene_tasks`, 2x2 grid scenes with relation, count, grounding, retrieval and
   classification queries, held-out colour-shape combinations in every test scene, and the **oracle teacher's**
   traces (written from the scene graph, not by a model);
9. `vision-grid/`: `training.train_vision --objective next_token` on grid captions and cell questions (plus part 1's
   one-shape data) with LoRA on the language model, so the 4 visual tokens describe the 4 cells and the language
   model reads them; it starts from `vision-cells/`: `training.train_vision --objective cells` on the grid captions
   (`--no_grid_cells` / `--no_grid_lora` leave either out);
10. `reasoner/`: `training.train_reasoner` (LoRA) on the oracle's traces: the student reasoner and TTE_u stage 1;
11. `variants/<name>/init`: `training.init_model` builds no thinking, zero-shot, student and teacher models, each
    embedder from the SFT'd backbone as TTE_u's head is (`--embedder_start grid`: from the grid model), the zero-shot
    reasoner the aligned backbone before any reasoner SFT; each is removed once its stage 13 finished;
12. `traces/<name>`: `training.generate_traces` of the zero-shot and student reasoners on the embedder's data;
13. `variants/<name>/`: the same embedder recipe for every variant (`training.train_embedder --top_layers N`), and
    `training.train_head` (N layers) on the frozen SFT'd backbone for unified (with `--gate` or `--think_tasks`, with
    `--trace_dropout` so that it also embeds a query without its trace);
14. with `--gate` or `--think_tasks`, `scene-tasks/dev/`: a development split drawn like the test split (held-out
    combinations) and sharing none of its queries, and on it either `variants/unified-gate/`: `training.train_gate`,
    the unified model's `think="auto"` gate, made its default policy (it thinks only about the queries whose trace it
    expects to help), or `variants/unified-think-tasks/`: `training.think_tasks`, the task families whose queries
    think, made its default policy (`think="tasks"`); by default neither runs, there is no trace dropout, and every
    query thinks;
15. `eval/<name>/`: `tte-eval` on the held-out test tasks (and `eval/<name>-think-never/`, each variant that thinks
    evaluated with `--think never`; with `--gate` or `--think_tasks`, `eval/unified-think-queries/`: the published
    model thinking about every query, as the other variants do),
    `eval/reading-<name>.json`: `training.trace_quality`, how each reasoner reads the test scenes, then
    `training.compare_variants` writes the comparison.

A stage whose output exists is skipped, and a training stage that was interrupted resumes from its newest
checkpoint, so rerunning the same command continues where a run stopped.
"""

import json
import os
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from typing import Literal

import yaml
from transformers import HfArgumentParser

from training.assets import (COMPARISON, INIT_SETTINGS, MANIFEST, PLOT, add_asset_files, build_model, extract_assets,
                             read_manifest)
from training.checkpoint import latest_checkpoint, prune_training_state, write_atomic
from training.compare_variants import THINKING_VARIANTS, reading_file, results_file, variant_model
from training.scene_tasks import (
    KINDS,
    SceneTaskArgs,
    split_fingerprints,
    write_one_shape_sft,
    write_scene_tasks,
    write_test_tasks,
)
from training.scenes import write_alignment_source


@dataclass
class RecipeArgs:
    output_dir: str = field(metadata={"help": "Run folder; rerun the same command to resume."})
    smoke: bool = field(default=False, metadata={"help": "Toy sizes: checks the chain in minutes, not the quality."})
    seed: int = field(default=0, metadata={"help": "Seed of every stage."})
    mixed_precision: str = field(default="auto", metadata={"help": "Mixed precision of the training stages: no, "
                                 "bf16 or auto (bf16 where it is fast: training.loop.fast_bf16)."})  # fmt: skip
    assets_dir: str | None = field(default=None, metadata={"help": "Where the trained parts go (default: "
                                   "output_dir/assets); the repository's are assets/tte-mini."})  # fmt: skip
    variants: bool = field(default=False, metadata={"help": "Also run part 2: train and compare the variants."})
    part1_assets: str | None = field(default=None, metadata={"help": "Start from part 1's trained parts (e.g. "
                                     "assets/tte-mini) instead of training part 1: the aligned model is built from "
                                     "them, and their settings, run summaries and evaluation are carried over."})  # fmt: skip
    grid_lora: bool = field(default=True, metadata={"help": "The grid stage also trains LoRA adapters (merged) on the "
                            "language model, so that it learns to read the grid's 4 visual tokens, not only the tower "
                            "to write them (`--no_grid_lora`: the tower alone, as before 2026-12-04)."})  # fmt: skip
    grid_cells: bool = field(default=True, metadata={"help": "Before the grid stage, the tower alone learns each cell "
                             "token's colour and shape (`train_vision --objective cells`), so that its tokens carry "
                             "held-out combinations (`--no_grid_cells`: no such stage, as before 2026-12-04)."})  # fmt: skip
    embedder_start: Literal["sft", "grid"] = field(default="sft", metadata={"help": "Where the no-thinking, "
                                                   "zero-shot, student and teacher embedders start: `sft`, the SFT'd "
                                                   "backbone, as the unified head does, so that the variants differ "
                                                   "only in their traces; `grid`, the grid model before the reasoner "
                                                   "SFT, as before 2026-12-04 (the paper starts TTE_s's embedder from "
                                                   "the base model)."})  # fmt: skip
    gate: bool = field(default=False, metadata={"help": "The unified head trains with trace dropout and the published "
                       "model thinks at think='auto' (`training.train_gate`): only about the queries whose trace its "
                       "gate expects to help, fitted on a development split of the scene tasks. Off by default: on "
                       "seed 1 the gate cost 2.0 points against the student at 0.85x its latency (0.76x when fitted "
                       "on training queries; benchmarks/results/tte-mini-gate-dev-2026-12-05-seed1/)."})  # fmt: skip
    think_tasks: bool = field(default=False, metadata={"help": "The unified head trains with trace dropout and the "
                              "published model thinks at think='tasks' (`training.think_tasks`): only the queries of "
                              "the task families where a development split of the scene tasks says the trace pays. "
                              "Off by default; not with --gate. On seed 1's gated head, chosen the same way, it scored "
                              "the student's 41.4 at 0.70x its latency "
                              "(benchmarks/results/tte-mini-gate-dev-2026-12-05-seed1/)."})  # fmt: skip

    def __post_init__(self):
        if self.gate and self.think_tasks:
            raise ValueError("--gate and --think_tasks are two thinking policies for the published model; choose one")

    @property
    def thinking(self) -> str | None:
        """The published unified model's adaptive thinking policy, if any: `"auto"` (the gate) or `"tasks"`."""
        return "auto" if self.gate else "tasks" if self.think_tasks else None


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
    # part 2: the variant comparison
    scene_images: int = 3000
    test_rows: int = 50  # per test task (350 test queries over the 7 scene tasks)
    control_images: int = 20  # easy-VQA control task
    grid_steps: int = 1000  # 500 left the grid captions at loss 0.83, and the student's traces followed them
    # the cells stage: 1,500 x 64 images (32 epochs of the 3,000 grid captions) took 3.5-4 min on the 2-core CPU
    cells_steps: int = 1500
    cells_batch: int = 64
    cells_lr: float = 1e-3
    sft_steps: int = 300
    sft_batch: int = 8
    sft_lr: float = 2e-4
    one_shape_sft_images: int = 1500  # part 1's images whose 4 rows join the SFT (6,000 of ~26,000 rows)
    embed_rows: int = 1600  # the embedder's data: every variant trains on the same rows
    # 150 x 16 pairs at 3e-4 (1.5 epochs): the oracle teacher's InfoNCE loss stays near chance (ln 16 = 2.77) for
    # the first ~20 steps and reaches ~1.0 by step 60, so the 32 steps of the first run left every embedder untrained.
    embed_steps: int = 150
    embed_batch: int = 16
    embed_lr: float = 3e-4
    head_layers: int = 4  # of 30; the unified head and every other embedder train this many top layers
    # With the gate or the task families: the share of the head's training queries embedded with the empty trace, so
    # that the head embeds the queries sent without a trace into the same space (seed 1's head without it scored 0 of
    # 512 training queries right without their trace: training.train_gate could only learn to always think).
    head_trace_dropout: float = 0.5
    # The gate learns where the trace helps from a development split drawn like the test split: on the embedder's own
    # training queries the trace helps almost everywhere (seed 1: 79 %), on held-out combinations far less often.
    gate_queries: int = 512  # development queries labelled (trace helps or not): 3/4 fit the gate, 1/4 its threshold
    dev_rows: int = 75  # per scene task of the development split (7 x 75 >= gate_queries)
    # The gate's threshold, and the task families that think: the least thinking whose development accuracy is within
    # this of the best (the gate) or of every query thinking (the families), the issue's own tolerance (the unified
    # model within 2 points of the student). At 0 (the best accuracy alone) seed 1's gate, fitted on the development
    # split, thought about 95 % of the queries, on 128 held-out queries, a noisy choice.
    accuracy_tolerance: float = 0.02
    max_new_tokens: int = 64  # the oracle's traces are at most 60 SmolLM2 tokens
    latency_queries: int = 16  # the first 2 queries of each of the 8 test tasks: a gated model's mix of both kinds
    reading_queries: int = 20  # per scene task: the image queries whose traces `training.trace_quality` reads
    qa_images: int = 50  # easy-VQA question answering of the published model


SMOKE = Sizes(images=16, regression_steps=3, regression_batch=8, answer_steps=2, answer_batch=4, eval_images=2,
              scene_images=30, test_rows=2, control_images=1, grid_steps=2, cells_steps=2, cells_batch=4, sft_steps=2,
              sft_batch=2, one_shape_sft_images=4, embed_rows=70, embed_steps=2, embed_batch=2, gate_queries=8,
              dev_rows=2, max_new_tokens=8, latency_queries=2, reading_queries=1, qa_images=2)  # fmt: skip


READERS = ("zero-shot", "student", "unified")  # the variants whose own reasoner writes the traces


def run_stage(module: str, arguments: list[str]) -> None:
    """`python -m module arguments` under this interpreter; raises with the stage's name when it fails."""
    command = [sys.executable, "-m", module, *arguments]
    print("$", " ".join(command), flush=True)
    if subprocess.run(command).returncode != 0:
        raise RuntimeError(f"stage {module} failed: {' '.join(command)}")


def stage_finished(folder: str) -> bool:
    """Whether the training stage in `folder` has exported its model."""
    return os.path.isfile(os.path.join(folder, "model", "config.json"))


def training_stage(module: str, folder: str, arguments: list[str], starting_points: tuple[str, ...] = ()) -> str:
    """Run (or resume, or skip when finished) one training stage; returns its exported model folder.

    A finished stage keeps only its exported model and its checkpoint's settings (`prune_training_state`), and the
    untrained model folders it started from (`starting_points`, rebuilt by `init_model` in seconds) are removed: each
    is a full copy of the backbone, and the whole chain would otherwise hold seven of them on disk.
    """
    model = os.path.join(folder, "model")
    if not stage_finished(folder):
        resume = ["--resume"] if latest_checkpoint(folder) is not None else []
        run_stage(module, ["--output_dir", folder, *arguments, *resume])
    prune_training_state(folder)
    for path in starting_points:
        shutil.rmtree(path, ignore_errors=True)
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

    answers, captions = write_data(os.path.join(root, "data"), sizes, args.seed)
    if args.part1_assets:
        aligned, part1_files = part1_from_assets(args.part1_assets, root)
    else:
        aligned, part1_files = train_part1(root, sizes, common, args.seed, answers, captions)
    assets_dir = args.assets_dir or os.path.join(root, "assets")
    if args.variants:
        return run_variants(root, sizes, common, aligned, answers, assets_dir, part1_files, args.grid_lora,
                            args.grid_cells, args.embedder_start, args.thinking)  # fmt: skip
    extract_assets(aligned, assets_dir, extra_files=part1_files)
    print(f"trained parts of {aligned} stored in {assets_dir}")
    return aligned


def train_part1(root: str, sizes: Sizes, common: list[str], seed: int, answers: str, captions: str,
                ) -> tuple[str, dict[str, str]]:  # fmt: skip
    """Part 1: the backbone, the vision tower's two stages and the easy-VQA evaluation.

    Returns:
        The aligned model folder, and the files its assets carry (`{name in the assets: path}`).
    """
    backbone, init = os.path.join(root, "backbone"), os.path.join(root, "init")
    if not stage_finished(os.path.join(root, "vision-regression")):
        if not os.path.isfile(os.path.join(backbone, "config.json")):
            run_stage("training.build_backbone", ["--output_dir", backbone, "--seed", str(seed)])
        if not os.path.isfile(os.path.join(init, "config.json")):
            run_stage("training.init_model", ["--backbone", backbone, "--output_dir", init, *INIT_SETTINGS])
    regressed = training_stage("training.train_vision", os.path.join(root, "vision-regression"), [
        "--model_path", init, "--data_config", captions, "--objective", "regression",
        "--per_device_batch_size", str(sizes.regression_batch), "--max_steps", str(sizes.regression_steps),
        "--learning_rate", str(sizes.regression_lr), "--weight_decay", "0.01", "--lr_scheduler", "cosine",
        "--warmup_steps", str(sizes.regression_steps // 50), "--save_steps", "500", *common,
    ], starting_points=(backbone, init))  # fmt: skip
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
    stages = {name: os.path.join(root, name) for name in ("vision-regression", "vision-answers")}
    return aligned, {**stage_files(stages, root), "easy_vqa.json": results}


def part1_from_assets(assets_dir: str, root: str) -> tuple[str, dict[str, str]]:
    """Part 1 as committed: a copy of its assets (so that publishing into the same folder cannot clobber them) and
    the aligned model built from it, checked against the manifest's digest.

    Returns:
        As `train_part1`: the aligned model, and part 1's settings, run summaries and evaluation from the assets.
    """
    copy = os.path.join(root, "part1-assets")
    if not os.path.isfile(os.path.join(copy, MANIFEST)):
        staging = copy + ".partial"
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(assets_dir, staging)
        os.replace(staging, copy)
    manifest = read_manifest(copy)
    if "settings/reasoner.json" in manifest["files"]:  # building them would give the SFT'd model, not the aligned one
        raise ValueError(f"{assets_dir} holds part 2's trained parts (settings/reasoner.json), not part 1's: train "
                         "part 1 (leave out --part1_assets) or pass the assets of a part-1 run")
    # Built with this code's init settings, not those part 1's manifest recorded (they may differ in settings that
    # change no weight, e.g. its max_new_tokens 48 where the code now has 64): part 2 starts from this code's base.
    aligned = build_model(copy, os.path.join(root, "vision-answers", "model"), init_settings=INIT_SETTINGS)
    carried = [name for name in manifest["files"] if name.startswith(("settings/", "runs/")) or name == "easy_vqa.json"]
    return aligned, {name: os.path.join(copy, name) for name in carried}


def write_variant_data(folder: str, sizes: Sizes, seed: int, answers: str) -> dict[str, str]:
    """Scene tasks, oracle traces and the data configs of part 2: `grid` (vision), `cells` (the grid captions),
    `sft` (all training rows) and `embed` (the rows of the first scenes, the same for every variant's embedder)."""
    configs = {name: os.path.join(folder, f"{name}.yaml") for name in ("grid", "cells", "sft", "embed")}
    if all(os.path.isfile(config) for config in configs.values()):
        return configs
    tasks = SceneTaskArgs(os.path.join(folder, "scene-tasks"), train_images=sizes.scene_images,
                          test_rows=sizes.test_rows, control_images=sizes.control_images, seed=seed)  # fmt: skip
    sources, _ = write_scene_tasks(tasks)
    train = os.path.join("scene-tasks", "train")
    sources = [{**source, "path": os.path.join(train, source["path"]), "image_dir": train} for source in sources]
    with open(answers) as handle:  # part 1's one-shape data keeps single-object perception (the easy-VQA control)
        one_shape = [{**source, "path": os.path.join(os.path.dirname(answers), source["path"]),
                      "image_dir": os.path.join(os.path.dirname(answers), source["image_dir"]), "weight": 1.0}
                     for source in yaml.safe_load(handle)["sources"]]  # fmt: skip
    grid = {"name": "grid-perception", "path": os.path.join(train, "perception.jsonl"), "image_dir": train,
            "task": "vqa", "weight": 6.0}  # fmt: skip
    embed_scenes = max(1, sizes.embed_rows // len(KINDS))
    embed_sources = []
    for source in sources:
        with open(os.path.join(folder, source["path"])) as handle:
            rows = [line for line in handle if int(json.loads(line)["id"][:6]) < embed_scenes]
        path = source["path"].replace(".jsonl", "-embed.jsonl")
        write_atomic(os.path.join(folder, path), "".join(rows))
        embed_sources.append({**source, "path": path, "weight": float(len(rows))})
    write_atomic(configs["grid"], yaml.safe_dump({"sources": [grid, *one_shape]}))
    cells = {**grid, "name": "grid-captions", "path": os.path.join(train, "captions.jsonl"), "weight": 1.0}
    write_atomic(configs["cells"], yaml.safe_dump({"sources": [cells]}))
    # The SFT also sees part 1's one-shape questions and descriptions, with the oracle's traces: on grid scenes alone
    # it forgot them (easy-VQA: shape 0 %, descriptions 46.5 %, after the 2026-12-02 run), and the default model is
    # this SFT'd backbone.
    one_shape = write_one_shape_sft(os.path.join(folder, "scenes"), sizes.one_shape_sft_images,
                                    os.path.join(folder, train, "oracle-traces"))  # fmt: skip
    write_atomic(configs["sft"], yaml.safe_dump({"sources": [*sources, *one_shape]}))
    write_atomic(configs["embed"], yaml.safe_dump({"sources": embed_sources}))
    return configs


def init_variant(folder: str, arguments: list[str]) -> str:
    """`training.init_model` into `folder` once."""
    if not os.path.isfile(os.path.join(folder, "config.json")):
        run_stage("training.init_model", ["--output_dir", folder, "--dtype", "float32", *arguments])
    return folder


def generate_traces(model: str, data_config: str, folder: str, sizes: Sizes) -> str:
    """The model's reasoner's query traces for `data_config` (resumes; a finished store is only re-read)."""
    run_stage("training.generate_traces", ["--model_path", model, "--data_config", data_config, "--output_dir",
                                           folder, "--sides", "query", "--batch_size", "16",
                                           "--max_new_tokens", str(sizes.max_new_tokens)])  # fmt: skip
    return folder


def evaluate_variant(model: str, tasks_dir: str, results: str, name: str, traces: str | None = None,
                     think: str | None = None) -> str:  # fmt: skip
    """`tte-eval` on the held-out test tasks into `results` (at the model's think policy, or `think`); the results
    file records every comparability setting."""
    if not os.path.isfile(results):
        run_stage("tte_eval", ["evaluate", "--model", model, "--tasks-dir", tasks_dir, "--output",
                               os.path.dirname(results), "--model-name", name, "--batch-size", "16",
                               *(["--traces", traces] if traces else []),
                               *(["--think", think] if think else [])])  # fmt: skip
    return results


def run_variants(root: str, sizes: Sizes, common: list[str], aligned: str, answers: str, assets_dir: str,
                 part1_files: dict[str, str], grid_lora: bool, grid_cells: bool, embedder_start: str,
                 thinking: str | None) -> str:  # fmt: skip
    """Part 2: train every variant with the same embedder budget, publish the unified one (at the adaptive policy
    `thinking`, `RecipeArgs.thinking`, if any) as the default model (its assets), evaluate each variant (the unified
    one as published) and write the comparison into the assets. `grid_lora`, `grid_cells`, `embedder_start`: see
    `RecipeArgs`.

    Returns:
        The published unified model folder.
    """
    data = os.path.join(root, "data")
    configs = write_variant_data(data, sizes, int(common[common.index("--seed") + 1]), answers)
    scene_tasks = os.path.join(data, "scene-tasks")
    oracle_train, oracle_test = (os.path.join(scene_tasks, split, "oracle-traces") for split in ("train", "test"))
    if grid_cells:
        aligned = training_stage("training.train_vision", os.path.join(root, "vision-cells"), [
            "--model_path", aligned, "--data_config", configs["cells"], "--objective", "cells",
            "--per_device_batch_size", str(sizes.cells_batch), "--max_steps", str(sizes.cells_steps),
            "--learning_rate", str(sizes.cells_lr), "--weight_decay", "0.01", "--lr_scheduler", "cosine",
            "--warmup_steps", str(sizes.cells_steps // 20), "--save_steps", "500", *common,
        ])  # fmt: skip
    grid = training_stage("training.train_vision", os.path.join(root, "vision-grid"), [
        "--model_path", aligned, "--data_config", configs["grid"], "--objective", "next_token",
        "--per_device_batch_size", str(sizes.answer_batch), "--chunk_size", str(sizes.answer_batch),
        "--max_steps", str(sizes.grid_steps), "--learning_rate", str(sizes.answer_lr), "--weight_decay", "0.01",
        "--lr_scheduler", "cosine", "--warmup_steps", str(sizes.grid_steps // 20), "--save_steps", "100", *common,
        *(["--lora", "--lora_dropout", "0"] if grid_lora else []),
    ])  # fmt: skip
    reasoner = training_stage("training.train_reasoner", os.path.join(root, "reasoner"), [
        # No LoRA dropout: 200 steps of 8 see each of the ~20,000 training rows at most once, and without dropout
        # each family's system turn runs once per chunk (training.losses.next_token_loss), 2-3x faster on CPU.
        "--model_path", grid, "--data_config", configs["sft"], "--traces", oracle_train, "--lora",
        "--lora_dropout", "0", "--per_device_batch_size", str(sizes.sft_batch), "--chunk_size", str(sizes.sft_batch),
        "--max_steps", str(sizes.sft_steps),
        "--learning_rate", str(sizes.sft_lr), "--lr_scheduler", "cosine", "--warmup_steps", str(sizes.sft_steps // 20),
        "--save_steps", "100", *common,
    ])  # fmt: skip
    variants = os.path.join(root, "variants")
    # By default every embedder starts from the SFT'd backbone, which TTE_u's head cannot avoid: the variants then
    # differ only in their traces. (From the grid model, seed 1's student gained +0.5 from traces that gained the
    # unified head +8.8: the gap was the start, benchmarks/results/tte-mini-embedder-init-2026-12-04/.)
    start = {"sft": reasoner, "grid": grid}[embedder_start]
    starts = {  # `training.init_model`'s arguments for each variant's untrained model
        "no-thinking": ["--backbone", start, "--variant", "teacher", "--think", "never"],
        "zero-shot": ["--backbone", start, "--variant", "student", "--reasoner", grid,
                      "--max_new_tokens", str(sizes.max_new_tokens)],
        "student": ["--backbone", start, "--variant", "student", "--reasoner", reasoner,
                    "--max_new_tokens", str(sizes.max_new_tokens)],
        "teacher": ["--backbone", start, "--variant", "teacher"],
        # TTE_u: the SFT'd backbone, its head a copy of its top N layers (trained on top of the frozen backbone)
        "unified": ["--backbone", reasoner, "--variant", "unified", "--head_num_layers", str(sizes.head_layers),
                    "--max_new_tokens", str(sizes.max_new_tokens)],
    }  # fmt: skip
    # The student's reasoner is the unified backbone, with the same prompts and greedy decoding: the same traces (so
    # the student is trained before the unified head).
    traces = {"no-thinking": None, "teacher": oracle_train, **{name: os.path.join(root, "traces", name)
                                                               for name in ("zero-shot", "student")}}  # fmt: skip
    traces["unified"] = traces["student"]
    budget = ["--data_config", configs["embed"], "--per_device_batch_size", str(sizes.embed_batch),
              "--chunk_size", str(sizes.embed_batch), "--max_steps", str(sizes.embed_steps),
              "--learning_rate", str(sizes.embed_lr), "--lr_scheduler", "cosine",
              "--warmup_steps", str(sizes.embed_steps // 10), "--save_steps", "50", *common]  # fmt: skip
    models = {}
    for name, arguments in starts.items():
        folder, init = os.path.join(variants, name), os.path.join(variants, name, "init")
        if not stage_finished(folder):
            init_variant(init, arguments)
            if name in ("zero-shot", "student"):
                generate_traces(init, configs["embed"], traces[name], sizes)
        sides = ["--traces", traces[name], "--trace_sides", "query"] if traces[name] else ["--trace_sides", ""]
        if name == "unified":  # the head: the same N layers, trained on the frozen backbone
            dropout = ["--trace_dropout", str(sizes.head_trace_dropout)] if thinking else []
            models[name] = training_stage("training.train_head", folder,
                                          ["--model_path", init, *sides, *dropout, *budget],
                                          starting_points=(init,))  # fmt: skip
        else:
            models[name] = training_stage("training.train_embedder", folder, [
                "--model_path", init, "--top_layers", str(sizes.head_layers), *sides, *budget],
                starting_points=(init,))  # fmt: skip
    policy_files = {}
    if thinking is not None:
        stage = {"auto": "gate", "tasks": "think-tasks"}[thinking]
        policy_folder = os.path.join(variants, f"unified-{stage}")
        dev = write_dev_tasks(scene_tasks, sizes, int(common[common.index("--seed") + 1]))
        fit = {"auto": train_gate, "tasks": choose_think_tasks}[thinking]
        models["unified"] = fit(models["unified"], dev, policy_folder, sizes, common)
        policy_files = {f"runs/{stage}.json": os.path.join(policy_folder, "summary.json")}
    # The default model is the unified one as published: its assets (merged LoRA as factors, the head in bf16, the
    # gate) and the model rebuilt from them, which is what gets evaluated.
    trained = (*(["vision-cells"] if grid_cells else []), "vision-grid", "reasoner")
    stages = {**{name: os.path.join(root, name) for name in trained},
              "head": os.path.join(variants, "unified")}  # fmt: skip
    extract_assets(models["unified"], assets_dir,
                   extra_files={**part1_files, **stage_files(stages, root), **policy_files})  # fmt: skip
    models["unified"] = build_model(assets_dir, variant_model(root, "unified"))
    qa = os.path.join(root, "eval", "easy_vqa-unified.json")
    if not os.path.isfile(qa):
        run_stage("training.eval_easy_vqa", ["--model_path", models["unified"], "--output", qa, "--max_new_tokens",
                                             str(sizes.max_new_tokens), "--max_images", str(sizes.qa_images)])  # fmt: skip
    tasks_dir = os.path.join(scene_tasks, "test")
    results = {name: evaluate_variant(model, tasks_dir, results_file(root, name), name,
                                      oracle_test if name == "teacher" else None)
               for name, model in models.items()}  # fmt: skip
    for name in THINKING_VARIANTS:  # the same models without thinking: what each one's traces buy
        results[f"{name}-think-never"] = evaluate_variant(models[name], tasks_dir, results_file(root, name, "never"),
                                                          name, think="never")  # fmt: skip
    if thinking is not None:  # what the policy gives up: the same model thinking about every query
        # (`queries`, not `always`: under `always` the documents think too, which no variant here does)
        results["unified-think-queries"] = evaluate_variant(models["unified"], tasks_dir,
                                                            results_file(root, "unified", "queries"), "unified",
                                                            think="queries")  # fmt: skip
    for name in READERS:  # how each reasoner reads the test scenes: the quality of its traces
        if not os.path.isfile(reading_file(root, name)):
            run_stage("training.trace_quality", ["--model", models[name], "--tasks_dir", tasks_dir, "--output",
                                                 reading_file(root, name), "--queries_per_task",
                                                 str(sizes.reading_queries)])  # fmt: skip
    comparison = os.path.join(root, "comparison")
    run_stage("training.compare_variants", ["--run_dir", root, "--output", comparison,
                                            "--latency_queries", str(sizes.latency_queries)])  # fmt: skip
    files = {"easy_vqa.json": qa, COMPARISON: os.path.join(comparison, "comparison.md"),
             "results/comparison.json": os.path.join(comparison, "comparison.json"),
             PLOT: os.path.join(comparison, os.path.basename(PLOT)),
             **{f"results/{name}.json": path for name, path in results.items()},
             **{f"results/reading-{name}.json": reading_file(root, name) for name in READERS}}  # fmt: skip
    add_asset_files(assets_dir, files)
    print(f"trained parts of {models['unified']} stored in {assets_dir}")
    return build_model(assets_dir, variant_model(root, "unified"))  # now with the comparison in its card


def write_dev_tasks(scene_tasks: str, sizes: Sizes, seed: int) -> str:
    """`scene_tasks/dev/` once: `sizes.dev_rows` rows per scene task, drawn as the test split's (held-out
    combinations; seed + 2, where the test split has seed + 1) without any of its queries."""
    dev = os.path.join(scene_tasks, "dev")
    if not os.path.isdir(os.path.join(dev, "oracle-traces")):  # written last
        test = split_fingerprints(os.path.join(scene_tasks, "test"))
        write_test_tasks(dev, sizes.dev_rows, seed + 2, exclude=frozenset(test))
    return dev


def train_gate(model: str, tasks_dir: str, folder: str, sizes: Sizes, common: list[str]) -> str:
    """`training.train_gate` on `model` and the queries of `tasks_dir` into `folder` once (its threshold: the least
    thinking within `sizes.accuracy_tolerance` of the best held-out accuracy), made the model's default policy;
    returns the gated model's folder."""
    if not stage_finished(folder):
        seed = common[common.index("--seed") + 1]
        run_stage("training.train_gate", ["--model_path", model, "--tasks_dir", tasks_dir, "--output_dir", folder,
                                          "--accuracy_tolerance", str(sizes.accuracy_tolerance),
                                          "--max_queries", str(sizes.gate_queries), "--default_think", "auto",
                                          "--max_new_tokens", str(sizes.max_new_tokens), "--seed", seed])  # fmt: skip
    return os.path.join(folder, "model")


def choose_think_tasks(model: str, tasks_dir: str, folder: str, sizes: Sizes, common: list[str]) -> str:
    """`training.think_tasks` on `model` and every query of `tasks_dir` into `folder` once (the fewest trace tokens
    within `sizes.accuracy_tolerance` of every query thinking), made the model's default policy; returns its folder."""
    if not stage_finished(folder):
        run_stage("training.think_tasks", ["--model_path", model, "--tasks_dir", tasks_dir, "--output_dir", folder,
                                           "--accuracy_tolerance", str(sizes.accuracy_tolerance),
                                           "--max_new_tokens", str(sizes.max_new_tokens)])  # fmt: skip
    return os.path.join(folder, "model")


def stage_files(stages: dict[str, str], root: str) -> dict[str, str]:
    """The files committed beside the weights: each stage's settings and run summary."""
    files = {}
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
