"""`tte`: embed texts, images and videos with a TTE model folder, show the reasoning traces, rank candidates.

Examples:
    tte embed MODEL_DIR "a red square" --image cat.png --show-reasoning
    tte rank MODEL_DIR yellow blue red --query "what colour is the bus?" --query-image bus.jpg
"""

import argparse
import json
import os
import sys

import numpy as np

from tte.configuration_tte import THINK_POLICIES


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tte", description="Think-Then-Embed: reason about inputs, then embed them.")
    commands = parser.add_subparsers(dest="command", required=True)
    embed = commands.add_parser("embed", help="embed texts and images; prints one JSON line per input")
    embed.add_argument("model", help="model folder (or Hub repo id) saved by TTEModel.save_pretrained")
    embed.add_argument("texts", nargs="*", help="texts to embed")
    embed.add_argument("--image", action="append", default=[], help="image path to embed (repeatable)")
    embed.add_argument("--video", action="append", default=[], help="video file or folder of frames to embed "
                       "(repeatable)")  # fmt: skip
    embed.add_argument("--side", choices=["query", "document"], default="query")
    embed.add_argument("--show-reasoning", action="store_true", help="print each input's trace")
    embed.add_argument("--full-vector", action="store_true", help="print whole vectors, not the first 8 values")
    rank = commands.add_parser("rank", help="rank candidate texts (and images) against one query")
    rank.add_argument("model")
    rank.add_argument("candidates", nargs="*", help="candidate texts")
    rank.add_argument("--query", required=True, help="query text")
    rank.add_argument("--query-image", help="image that goes with the query")
    rank.add_argument("--query-video", help="video (file or folder of frames) that goes with the query")
    rank.add_argument("--candidate-image", action="append", default=[], help="candidate image path (repeatable)")
    rank.add_argument("--candidate-video", action="append", default=[], help="candidate video (repeatable)")
    rank.add_argument("--show-reasoning", action="store_true")
    for sub in (embed, rank):
        sub.add_argument("--instruction", help="task instruction applied to every input")
        sub.add_argument("--task", help="ECR prompt family, e.g. retrieval, vqa, classification")
        sub.add_argument("--think", choices=THINK_POLICIES,
                         help="thinking policy (default: the model's); auto needs a model with a gate, tasks one "
                              "with think_tasks")
        sub.add_argument("--max-new-tokens", type=int, help="trace length bound")
        sub.add_argument("--num-frames", type=int, help="frames kept per video (default the model's)")
        sub.add_argument("--allow-urls", action="store_true", help="allow http(s) image URLs")
        sub.add_argument("--trace-cache", help="trace cache file (SQLite): reuse the traces it holds, store new ones")
        sub.add_argument("--stats", action="store_true", help="print what the call cost as a last JSON line "
                         "{\"stats\": ...}: inputs that thought, cache hits, generated tokens, seconds")
    return parser


def load_model(path: str, allow_urls: bool):
    from transformers import AutoModel

    # A Hub repo id is "owner/name"; anything else that is not a folder here is a missing folder, not a Hub lookup.
    if not os.path.isdir(path) and (os.path.isabs(path) or path.startswith(".") or path.count("/") != 1):
        raise ValueError(f"model folder {path!r} does not exist")
    try:
        model = AutoModel.from_pretrained(path, trust_remote_code=True).eval()
    except OSError as error:
        raise ValueError(f"cannot load model {path!r}: {error}") from None
    model.processor.allow_urls = allow_urls
    return model


def options(args) -> dict:
    sampling = {"num_frames": args.num_frames} if args.num_frames is not None else None
    return {"instruction": args.instruction, "task": args.task, "think": args.think,
            "max_new_tokens": args.max_new_tokens, "trace_cache": args.trace_cache, "return_stats": True,
            "video_sampling": sampling}  # fmt: skip


def print_stats(args, stats) -> None:
    if args.stats:
        print(json.dumps({"stats": stats.to_dict()}))


def run_embed(args) -> None:
    inputs = list(args.texts) + [{"image": path} for path in args.image] + [{"video": path} for path in args.video]
    if not inputs:
        raise SystemExit("tte embed: give at least one text, --image or --video")
    model = load_model(args.model, args.allow_urls)
    embeddings, traces, stats = model.embed(inputs, side=args.side, return_reasoning=True, **options(args))
    for item, vector, trace in zip(inputs, embeddings, traces):
        row = {"input": item, "embedding": [round(float(v), 4) for v in (vector if args.full_vector else vector[:8])]}
        if args.show_reasoning:
            row["reasoning"] = trace
        print(json.dumps(row))
    print_stats(args, stats)


def run_rank(args) -> None:
    candidates = list(args.candidates) + [{"image": path} for path in args.candidate_image] + [
        {"video": path} for path in args.candidate_video]  # fmt: skip
    if not candidates:
        raise SystemExit("tte rank: give at least one candidate")
    model = load_model(args.model, args.allow_urls)
    query = {"text": args.query, **({"image": args.query_image} if args.query_image else {}),
             **({"video": args.query_video} if args.query_video else {})}  # fmt: skip
    query_vector, query_trace, query_stats = model.encode_query([query], return_reasoning=True, **options(args))
    documents, document_traces, stats = model.encode_document(candidates, return_reasoning=True, **options(args))
    scores = documents @ query_vector[0]
    if args.show_reasoning:
        print(json.dumps({"query_reasoning": query_trace[0]}))
    for rank, index in enumerate(np.argsort(-scores, kind="stable"), start=1):
        row = {"rank": rank, "score": round(float(scores[index]), 4), "candidate": candidates[index]}
        if args.show_reasoning:
            row["reasoning"] = document_traces[index]
        print(json.dumps(row))
    print_stats(args, query_stats + stats)


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        run_embed(args) if args.command == "embed" else run_rank(args)
    except (ValueError, TypeError) as error:
        print(f"tte {args.command}: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


__all__ = ["main", "build_parser"]


if __name__ == "__main__":
    main()
