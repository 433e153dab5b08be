"""Tests of `tte_eval/metrics.py`: definitions of harness doc §4, graded NDCG paired by label, stable ties."""

import math
import os
import subprocess
import sys

import numpy as np
import pytest
from tests.eval.golden import REPO_ROOT

from tte_eval.metrics import (
    f1_at_k,
    hit_at_k,
    map_at_k,
    mean_metrics,
    mrr_at_k,
    ndcg_at_k,
    precision_at_k,
    query_metrics,
    rank,
    recall_at_k,
)


REFERENCE_RANKED = ["d1", "d2", "d3", "d4", "d5"]  # harness doc §4.1
REFERENCE_LABELS = {"d3": 2.0, "d1": 1.0, "d9": 1.0}


def test_ndcg_linear_reference_case():
    expected = 2 / (2 + 1 / math.log2(3) + 1 / 2)
    value = ndcg_at_k(REFERENCE_RANKED, REFERENCE_LABELS, 5, "linear")
    assert value == pytest.approx(expected, abs=1e-12)
    assert round(value, 4) == 0.6388


def test_ndcg_exponential_reference_case():
    expected = 2.5 / (3 + 1 / math.log2(3) + 1 / 2)  # gains 2^1-1 + (2^2-1)/log2(4) over 3 + 1/log2 3 + 1/2
    value = ndcg_at_k(REFERENCE_RANKED, REFERENCE_LABELS, 5, "exponential")
    assert value == pytest.approx(expected, abs=1e-12)
    assert round(value, 4) == 0.6052


def test_ndcg_graded_independent_of_hash_seed():
    # The labels are built by iterating a set, whose order follows PYTHONHASHSEED: the bug's trigger in VLM2Vec.
    code = (
        "from tte_eval.metrics import ndcg_at_k\n"
        "grades = {'d3': 2.0, 'd1': 1.0, 'd9': 1.0}\n"
        "labels = {name: grades[name] for name in set(grades)}\n"
        "ranked = ['d1', 'd2', 'd3', 'd4', 'd5']\n"
        "linear, exponential = ndcg_at_k(ranked, labels, 5, 'linear'), ndcg_at_k(ranked, labels, 5, 'exponential')\n"
        "print(list(labels), repr(linear), repr(exponential))\n"
    )
    outputs = []
    for seed in ("0", "1", "2", "3", "7", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": REPO_ROOT}
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
        orders, linear, exponential = result.stdout.rsplit(" ", 2)
        outputs.append((orders, float(linear), float(exponential)))
    assert len({orders for orders, _, _ in outputs}) > 1, "the seeds should produce different set orders"
    assert {(linear, exponential) for _, linear, exponential in outputs} == {
        (ndcg_at_k(REFERENCE_RANKED, REFERENCE_LABELS, 5, "linear"),
         ndcg_at_k(REFERENCE_RANKED, REFERENCE_LABELS, 5, "exponential"))
    }  # fmt: skip


def test_ndcg_binary_linear_equals_exponential():
    labels = {"b": 1.0, "d": 1.0}
    ranked = ["a", "b", "c", "d"]
    expected = (1 / math.log2(3) + 1 / math.log2(5)) / (1 + 1 / math.log2(3))
    assert ndcg_at_k(ranked, labels, 5, "linear") == pytest.approx(expected, abs=1e-12)
    assert ndcg_at_k(ranked, labels, 5, "exponential") == pytest.approx(expected, abs=1e-12)


def test_ndcg_rejects_unknown_gain():
    with pytest.raises(ValueError, match="unknown NDCG gain 'cubic'"):
        ndcg_at_k(["a"], {"a": 1.0}, 1, "cubic")


def test_rank_ties_keep_pool_order():
    scores = np.array([0.5, 0.9, 0.5, 0.9, 0.1])
    assert rank(scores, ["a", "b", "c", "d", "e"]) == ["b", "d", "a", "c", "e"]


def test_rank_tie_goes_to_positive_listed_first():
    assert rank(np.array([0.3, 0.3, 0.3]), ["positive", "neg1", "neg2"])[0] == "positive"


def test_hit_at_k_hand_computed():
    ranked = ["x", "y", "a"]
    assert (hit_at_k(ranked, {"a": 1.0}, 1), hit_at_k(ranked, {"a": 1.0}, 3)) == (0.0, 1.0)


def test_hit_at_k_zero_without_labels():
    assert hit_at_k(["a", "b"], {}, 5) == 0.0


def test_precision_at_k_divides_by_k_with_short_pool():
    assert precision_at_k(["yes", "no"], {"yes": 1.0}, 5) == pytest.approx(0.2, abs=0)


def test_precision_at_k_counts_duplicate_ids_once():
    assert precision_at_k(["a", "a", "b"], {"a": 1.0}, 2) == 0.5


def test_recall_at_k_hand_computed():
    assert recall_at_k(["a", "x", "b"], {"a": 1.0, "b": 1.0, "c": 1.0, "d": 1.0}, 3) == 0.5


def test_recall_at_k_is_one_without_labels():
    assert recall_at_k(["a"], {}, 1) == 1.0


def test_f1_at_k_hand_computed():
    # precision@5 = 1/5, recall@5 = 1/2: F1 = 2 * 0.2 * 0.5 / 0.7
    assert f1_at_k(["a", "x", "y", "z", "w"], {"a": 1.0, "b": 1.0}, 5) == pytest.approx(0.2 / 0.7, abs=1e-12)


def test_f1_at_k_zero_when_nothing_found():
    assert f1_at_k(["x"], {"a": 1.0}, 1) == 0.0


def test_map_at_k_hand_computed():
    # hits at ranks 1, 3, 5: (1/1 + 2/3 + 3/5) / min(|L|=4, k=5)
    expected = (1 + 2 / 3 + 3 / 5) / 4
    assert map_at_k(["a", "x", "b", "y", "c"], {"a": 1.0, "b": 1.0, "c": 1.0, "d": 1.0}, 5) == pytest.approx(expected)


def test_map_at_k_normalises_by_k_when_labels_exceed_k():
    assert map_at_k(["x", "a"], {"a": 1.0, "b": 1.0, "c": 1.0}, 2) == pytest.approx((1 / 2) / 2, abs=1e-12)


def test_mrr_at_k_hand_computed():
    assert mrr_at_k(["x", "y", "a"], {"a": 1.0}, 5) == pytest.approx(1 / 3, abs=1e-12)


def test_mrr_at_k_zero_beyond_k():
    assert mrr_at_k(["x", "y", "a"], {"a": 1.0}, 2) == 0.0


def test_query_metrics_single_positive_identities():
    rng = np.random.default_rng(0)
    for _ in range(20):
        ids = [f"c{i}" for i in range(6)]
        scores = query_metrics(rank(rng.standard_normal(6), ids), {"c2": 1.0})
        at_1 = {scores[f"{name}@1"] for name in ("hit", "precision", "recall", "map", "mrr", "ndcg_linear", "f1")}
        assert len(at_1) == 1


def test_query_metrics_keys_match_published_files():
    names = ("hit", "ndcg_linear", "ndcg_exponential", "precision", "recall", "f1", "map", "mrr")
    assert set(query_metrics(["a"], {"a": 1.0})) == {f"{name}@{k}" for name in names for k in (1, 5, 10)}


def test_mean_metrics_averages_and_counts():
    means = mean_metrics([{"hit@1": 1.0}, {"hit@1": 0.0}, {"hit@1": 0.0}, {"hit@1": 1.0}])
    assert means == {"hit@1": 0.5, "num_pred": 4, "num_data": 4}


def test_mean_metrics_rejects_no_queries():
    with pytest.raises(ValueError, match="zero queries"):
        mean_metrics([])
