"""Choose the task families that think under `think="tasks"`: think only where the instruction's kind of task needs it.

The instruction says what a query asks, and a development split (user tasks drawn like the test split but apart from
it) says where the trace pays. Each sampled query is embedded with and without its own trace and marked right or
wrong against its row's candidates (hit@1, as the harness scores it; `training.train_gate.task_margins`). A policy
thinks for a subset of the ECR task families; its score is the mean over tasks of the hit@1 its queries get (with the
trace in a thinking family, without it in the others), as `tte-eval` averages tasks. The chosen subset is the one that
generates the fewest trace tokens among those that score within `--accuracy_tolerance` of every query thinking. A
family with no development query keeps thinking (nothing says it may stop), and the summary lists it.

The model is exported with `config.think = "tasks"` and `config.think_tasks`; `summary.json` gives, per family, its
queries, score with and without the trace and trace tokens, and every subset's score and share of the tokens.

Train the embedder or head with `--trace_dropout` first, so that a query embedded without its trace lands in the same
space as one embedded with it.

    python -m training.think_tasks --model_path runs/unified/model --tasks_dir data/scene-tasks/dev \
        --output_dir runs/think-tasks [--accuracy_tolerance 0.02]
"""

import itertools
import json
import logging
import os
from dataclasses import asdict, dataclass, field

import torch

from training.checkpoint import export_model, write_atomic
from training.loop import parse_settings
from training.train_gate import labelling_model, task_margins


logger = logging.getLogger("training")


@dataclass
class ThinkTasksSettings:
    model_path: str = field(metadata={"help": "A trained TTE model folder with its own reasoner (unified, student)."})
    tasks_dir: str = field(metadata={"help": "A tte-eval user tasks folder (e.g. a development split)."})
    output_dir: str = field(metadata={"help": "Run folder: model/ (think='tasks') and summary.json."})
    accuracy_tolerance: float = field(default=0.0, metadata={"help": "Among the subsets scoring within this much (a "
                                      "fraction) of every query thinking, choose the one with the fewest trace "
                                      "tokens (0: no loss allowed)."})  # fmt: skip
    max_queries: int = field(default=4096, metadata={"help": "Queries sampled from the tasks (default: all of a "
                             "development split)."})  # fmt: skip
    batch_size: int = field(default=16, metadata={"help": "Inputs per embed / generate call."})
    max_new_tokens: int | None = field(default=None, metadata={"help": "Trace bound (default: the model's)."})
    seed: int = field(default=0, metadata={"help": "Seed of the sample."})

    def __post_init__(self):
        if self.max_queries < 1:
            raise ValueError(f"--max_queries must be >= 1, got {self.max_queries}")
        if not 0.0 <= self.accuracy_tolerance < 1.0:
            raise ValueError(f"--accuracy_tolerance must be in [0, 1), got {self.accuracy_tolerance}")


@dataclass
class Outcomes:
    """Per sampled query: its task, its family, hit@1 with and without its trace, and its trace's tokens."""

    tasks: list[str]
    families: list[str]
    right_with: torch.Tensor
    right_without: torch.Tensor
    tokens: torch.Tensor

    def score(self, thinking: set[str]) -> float:
        """The mean over tasks of the hit@1 when the queries of the `thinking` families use their trace."""
        thinks = torch.tensor([family in thinking for family in self.families])
        right = torch.where(thinks, self.right_with.cpu(), self.right_without.cpu()).float()
        return sum(right[self.rows_of(task)].mean().item() for task in set(self.tasks)) / len(set(self.tasks))

    def token_share(self, thinking: set[str]) -> float:
        thinks = torch.tensor([family in thinking for family in self.families])
        tokens = self.tokens.cpu().float()
        return (tokens[thinks].sum() / tokens.sum().clamp(min=1)).item()

    def rows_of(self, task: str) -> list[int]:
        return [i for i, name in enumerate(self.tasks) if name == task]


def choose_families(outcomes: Outcomes, tolerance: float) -> tuple[set[str], list[dict]]:
    """The subset of the observed families with the fewest trace tokens whose score is within `tolerance` of every
    family thinking (ties: the higher score), and every subset's score and token share."""
    families = sorted(set(outcomes.families))
    subsets = [set(chosen) for size in range(len(families) + 1) for chosen in itertools.combinations(families, size)]
    table = [{"thinking": sorted(subset), "score": outcomes.score(subset), "token_share": outcomes.token_share(subset)}
             for subset in subsets]  # fmt: skip
    floor = outcomes.score(set(families)) - tolerance - 1e-9
    eligible = [entry for entry in table if entry["score"] >= floor]
    best = min(eligible, key=lambda entry: (entry["token_share"], -entry["score"]))
    return set(best["thinking"]), table


def family_report(outcomes: Outcomes) -> dict:
    report = {}
    for family in sorted(set(outcomes.families)):
        rows = [i for i, name in enumerate(outcomes.families) if name == family]
        tasks = sorted({outcomes.tasks[i] for i in rows})
        report[family] = {
            "tasks": tasks,
            "queries": len(rows),
            "hit@1_with_trace": outcomes.right_with[rows].float().mean().item(),
            "hit@1_without_trace": outcomes.right_without[rows].float().mean().item(),
            "trace_tokens_per_query": outcomes.tokens[rows].float().mean().item(),
        }
    return report


def main(argv: list[str] | None = None) -> str:
    settings = parse_settings(ThinkTasksSettings, argv)
    accelerator, model, embed = labelling_model(settings)
    labelled = task_margins(settings, embed)
    families = [item.task for item in model.processor.parse_inputs(labelled.queries)]
    outcomes = Outcomes(labelled.tasks, families, labelled.with_trace > 0, labelled.without_trace > 0,
                        torch.tensor([len(ids) for ids in labelled.trace_ids]))  # fmt: skip
    chosen, table = choose_families(outcomes, settings.accuracy_tolerance)
    unobserved = sorted(set(model.processor.task_families) - set(outcomes.families))
    model.config.think, model.config.think_tasks = "tasks", sorted(chosen | set(unobserved))
    every = set(outcomes.families)
    summary = {
        "settings": asdict(settings),
        "queries": len(labelled.queries),
        "think_tasks": model.config.think_tasks,
        "unobserved_families_think": unobserved,
        "score": {"tasks": outcomes.score(chosen), "every_query_thinks": outcomes.score(every),
                  "none": outcomes.score(set())},
        "token_share": outcomes.token_share(chosen),
        "families": family_report(outcomes),
        "subsets": table,
        "accuracy": "the mean over tasks of hit@1: a query is right when its best positive candidate beats every other "
                    "candidate of its row's pool",
    }  # fmt: skip
    # The summary first: a finished export (what a resumed recipe checks) then always has its summary.
    os.makedirs(settings.output_dir, exist_ok=True)
    write_atomic(os.path.join(settings.output_dir, "summary.json"), json.dumps(summary, indent=2))
    folder = export_model(accelerator, model, settings.output_dir)
    logger.info("think_tasks %s: score %.4f (every query thinks %.4f), %.0f%% of the trace tokens",
                model.config.think_tasks, summary["score"]["tasks"], summary["score"]["every_query_thinks"],
                100 * summary["token_share"])  # fmt: skip
    return folder


if __name__ == "__main__":
    main()
