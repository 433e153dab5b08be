"""The default model, TTE-mini, built from the committed parts in assets/tte-mini (as `scripts/demo.sh` builds it).

These tests use the real trained weights: they check the build and what the model can do, not the training code.
"""

import os

import numpy as np
import pytest
from safetensors.torch import load_file

from tests.training.helpers import REPO_ROOT
from training.assets import build_model, read_manifest, state_digest
from training.eval_easy_vqa import DESCRIBE, image_labels, names_scene


ASSETS = os.path.join(REPO_ROOT, "assets", "tte-mini")


@pytest.fixture(scope="module")
def tte_mini(tmp_path_factory) -> str:
    return build_model(ASSETS, str(tmp_path_factory.mktemp("models") / "tte-mini"))


def test_assets_are_small_and_hashed():
    manifest = read_manifest(ASSETS)  # checks every file's sha256
    sizes = [os.path.getsize(os.path.join(ASSETS, name)) for name in manifest["files"]]
    assert sum(sizes) <= 64 * 2**20


def test_every_weight_equals_the_trained_models(tte_mini):
    assert state_digest(load_file(os.path.join(tte_mini, "model.safetensors"))) == read_manifest(ASSETS)["model_digest"]


def test_traces_name_colour_and_shape_of_held_out_easy_vqa_images(tte_mini):
    from easy_vqa import get_test_image_paths
    from transformers import AutoModel

    model = AutoModel.from_pretrained(tte_mini, trust_remote_code=True).eval()
    paths, labels = get_test_image_paths(), image_labels()
    image_ids = sorted(labels)[:20]
    _, traces = model.embed([{"image": paths[i], "instruction": DESCRIBE} for i in image_ids], think="always",
                            return_reasoning=True)  # fmt: skip
    named = [names_scene(trace, *labels[i]) for i, trace in zip(image_ids, traces)]
    assert sum(named) >= 18, list(zip(image_ids, traces))


def test_sentence_transformers_gives_the_automodel_vectors(tte_mini):
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel

    texts = ["a red triangle", "a blue circle"]
    st_vectors = SentenceTransformer(tte_mini, trust_remote_code=True).encode_document(texts)
    vectors = AutoModel.from_pretrained(tte_mini, trust_remote_code=True).encode_document(texts)
    assert np.abs(st_vectors - vectors).max() <= 1e-5
