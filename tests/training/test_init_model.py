"""training/init_model.py: a stock backbone folder (no embedding token) becomes a loadable TTE model folder."""

import numpy as np
import torch
import pytest
from transformers import AutoModel, Qwen2VLImageProcessor, Qwen2VLProcessor, Qwen2VLVideoProcessor

from tests.conftest import make_image
from training.tiny_models import CHAT_TEMPLATE, build_backbone, build_tokenizer
from training.init_model import main
from tte.processing_tte import EMBEDDING_TOKEN


def save_stock_backbone(name: str, folder) -> int:
    """A tiny random backbone saved the way Hub checkpoints are: its tokenizer has no `<|emb|>`."""
    tokenizer = build_tokenizer(with_embedding_token=False)
    build_backbone(name, tokenizer).save_pretrained(folder)
    if name == "llama":
        tokenizer.save_pretrained(folder)
    else:
        image_processor = Qwen2VLImageProcessor(patch_size=14, merge_size=2, min_pixels=28 * 28, max_pixels=56 * 56)
        Qwen2VLProcessor(image_processor=image_processor, tokenizer=tokenizer, chat_template=CHAT_TEMPLATE,
                         video_processor=Qwen2VLVideoProcessor(patch_size=14, merge_size=2)).save_pretrained(folder)  # fmt: skip
    return len(tokenizer)


@pytest.mark.parametrize("name, variant", [("qwen2_vl", "unified"), ("llama", "student")])
def test_init_model_adds_embedding_token_and_loads(tmp_path, name, variant):
    vocabulary = save_stock_backbone(name, tmp_path / "backbone")
    main(["--backbone", str(tmp_path / "backbone"), "--output_dir", str(tmp_path / "tte"), "--variant", variant,
          "--head_num_layers", "2", "--max_new_tokens", "4", "--dtype", "float32", "--max_pixels", "3136"])  # fmt: skip
    model = AutoModel.from_pretrained(tmp_path / "tte", trust_remote_code=True)
    assert model.config.variant == variant
    assert model.processor.tokenizer.convert_tokens_to_ids(EMBEDDING_TOKEN) == vocabulary  # a new, last row
    assert model.config.embedding_token_id == vocabulary
    inputs = ["a red square"] + ([{"text": "a cat", "image": make_image()}] if name != "llama" else [])
    embeddings, traces = model.embed(inputs, return_reasoning=True)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    assert all(traces)


def test_init_model_rejects_unknown_variant(tmp_path):
    with pytest.raises(ValueError, match="--variant 'giant' is not one of"):
        main(["--backbone", str(tmp_path), "--output_dir", str(tmp_path / "out"), "--variant", "giant"])


def test_init_model_help(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "--head_num_layers" in capsys.readouterr().out


def test_init_model_builds_a_variant_from_tte_folders(tmp_path, model_folder):
    # A trained stage seeds the compared variants: a student whose reasoner is a unified model's backbone.
    unified = AutoModel.from_pretrained(model_folder("unified"), trust_remote_code=True)
    main(["--backbone", model_folder("unified"), "--reasoner", model_folder("unified"), "--variant", "student",
          "--output_dir", str(tmp_path / "student"), "--dtype", "float32", "--max_new_tokens", "5"])  # fmt: skip
    student = AutoModel.from_pretrained(tmp_path / "student", trust_remote_code=True)
    assert student.config.variant == "student" and student.config.max_new_tokens == 5
    for name, tensor in unified.backbone.state_dict().items():
        assert torch.equal(student.reasoner.state_dict()[name], tensor), name
    assert student.processor.max_pixels == unified.processor.max_pixels  # the folder's own processor
    trace = unified.reason(unified.processor.parse_inputs(["a red square"]), max_new_tokens=5)
    assert student.reason(student.processor.parse_inputs(["a red square"]), max_new_tokens=5) == trace
