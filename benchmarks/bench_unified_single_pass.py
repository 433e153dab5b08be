"""Time the unified variant's single pass against generate-then-recompute, side by side in one run.

Both paths give the same embeddings (tests/test_modeling_tte.py); this measures what skipping the second trunk pass
saves. The model is random-weight (built from a config), sized by the flags; timings are of the mechanism, not of a
trained model. Usage:

    python benchmarks/bench_unified_single_pass.py --device cpu --layers 8 --hidden 256 --batch 8 --max-new-tokens 32
"""

import argparse
import os
import sys
import time

import torch


sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from training.tiny_models import build_backbone_config, build_processor  # noqa: E402
from tte.modeling_tte import TTEModel, build_generator  # noqa: E402


def build_model(args):
    processor = build_processor("qwen2_vl")
    config = build_backbone_config("qwen2_vl", processor.tokenizer, num_layers=args.layers)
    text = config.text_config
    text.hidden_size, text.intermediate_size = args.hidden, args.hidden * 4
    text.num_attention_heads, text.num_key_value_heads = args.hidden // 64, max(args.hidden // 256, 1)
    text.rope_parameters["mrope_section"] = [8, 12, 12]  # head_dim 64 -> 32 rotary pairs
    config.vision_config.hidden_size = args.hidden
    torch.manual_seed(0)
    backbone = build_generator(config)
    model = TTEModel.from_backbone(backbone, processor, "unified", head_num_layers=args.head_layers,
                                   max_new_tokens=args.max_new_tokens)  # fmt: skip
    return model.to(device=args.device, dtype=getattr(torch, args.dtype))


def timed(fn, device: str, repeats: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--head-layers", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--prompt-words", type=int, default=200, help="words of input text per item")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    model = build_model(args)
    words = "the red square is on the table and the blue circle is under the tree".split()
    inputs = [" ".join(words[(i + j) % len(words)] for j in range(args.prompt_words)) for i in range(args.batch)]
    _, traces = model.embed(inputs, return_reasoning=True, batch_size=args.batch)

    def generate_then_recompute():
        model.embed(inputs, reasoning=model.reason(model.processor.parse_inputs(inputs)), batch_size=args.batch)

    single = timed(lambda: model.embed(inputs, batch_size=args.batch), args.device, args.repeats)
    twice = timed(generate_then_recompute, args.device, args.repeats)
    print(f"device={args.device} dtype={args.dtype} layers={args.layers} head_layers={args.head_layers} "
          f"hidden={args.hidden} batch={args.batch} prompt_words={args.prompt_words} "
          f"max_new_tokens={args.max_new_tokens}")  # fmt: skip
    print(f"single pass (generate + head)         : {single * 1000:8.1f} ms")
    print(f"generate, then recompute trunk + head : {twice * 1000:8.1f} ms")
    print(f"ratio recompute / single pass         : {twice / single:8.3f}")


if __name__ == "__main__":
    main()
