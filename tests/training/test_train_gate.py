"""training/train_gate.py: labels, the logistic fit, the held-out threshold, and the exported gated model."""

import json
import os

import numpy as np
import pytest
import torch

from training.train_gate import choose_threshold, main, margins
from tte.modeling_tte import TTEModel


def test_margins_leave_targets_of_the_positives_content_out_of_the_negatives():
    queries = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    targets = torch.tensor([[0.8, 0.6], [0.0, 1.0], [0.8, 0.6]])
    # query 0's positive and target 2 have one content: target 2 is not a negative of query 0 (nor 0 of 2)
    result = margins(queries, targets, target_ids=[7, 8, 7])
    assert torch.allclose(result, torch.tensor([0.8 - 0.0, 1.0 - 0.6, 0.96 - 0.8]))


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
