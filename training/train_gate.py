"""Fit the `think="auto"` gate of a trained TTE model: think only where the trace helps.

Each query is labelled by whether its own trace (the model's reasoner, greedy) improves its positive's margin under
the trained embedder. The queries come from one of two places:
- training pairs (`--data_config`): the margin is the query's cosine with its positive minus its highest cosine with
  another target of the sample (a target with the positive's content is not a negative);
- `tte-eval` user tasks (`--tasks_dir`), such as a development split drawn like the test split but apart from it:
  the margin is the query's cosine with its best positive candidate minus its highest cosine with another candidate
  of its row's pool, so a held-out query is right exactly when the harness would score it right (hit@1). Queries the
  embedder never trained on show where the trace helps after training, which training pairs do not: there the trace
  helps almost every query, because the embedder learnt it on them.

The gate (`TTEGate`, a logistic probe on a state the model computes anyway) is fitted on part of the queries. Its
threshold is chosen on the held-out rest: for the best accuracy (a held-out query is right when its margin is
positive); or for the least thinking within `--accuracy_tolerance` of that accuracy; or for a think
rate (`--think_rate`). The model is exported with the gate and `config.gate_threshold`; `summary.json` gives the
held-out accuracy, think rate and share of trace tokens of never / always / auto.

Train the embedder or head with `--trace_dropout` first, so that a query embedded without its trace lands in the
same space as one embedded with it.

    python -m training.train_gate --model_path runs/unified/model --data_config data.yaml --output_dir runs/gate \
        --max_queries 512 [--think_rate 0.5] [--default_think auto]
    python -m training.train_gate --model_path runs/unified/model --tasks_dir data/scene-tasks/dev ...
"""

import json
import logging
import os
import random
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F

from training.checkpoint import export_model, write_atomic
from training.data import PairDataset, content_id, load_sources
from training.loop import make_accelerator, parse_settings, setup_logging
from tte_eval.user_tasks import load_user_tasks
from tte.configuration_tte import THINK_POLICIES
from tte.modeling_tte import TTEGate, TTEModel


logger = logging.getLogger("training")
ACCURACY = {  # what "right" means in the summary, per source of the queries
    "pairs": "a query is right when its positive beats every other target of the sample (targets of the positive's "
             "content excepted)",
    "tasks": "a query is right when its best positive candidate beats every other candidate of its row's pool (hit@1)",
}  # fmt: skip


@dataclass
class GateSettings:
    model_path: str = field(metadata={"help": "A trained TTE model folder with its own reasoner (unified, student)."})
    output_dir: str = field(metadata={"help": "Run folder: model/ (with the gate) and summary.json."})
    data_config: str | None = field(default=None, metadata={"help": "YAML/JSON data config of training pairs (see "
                                    "training/data.py); or --tasks_dir."})  # fmt: skip
    tasks_dir: str | None = field(default=None, metadata={"help": "A tte-eval user tasks folder whose queries label "
                                  "the gate against their rows' candidates (e.g. a development split); or "
                                  "--data_config."})  # fmt: skip
    max_queries: int = field(default=512, metadata={"help": "Queries sampled for labels and fitting."})
    held_out: float = field(default=0.25, metadata={"help": "Share of the sampled queries that choose the threshold."})
    think_rate: float | None = field(default=None, metadata={"help": "Choose the threshold for this share of held-out "
                                     "queries thinking, not for the best held-out accuracy."})  # fmt: skip
    accuracy_tolerance: float = field(default=0.0, metadata={"help": "Choose, among the thresholds whose held-out "
                                      "accuracy is within this much (a fraction) of the best, the one that thinks least "
                                      "(0: the best accuracy)."})  # fmt: skip
    steps: int = field(default=500, metadata={"help": "Full-batch optimizer steps of the logistic fit."})
    learning_rate: float = field(default=0.01, metadata={"help": "Adam learning rate of the fit."})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay of the fit."})
    batch_size: int = field(default=16, metadata={"help": "Inputs per embed / generate call."})
    max_new_tokens: int | None = field(default=None, metadata={"help": "Trace bound (default: the model's)."})
    default_think: str | None = field(default=None, metadata={"help": "Also make this the model's default policy "
                                      "(e.g. auto)."})  # fmt: skip
    seed: int = field(default=0, metadata={"help": "Seed of the sample, the split and the gate's initialisation."})

    def __post_init__(self):
        if (self.data_config is None) == (self.tasks_dir is None):
            raise ValueError("give exactly one of --data_config (training pairs) and --tasks_dir (tte-eval user tasks)")
        if self.max_queries < 4:
            raise ValueError(f"--max_queries must be >= 4, got {self.max_queries}")
        if not 0.0 < self.held_out < 1.0:
            raise ValueError(f"--held_out must be in (0, 1), got {self.held_out}")
        if self.think_rate is not None and not 0.0 <= self.think_rate <= 1.0:
            raise ValueError(f"--think_rate must be in [0, 1], got {self.think_rate}")
        if not 0.0 <= self.accuracy_tolerance < 1.0:
            raise ValueError(f"--accuracy_tolerance must be in [0, 1), got {self.accuracy_tolerance}")
        if self.default_think is not None and self.default_think not in THINK_POLICIES:
            raise ValueError(f"--default_think {self.default_think!r} is not one of {THINK_POLICIES}")


@dataclass
class Margins:
    """Sampled queries, their margins with and without their own traces, the traces' token ids, and (for user tasks)
    each query's task name."""

    queries: list[dict]
    with_trace: torch.Tensor
    without_trace: torch.Tensor
    trace_ids: list
    tasks: list[str] | None = None


def margins(queries: torch.Tensor, targets: torch.Tensor, target_ids: list[int]) -> torch.Tensor:
    """Per query i: cos(query i, target i) minus its highest cosine with a target of other content."""
    scores = queries @ targets.T
    ids = torch.tensor(target_ids)
    same_content = ids[:, None] == ids[None, :]  # includes the positive itself
    negatives = scores.masked_fill(same_content.to(scores.device), float("-inf"))
    return scores.diagonal() - negatives.max(dim=1).values


def fit_gate(model: TTEModel, features: torch.Tensor, labels: torch.Tensor, settings: GateSettings) -> TTEGate:
    """A logistic probe: full-batch AdamW on class-balanced binary cross-entropy."""
    torch.manual_seed(settings.seed)
    gate = TTEGate(model.config).to(features.device, torch.float32)
    optimizer = torch.optim.AdamW(gate.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay)
    positives = labels.sum().clamp(min=1)
    pos_weight = (len(labels) - positives).clamp(min=1) / positives
    for _ in range(settings.steps):
        optimizer.zero_grad()
        loss = F.binary_cross_entropy_with_logits(gate(features), labels.float(), pos_weight=pos_weight)
        loss.backward()
        optimizer.step()
    return gate.eval()


def choose_threshold(logits: torch.Tensor, right_with: torch.Tensor, right_without: torch.Tensor,
                     think_rate: float | None, tolerance: float = 0.0) -> float:  # fmt: skip
    """The held-out threshold: for `think_rate`, the logit quantile that lets that share think; else the one that
    thinks least among those whose held-out accuracy is within `tolerance` of the best (the thinking queries of a
    higher threshold are a subset of a lower one's, so it also generates the fewest trace tokens)."""
    ordered = logits.sort().values
    if think_rate is not None:
        thinking = round(think_rate * len(ordered))
        return float(ordered[len(ordered) - thinking] - 1e-6) if thinking else float(ordered[-1] + 1.0)
    # Candidates: below every logit (all think), between neighbours, above every logit (none thinks).
    candidates = torch.cat([ordered[:1] - 1.0, (ordered[1:] + ordered[:-1]) / 2, ordered[-1:] + 1.0])
    accuracies = [torch.where(logits > threshold, right_with, right_without).float().mean().item()
                  for threshold in candidates.tolist()]  # fmt: skip
    floor = max(accuracies) - tolerance - 1e-9
    return max(threshold for threshold, accuracy in zip(candidates.tolist(), accuracies) if accuracy >= floor)


def policy_report(logits, threshold, right_with, right_without, tokens) -> dict:
    thinks = logits > threshold
    return {
        "never": right_without.float().mean().item(),
        "always": right_with.float().mean().item(),
        "auto": torch.where(thinks, right_with, right_without).float().mean().item(),
        "auto_think_rate": thinks.float().mean().item(),
        "auto_trace_tokens_share": (tokens[thinks].sum() / tokens.sum().clamp(min=1)).item(),
        "best_per_query": (right_with | right_without).float().mean().item(),
    }


def pair_margins(settings: GateSettings, embed) -> Margins:
    """Sampled training pairs' queries, their margins with and without their traces (see `margins`), and the traces'
    token ids."""
    dataset = PairDataset(load_sources(settings.data_config))
    chosen = random.Random(settings.seed).sample(range(len(dataset)), min(settings.max_queries, len(dataset)))
    examples = [dataset[index] for index in chosen]
    queries = [example.inputs["query"] for example in examples]
    positives = [example.inputs["positive"] for example in examples]
    logger.info("embedding %d queries with and without their traces", len(queries))
    targets = embed(positives, side="document", think=False)
    target_ids = [content_id(positive, "") for positive in positives]
    with_trace, trace_ids = embed(queries, side="query", think=True, return_reasoning="ids")
    margin_with = margins(with_trace, targets, target_ids)
    margin_without = margins(embed(queries, side="query", think=False), targets, target_ids)
    return Margins(queries, margin_with, margin_without, trace_ids)


def task_margins(settings, embed) -> Margins:
    """Sampled user-task queries (`settings.tasks_dir`, `max_queries`, `seed`), their margins with and without their traces (best positive candidate minus best
    other candidate of the row's pool, `TaskData.pool`: a positive margin is a hit@1), and the traces' token ids."""
    rows = [(task.data, row) for task in load_user_tasks(settings.tasks_dir) for row in task.data.rows]
    chosen = [rows[i] for i in random.Random(settings.seed).sample(range(len(rows)), min(settings.max_queries,
                                                                                          len(rows)))]  # fmt: skip
    queries = [row.query.model_input() for _, row in chosen]
    logger.info("embedding %d queries with and without their traces", len(queries))
    candidates = {}  # (task, candidate id) -> its input, each embedded once
    for task, row in chosen:
        pool = {candidate.cand_id: candidate for candidate in (*task.candidates, *row.candidates)}
        candidates.update({(task.spec.name, cand_id): pool[cand_id].item.model_input() for cand_id in task.pool(row)})
    keys = list(candidates)
    vectors = dict(zip(keys, embed([candidates[key] for key in keys], side="document", think=False)))
    with_trace, trace_ids = embed(queries, side="query", think=True, return_reasoning="ids")
    margin_with, margin_without = [], []
    for query_with, query_without, (task, row) in zip(with_trace, embed(queries, side="query", think=False), chosen):
        pool = task.pool(row)
        scores = torch.stack([vectors[(task.spec.name, cand_id)] for cand_id in pool])
        positive = torch.tensor([cand_id in row.labels for cand_id in pool], device=scores.device)
        for query, out in ((query_with, margin_with), (query_without, margin_without)):
            similarity = scores @ query
            out.append(similarity[positive].max() - similarity[~positive].max())
    return Margins(queries, torch.stack(margin_with), torch.stack(margin_without), trace_ids,
                   [task.spec.name for task, _ in chosen])


def labelling_model(settings) -> tuple:
    """The accelerator, the trained model (`settings.model_path`) on its device, and `embed` at the settings'
    `batch_size` and `max_new_tokens`, returning tensors: what labels queries by their margins."""
    accelerator = make_accelerator()
    setup_logging(accelerator)
    model = TTEModel.from_pretrained(settings.model_path).to(accelerator.device).eval()
    embed = lambda inputs, **kwargs: model.embed(inputs, batch_size=settings.batch_size, convert_to_tensor=True,
                                                 max_new_tokens=settings.max_new_tokens, **kwargs)  # fmt: skip
    return accelerator, model, embed


def main(argv: list[str] | None = None) -> str:
    settings = parse_settings(GateSettings, argv)
    accelerator, model, embed = labelling_model(settings)
    labelled = (task_margins if settings.tasks_dir is not None else pair_margins)(settings, embed)
    queries, trace_ids = labelled.queries, labelled.trace_ids
    margin_with, margin_without = labelled.with_trace, labelled.without_trace
    labels = margin_with > margin_without
    features = model.gate_features(queries, batch_size=settings.batch_size)
    split = int(round(len(queries) * (1 - settings.held_out)))
    gate = fit_gate(model, features[:split], labels[:split], settings)
    with torch.no_grad():
        logits = gate(features)
    right_with, right_without = margin_with > 0, margin_without > 0
    tokens = torch.tensor([len(ids) for ids in trace_ids], device=logits.device)
    threshold = choose_threshold(logits[split:], right_with[split:], right_without[split:], settings.think_rate,
                                 settings.accuracy_tolerance)  # fmt: skip
    model.gate = gate.to(model.dtype)
    model.config.gate_threshold = threshold
    if settings.default_think is not None:
        model.config.think = settings.default_think
    summary = {
        "settings": asdict(settings),
        "queries": {"fit": split, "held_out": len(queries) - split},
        "label_think_helps": {"fit": labels[:split].float().mean().item(),
                              "held_out": labels[split:].float().mean().item()},
        "trace_tokens_per_query": sum(map(len, trace_ids)) / len(trace_ids),
        "threshold": threshold,
        "held_out": policy_report(logits[split:], threshold, right_with[split:], right_without[split:], tokens[split:]),
        "fit": policy_report(logits[:split], threshold, right_with[:split], right_without[:split], tokens[:split]),
        "accuracy": ACCURACY["tasks" if settings.tasks_dir is not None else "pairs"],
    }  # fmt: skip
    # The summary first: a finished export (what a resumed recipe checks) then always has its summary.
    os.makedirs(settings.output_dir, exist_ok=True)
    write_atomic(os.path.join(settings.output_dir, "summary.json"), json.dumps(summary, indent=2))
    folder = export_model(accelerator, model, settings.output_dir)
    logger.info("gate: threshold %.4f, held-out %s", threshold, summary["held_out"])
    return folder


if __name__ == "__main__":
    main()
