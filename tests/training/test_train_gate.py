"""training/train_gate.py: labels, the logistic fit, the held-out threshold, and the exported gated model."""

import json
import os

import numpy as np
import pytest
import torch

from tests.eval.test_user_tasks import GLOBAL_SPEC, LOCAL_SPEC, _row
from training.train_gate import GateSettings, choose_threshold, main, margins, task_margins
from tte.modeling_tte import TTEModel
from tte_eval import write_task


def test_margins_leave_targets_of_the_positives_content_out_of_the_negatives():
    queries = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    targets = torch.tensor([[0.8, 0.6], [0.0, 1.0], [0.8, 0.6]])
    # query 0's positive and target 2 have one content: target 2 is not a negative of query 0 (nor 0 of 2)
    result = margins(queries, targets, target_ids=[7, 8, 7])
    assert torch.allclose(result, torch.tensor([0.8 - 0.0, 1.0 - 0.6, 0.96 - 0.8]))


CANDIDATES = {"a": [1.0, 0.0, 0.0], "b": [0.0, 1.0, 0.0], "c": [0.0, 0.0, 1.0]}
QUERIES = {  # text -> (vector with its trace, vector without)
    "q0": ([0.9, 0.1, 0.0], [0.2, 0.5, 0.0]),  # local pool (a, b, c), positive a: margins 0.8 and -0.3
    "q1": ([0.0, 0.3, 0.6], [0.0, 0.6, 0.3]),  # local pool (b, c), positive c: 0.3 and -0.3
    "q2": ([0.5, 0.4, 0.0], [0.0, 0.7, 0.2]),  # global pool (b, a, c), positive b: -0.1 and 0.5
    "q3": ([0.1, 0.2, 0.3], [0.6, 0.0, 0.1]),  # global pool, positive c: 0.1 and -0.5
}


def fake_embed(inputs, side, think, return_reasoning=None):
    """Hand-set vectors: a candidate's by its text, a query's with or without its trace; a one-token trace."""
    vectors = torch.tensor([CANDIDATES[item["text"]] if side == "document" else QUERIES[item["text"]][not think]
                            for item in inputs])  # fmt: skip
    return (vectors, [[1] for _ in inputs]) if return_reasoning else vectors


def test_task_margins_score_each_query_against_its_rows_pool(tmp_path):
    write_task(str(tmp_path / "local"), LOCAL_SPEC, [_row("q0", ["a", "b", "c"], [0]), _row("q1", ["b", "c"], [1])])
    write_task(str(tmp_path / "global"), GLOBAL_SPEC, [_row("q2", ["b", "a"], [0]), _row("q3", ["c"], [0])])
    settings = GateSettings(model_path="unused", output_dir=str(tmp_path / "out"), tasks_dir=str(tmp_path),
                            max_queries=4)  # fmt: skip
    labelled = task_margins(settings, fake_embed)
    expected = {"q0": (0.8, -0.3), "q1": (0.3, -0.3), "q2": (-0.1, 0.5), "q3": (0.1, -0.5)}
    assert sorted(query["text"] for query in labelled.queries) == sorted(expected) and labelled.trace_ids == [[1]] * 4
    for query, with_trace, without, task in zip(labelled.queries, labelled.with_trace.tolist(),
                                                labelled.without_trace.tolist(), labelled.tasks):  # fmt: skip
        assert np.allclose([with_trace, without], expected[query["text"]]), query
        assert task == (LOCAL_SPEC["name"] if query["text"] in ("q0", "q1") else GLOBAL_SPEC["name"])


def test_the_gate_takes_its_queries_from_exactly_one_place(tmp_path):
    with pytest.raises(ValueError, match="exactly one of --data_config"):
        GateSettings(model_path="unused", output_dir=str(tmp_path))
    with pytest.raises(ValueError, match="exactly one of --data_config"):
        GateSettings(model_path="unused", output_dir=str(tmp_path), data_config="data.yaml", tasks_dir=str(tmp_path))
    with pytest.raises(ValueError, match="--accuracy_tolerance must be in"):
        GateSettings(model_path="unused", output_dir=str(tmp_path), data_config="data.yaml", accuracy_tolerance=1.5)


def test_the_threshold_maximises_held_out_accuracy_and_thinks_least_among_equals():
    logits = torch.tensor([-2.0, -1.0, 1.0, 2.0])
    right_with = torch.tensor([False, True, True, True])
    right_without = torch.tensor([True, False, False, True])
    threshold = choose_threshold(logits, right_with, right_without, None)
    assert -2.0 < threshold < -1.0  # think on the top three: all four right
    same = torch.tensor([True, True, True, True])  # thinking never helps: no query thinks
    assert choose_threshold(logits, same, same, None) > 2.0
    assert (logits > choose_threshold(logits, right_with, right_without, 0.5)).sum() == 2
    assert (logits > choose_threshold(logits, right_with, right_without, 0.0)).sum() == 0
    assert (logits > choose_threshold(logits, right_with, right_without, 1.0)).sum() == 4


def test_a_tolerance_trades_held_out_accuracy_for_less_thinking():
    logits = torch.tensor([-2.0, -1.0, 1.0, 2.0])
    right_with = torch.tensor([False, True, True, True])
    right_without = torch.tensor([True, False, False, False])
    # thresholds: all think 3/4 right, the top three 4/4, the top two 3/4, the top one 2/4, none 1/4
    thinking = lambda threshold: int((logits > threshold).sum())  # noqa: E731
    assert thinking(choose_threshold(logits, right_with, right_without, None)) == 3
    assert thinking(choose_threshold(logits, right_with, right_without, None, tolerance=0.25)) == 2
    assert thinking(choose_threshold(logits, right_with, right_without, None, tolerance=0.5)) == 1
    assert thinking(choose_threshold(logits, right_with, right_without, None, tolerance=0.2)) == 3


@pytest.mark.parametrize("variant", ["unified", "student"])
def test_train_gate_exports_a_model_that_thinks_where_its_gate_says(tmp_path, model_folder, pair_data, variant):
    output = tmp_path / "gate"
    folder = main(["--model_path", model_folder(variant), "--data_config", pair_data, "--output_dir", str(output),
                   "--max_queries", "24", "--steps", "50", "--max_new_tokens", "4", "--batch_size", "8",
                   "--default_think", "auto"])  # fmt: skip
    summary = json.loads((output / "summary.json").read_text())
    held_out = summary["held_out"]
    assert summary["queries"] == {"fit": 18, "held_out": 6}
    # chosen on the held-out queries among thresholds that include "all think" and "none thinks"
    assert held_out["auto"] >= max(held_out["never"], held_out["always"])
    model = TTEModel.from_pretrained(folder).eval()
    assert model.config.think == "auto" and model.config.gate_threshold == summary["threshold"]
    texts = ["a red cat", "a blue dog", "what colour is the cat?", "a green bird"]
    logits = model.gate(model.gate_features(texts)).tolist()
    _, traces = model.embed(texts, max_new_tokens=4, return_reasoning="ids")  # the default policy: auto
    assert [bool(ids) for ids in traces] == [logit > summary["threshold"] for logit in logits]
    assert os.path.isfile(os.path.join(folder, "modeling_tte.py"))


def test_train_gate_think_rate_sets_the_share_of_held_out_queries_that_think(tmp_path, model_folder, pair_data):
    main(["--model_path", model_folder("student"), "--data_config", pair_data, "--output_dir", str(tmp_path / "gate"),
          "--max_queries", "24", "--steps", "20", "--max_new_tokens", "4", "--think_rate", "0.5"])  # fmt: skip
    summary = json.loads((tmp_path / "gate" / "summary.json").read_text())
    assert np.isclose(summary["held_out"]["auto_think_rate"], 0.5)
    with pytest.raises(ValueError, match="--default_think 'sometimes' is not one of"):
        main(["--model_path", model_folder("student"), "--data_config", pair_data, "--output_dir", str(tmp_path),
              "--default_think", "sometimes"])


def test_train_gate_fits_on_the_queries_of_user_tasks(tmp_path, model_folder):
    from training.scene_tasks import write_test_tasks

    write_test_tasks(str(tmp_path / "dev"), rows_per_task=2, seed=3)
    main(["--model_path", model_folder("unified"), "--tasks_dir", str(tmp_path / "dev"), "--output_dir",
          str(tmp_path / "gate"), "--max_queries", "12", "--steps", "20", "--max_new_tokens", "4"])  # fmt: skip
    summary = json.loads((tmp_path / "gate" / "summary.json").read_text())
    assert summary["queries"] == {"fit": 9, "held_out": 3} and "hit@1" in summary["accuracy"]
    assert summary["held_out"]["auto"] >= max(summary["held_out"]["never"], summary["held_out"]["always"])
