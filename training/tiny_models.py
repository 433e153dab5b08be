"""Tiny random-weight backbones and locally trained tokenizers, for the tests and the benchmark scripts (no Hub access
needed).

Nothing here is a trained model: every weight is random. The default tokenizer is a word-level tokenizer trained on a
small local corpus, so decoding generated ids and encoding the text again gives the same ids; `bpe=True` gives a
byte-level BPE tokenizer (as SmolLM2's and Qwen's), for which it often does not.
"""

import numpy as np
import torch
from PIL import Image
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    LlamaConfig,
    PreTrainedTokenizerFast,
    Qwen2_5_VLConfig,
    Qwen2VLConfig,
    Qwen2VLImageProcessor,
    Qwen2VLVideoProcessor,
    Qwen3VLConfig,
)

from tte.processing_tte import EMBEDDING_TOKEN, PROMPT_SETS


BACKBONES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "llama")
SPECIAL_TOKENS = [
    "<|endoftext|>", "[UNK]", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|image_pad|>", "<|video_pad|>", "<think>", "</think>", EMBEDDING_TOKEN,
]  # fmt: skip
CORPUS_EXTRA = (
    "system user assistant a an the cat dog red blue green yellow square circle triangle shape image photo text "
    "what is on table bus car tree sky colour of this picture question answer represent find retrieve given "
    "document page title chart number one two three four five six seven eight nine ten . , ? : !"
)
# ChatML, as Qwen and SmolLM2 use; list content renders images as a Qwen vision span.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tokenizer(with_embedding_token: bool = True, bpe: bool = False) -> PreTrainedTokenizerFast:
    """Train a word-level (or byte-level BPE) tokenizer on the prompt set and a few words (without `<|emb|>`, as a
    stock backbone's)."""
    special_tokens = SPECIAL_TOKENS if with_embedding_token else SPECIAL_TOKENS[:-1]
    # ecr-v1's prompts only: later prompt sets would change the word counts, hence every id and every tiny model's
    # random weights (their new words are unknown tokens here, which no test reads)
    corpus = list(PROMPT_SETS["ecr-v1"].values()) + [CORPUS_EXTRA]
    if bpe:
        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=special_tokens,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # fmt: skip
    else:
        tokenizer = Tokenizer(models.WordLevel(unk_token="[UNK]"))
        tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
        trainer = trainers.WordLevelTrainer(special_tokens=special_tokens)
    tokenizer.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="[UNK]",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=special_tokens[2:],
        chat_template=CHAT_TEMPLATE,
    )

def _text_kwargs(tokenizer, num_layers: int, max_position_embeddings: int) -> dict:
    return {
        "vocab_size": len(tokenizer),
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": num_layers,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": max_position_embeddings,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": None,
        "tie_word_embeddings": False,
    }


def _vision_token_kwargs(tokenizer) -> dict:
    ids = tokenizer.convert_tokens_to_ids
    return {
        "image_token_id": ids("<|image_pad|>"),
        "video_token_id": ids("<|video_pad|>"),
        "vision_start_token_id": ids("<|vision_start|>"),
        "vision_end_token_id": ids("<|vision_end|>"),
    }


def build_backbone_config(name: str, tokenizer, num_layers: int = 4, max_position_embeddings: int = 4096):
    """Config of a tiny backbone of family `name` (one of `BACKBONES`)."""
    text = _text_kwargs(tokenizer, num_layers, max_position_embeddings)
    mrope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [1, 1, 2]}  # head_dim 8 -> 4 pairs
    if name == "llama":
        return LlamaConfig(**text)
    if name == "qwen2_vl":
        vision = {"depth": 1, "embed_dim": 32, "hidden_size": 32, "num_heads": 2, "patch_size": 14}
        return Qwen2VLConfig(text_config={**text, "rope_parameters": mrope}, vision_config=vision,
                             **_vision_token_kwargs(tokenizer))  # fmt: skip
    if name == "qwen2_5_vl":
        vision = {"depth": 1, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "out_hidden_size": 32,
                  "patch_size": 14, "window_size": 56, "fullatt_block_indexes": [0]}  # fmt: skip
        return Qwen2_5_VLConfig(text_config={**text, "rope_parameters": mrope}, vision_config=vision,
                                **_vision_token_kwargs(tokenizer))  # fmt: skip
    if name == "qwen3_vl":
        vision = {"depth": 1, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "out_hidden_size": 32,
                  "patch_size": 14, "num_position_embeddings": 64, "deepstack_visual_indexes": [0]}  # fmt: skip
        mrope3 = {**mrope, "mrope_interleaved": True}
        return Qwen3VLConfig(text_config={**text, "head_dim": 8, "rope_parameters": mrope3}, vision_config=vision,
                             **_vision_token_kwargs(tokenizer))  # fmt: skip
    raise ValueError(f"unknown backbone {name!r}; choose one of {BACKBONES}")


def build_backbone(name: str, tokenizer, num_layers: int = 4, seed: int = 0, max_position_embeddings: int = 4096):
    """A tiny random-weight generative backbone, in fp32 eval mode."""
    torch.manual_seed(seed)
    config = build_backbone_config(name, tokenizer, num_layers, max_position_embeddings)
    auto_class = AutoModelForCausalLM if name == "llama" else AutoModelForImageTextToText
    return auto_class.from_config(config, attn_implementation="sdpa").eval()


def build_processor(name: str, bpe: bool = False):
    """A `TTEProcessor` with a small pixel budget (text-only for the llama backbone)."""
    from tte.processing_tte import VIDEO_LAYOUTS, TTEProcessor

    image_processor = Qwen2VLImageProcessor(patch_size=14, merge_size=2, temporal_patch_size=2,
                                            min_pixels=28 * 28, max_pixels=56 * 56)  # fmt: skip
    video_processor = Qwen2VLVideoProcessor(patch_size=14, merge_size=2, temporal_patch_size=2)
    return TTEProcessor(image_processor=image_processor, tokenizer=build_tokenizer(bpe=bpe),
                        video_processor=video_processor, chat_template=CHAT_TEMPLATE, max_pixels=56 * 56,
                        text_only=name == "llama",
                        video_layout=name if name in VIDEO_LAYOUTS else "qwen2_vl")  # fmt: skip


def build_tte(name: str = "qwen2_vl", variant: str = "unified", num_layers: int = 4, head_num_layers: int = 2,
              max_new_tokens: int = 6, seed: int = 0, max_position_embeddings: int = 4096, bpe: bool = False,
              **config_kwargs):  # fmt: skip
    """A tiny random-weight `TTEModel` with its processor attached (`max_position_embeddings`: its context window)."""
    from tte.modeling_tte import TTEModel

    processor = build_processor(name, bpe)
    backbone = build_backbone(name, processor.tokenizer, num_layers, seed, max_position_embeddings)
    reasoner = (build_backbone(name, processor.tokenizer, num_layers, seed + 1, max_position_embeddings)
                if variant == "student" else None)  # fmt: skip
    if variant == "unified":
        config_kwargs["head_num_layers"] = head_num_layers
    return TTEModel.from_backbone(backbone, processor, variant=variant, reasoner=reasoner,
                                  max_new_tokens=max_new_tokens, **config_kwargs)  # fmt: skip


def make_image(seed: int = 0, size: tuple[int, int] = (50, 40)) -> Image.Image:
    """A random-noise RGB image, the same for the same seed."""
    pixels = np.random.RandomState(seed).randint(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels)
