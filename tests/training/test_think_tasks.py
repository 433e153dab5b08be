"""training/think_tasks.py: the policy's score over tasks, the choice of families, and the exported model."""

import json

import numpy as np
import pytest
import torch

from training.think_tasks import Outcomes, ThinkTasksSettings, choose_families, main
from tte.modeling_tte import TTEModel


def outcomes() -> Outcomes:
    """Four tasks of two queries: two vqa tasks and a classification task the trace helps, a retrieval task it hurts;
    retrieval traces are the longest."""
    tasks = ["colour", "colour", "count", "count", "kind", "kind", "i2t", "i2t"]
    families = ["vqa", "vqa", "vqa", "vqa", "classification", "classification", "retrieval", "retrieval"]
    right_with = torch.tensor([1, 1, 1, 0, 1, 1, 0, 0], dtype=torch.bool)
    right_without = torch.tensor([0, 0, 0, 0, 0, 0, 1, 0], dtype=torch.bool)
    tokens = torch.tensor([10, 10, 10, 10, 10, 10, 20, 20])
    return Outcomes(tasks, families, right_with, right_without, tokens)


def test_a_policy_scores_the_mean_over_tasks_and_counts_its_trace_tokens():
    result = outcomes()
    # per task with the vqa family thinking: colour 1.0, count 0.5, kind 0.0, i2t 0.5
    assert result.score({"vqa"}) == pytest.approx((1.0 + 0.5 + 0.0 + 0.5) / 4)
    assert result.score({"vqa", "classification", "retrieval"}) == pytest.approx((1.0 + 0.5 + 1.0 + 0.0) / 4)
    assert result.score(set()) == pytest.approx((0 + 0 + 0 + 0.5) / 4)
    assert result.token_share({"vqa"}) == pytest.approx(40 / 100)
    assert result.token_share({"retrieval"}) == pytest.approx(40 / 100)


def test_the_choice_is_the_fewest_tokens_within_the_tolerance_of_every_query_thinking():
    chosen, table = choose_families(outcomes(), tolerance=0.0)
    # every family thinking scores 0.625; vqa + classification scores 0.75 with 60 % of the tokens
    assert chosen == {"classification", "vqa"}
    assert len(table) == 2**3 and {tuple(entry["thinking"]) for entry in table} >= {(), ("vqa",)}
    # within 0.125 of every query thinking (0.5 and up), vqa alone (0.5, 40 %) is the cheapest: classification alone
    # (20 %) scores 0.375
    assert choose_families(outcomes(), tolerance=0.125)[0] == {"vqa"}
    assert choose_families(outcomes(), tolerance=0.5)[0] == set()


def test_the_settings_are_checked(tmp_path):
    with pytest.raises(ValueError, match="--accuracy_tolerance must be in"):
        ThinkTasksSettings(model_path="m", tasks_dir="t", output_dir=str(tmp_path), accuracy_tolerance=1.0)
    with pytest.raises(ValueError, match="--max_queries must be >= 1"):
        ThinkTasksSettings(model_path="m", tasks_dir="t", output_dir=str(tmp_path), max_queries=0)


@pytest.mark.parametrize("variant", ["unified", "student"])
def test_think_tasks_exports_a_model_that_thinks_for_the_chosen_families(tmp_path, model_folder, variant):
    from training.scene_tasks import write_test_tasks

    write_test_tasks(str(tmp_path / "dev"), rows_per_task=2, seed=3)
    folder = main(["--model_path", model_folder(variant), "--tasks_dir", str(tmp_path / "dev"), "--output_dir",
                   str(tmp_path / "policy"), "--max_new_tokens", "4", "--accuracy_tolerance", "0.5"])  # fmt: skip
    summary = json.loads((tmp_path / "policy" / "summary.json").read_text())
    assert summary["queries"] == 14  # every query of the 7 scene tasks
    observed = set(summary["families"])
    assert observed == {"classification", "grounding", "retrieval", "vqa"}
    assert summary["score"]["tasks"] >= summary["score"]["every_query_thinks"] - 0.5
    model = TTEModel.from_pretrained(folder).eval()
    assert model.config.think == "tasks"
    assert model.config.think_tasks == sorted(set(summary["think_tasks"]))
    assert set(summary["unobserved_families_think"]) == set(model.processor.task_families) - observed
    assert set(summary["unobserved_families_think"]) <= set(model.config.think_tasks)
    thinking = set(model.config.think_tasks) & observed
    (chosen,) = [entry for entry in summary["subsets"] if set(entry["thinking"]) == thinking]
    assert chosen["score"] == pytest.approx(summary["score"]["tasks"])
    assert min(entry["token_share"] for entry in summary["subsets"]
               if entry["score"] >= summary["score"]["every_query_thinks"] - 0.5 - 1e-9) == summary["token_share"]
    queries = [{"text": "what colour is the square ?", "task": "vqa"}, {"text": "a red square", "task": "retrieval"}]
    _, traces = model.embed(queries, max_new_tokens=4, return_reasoning="ids")
    assert [bool(ids) for ids in traces] == [family in model.config.think_tasks for family in ("vqa", "retrieval")]
    assert np.isfinite(model.embed(queries, max_new_tokens=4)).all()
