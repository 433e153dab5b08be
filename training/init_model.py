"""Build the first TTE model folder from a pretrained generative backbone (the `tte-init` of the other scripts).

Loads the backbone (a Qwen-VL model `AutoModelForImageTextToText` loads, or a text-only causal LM) and its
processor / tokenizer, adds the embedding token `<|emb|>` (resizing the token embeddings when the vocabulary has no
spare row), wraps them as a `TTEModel` of the chosen variant and saves it. For `unified` the head starts as a copy of
the backbone's last N decoder layers; for `student` the reasoner starts as a copy of the backbone (or `--reasoner`).
Nothing is trained here.

`--backbone` and `--reasoner` may also be TTE model folders: their generator is used (a unified model's backbone, a
student's reasoner) with the folder's own processor, so one trained stage can seed the variants compared later
(e.g. a student whose reasoner is a fine-tuned unified backbone).

    python -m training.init_model --backbone Qwen/Qwen2-VL-2B-Instruct --variant unified --output_dir tte-init
"""

import json
import os
from dataclasses import dataclass, field

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoProcessor,
    AutoTokenizer,
    HfArgumentParser,
    Qwen2VLImageProcessor,
    Qwen2VLVideoProcessor,
)

from tte.configuration_tte import THINK_POLICIES, VARIANTS, TTEConfig
from tte.modeling_tte import TTEModel, is_vision_language
from tte.processing_tte import DEFAULT_MAX_PIXELS, EMBEDDING_TOKEN, TTEProcessor


@dataclass
class InitArgs:
    backbone: str = field(metadata={"help": "Folder or Hub id of the generative backbone, with its processor."})
    output_dir: str = field(metadata={"help": "Where the TTE model folder is written."})
    variant: str = field(default="unified", metadata={"help": f"One of {VARIANTS}."})
    reasoner: str | None = field(default=None, metadata={"help": "student: the reasoner's backbone (default: same)."})
    head_num_layers: int = field(default=8, metadata={"help": "unified: decoder layers copied into the head (N)."})
    max_new_tokens: int = field(default=128, metadata={"help": "Trace length bound."})
    think: str = field(default="queries", metadata={"help": f"Default thinking policy, one of {THINK_POLICIES}."})
    matryoshka_dims: list[int] = field(default_factory=list, metadata={"help": "Dimensions truncate_dim accepts."})
    max_pixels: int = field(default=DEFAULT_MAX_PIXELS, metadata={"help": "Resize budget per image (pixels)."})
    prompt_set_version: str = field(default="ecr-v1", metadata={"help": "ECR prompts: ecr-v1, or ecr-v2 (ecr-v1 and a "
                                                                        "video family)."})  # fmt: skip
    dtype: str = field(default="bfloat16", metadata={"help": "Weight dtype: float32, bfloat16 or float16."})


# The video token layout (`processing_tte.VIDEO_LAYOUTS`) of each backbone family.
VIDEO_LAYOUT_OF = {"qwen2_vl": "qwen2_vl", "qwen2_5_vl": "qwen2_5_vl", "qwen3_vl": "qwen3_vl",
                   "qwen3_vl_moe": "qwen3_vl"}


def is_tte_folder(path: str) -> bool:
    """Whether `path` is a TTE model folder (read from its config.json, without running any code it holds)."""
    config = os.path.join(path, "config.json")
    if not os.path.isfile(config):
        return False
    with open(config) as handle:
        return json.load(handle).get("model_type") == TTEConfig.model_type


def load_generator(path: str, dtype: torch.dtype):
    """The generative model of `path`: a backbone folder, or the generator of a TTE model folder."""
    if is_tte_folder(path):
        return TTEModel.from_pretrained(path, dtype=dtype).generator()
    auto_class = AutoModelForImageTextToText if is_vision_language(AutoConfig.from_pretrained(path)) else AutoModelForCausalLM
    return auto_class.from_pretrained(path, dtype=dtype)


def build_processor(args: InitArgs, vision_language: bool) -> TTEProcessor:
    """The backbone's tokenizer (plus `<|emb|>`), image processor and chat template as a `TTEProcessor`; a TTE
    folder's own processor as it is."""
    if is_tte_folder(args.backbone):
        return TTEProcessor.from_pretrained(args.backbone, trust_remote_code=False)  # our class; no folder code
    video_layout = VIDEO_LAYOUT_OF.get(AutoConfig.from_pretrained(args.backbone).model_type, "qwen2_vl")
    if vision_language:
        source = AutoProcessor.from_pretrained(args.backbone)
        tokenizer, image_processor, video_processor = source.tokenizer, source.image_processor, source.video_processor
        chat_template = source.chat_template or tokenizer.chat_template
    else:  # transformers needs every sub-processor; a text-only model keeps defaults it never uses
        tokenizer = AutoTokenizer.from_pretrained(args.backbone)
        image_processor, video_processor = Qwen2VLImageProcessor(), Qwen2VLVideoProcessor()
        chat_template = tokenizer.chat_template
    if chat_template is None:
        raise ValueError(f"{args.backbone!r} has no chat template; the reasoning prompt needs one")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token  # left padding for batched generation needs a pad token
    tokenizer.add_tokens([EMBEDDING_TOKEN], special_tokens=True)
    return TTEProcessor(image_processor=image_processor, tokenizer=tokenizer, video_processor=video_processor,
                        chat_template=chat_template, max_pixels=args.max_pixels, text_only=not vision_language,
                        prompt_set_version=args.prompt_set_version, video_layout=video_layout)  # fmt: skip


def fit_vocabulary(model, vocabulary_size: int) -> None:
    """Grow the token embeddings when the tokenizer outgrew them (Qwen checkpoints already have spare rows)."""
    if model.get_input_embeddings().num_embeddings < vocabulary_size:
        model.resize_token_embeddings(vocabulary_size)


def main(argv: list[str] | None = None) -> str:
    (args,) = HfArgumentParser(InitArgs).parse_args_into_dataclasses(argv)
    if args.variant not in VARIANTS:
        raise ValueError(f"--variant {args.variant!r} is not one of {VARIANTS}")
    dtype = getattr(torch, args.dtype)
    backbone = load_generator(args.backbone, dtype)
    processor = build_processor(args, is_vision_language(backbone.config))
    fit_vocabulary(backbone, len(processor.tokenizer))
    reasoner = None
    if args.variant == "student":
        reasoner = load_generator(args.reasoner or args.backbone, dtype)
        fit_vocabulary(reasoner, len(processor.tokenizer))
    model = TTEModel.from_backbone(
        backbone, processor, variant=args.variant, reasoner=reasoner, max_new_tokens=args.max_new_tokens,
        think=args.think, matryoshka_dims=args.matryoshka_dims or None,
        **({"head_num_layers": args.head_num_layers} if args.variant == "unified" else {}),
    )  # fmt: skip
    model.save_pretrained(args.output_dir)
    print(f"saved a {args.variant} TTE model built from {args.backbone} to {args.output_dir} (not trained yet)")
    return args.output_dir


if __name__ == "__main__":
    main()
