"""Ranking metrics of the MMEB harness (harness doc §4), with graded NDCG paired by label and a stable tie policy.

Notation: P is the ranked list of candidate ids, L the relevant ids with their grades (a dict, so each grade stays
with its own label whatever the hash seed; VLM2Vec's `RankingMetrics` zips `set(labels)` with the grades instead,
which makes graded NDCG depend on `PYTHONHASHSEED`, harness doc §4.1).

Tie policy: candidates are sorted by descending score with a stable sort, so exact ties keep pool order (the
earlier candidate ranks higher). Local pools list the positive first, so an exact tie goes to the positive, as
MMEB-V1's `np.argmax` does.

Duplicate ids in P (local pools keep duplicates) count once in hit / precision / recall, which use set
intersection, and once per position in MAP / MRR / NDCG, which walk the list; both as in VLM2Vec.
"""

import functools
import math

import numpy as np


K_VALUES = (1, 5, 10)


def rank(scores: np.ndarray, cand_ids: list[str]) -> list[str]:
    """Order candidate ids by descending score; exact ties keep their pool order.

    Args:
        scores: `(n,)` similarity of one query to each pooled candidate.
        cand_ids: the `n` candidate ids, in pool order.

    Returns:
        The ids, best first.
    """
    order = np.argsort(-scores, kind="stable")
    return [cand_ids[i] for i in order]


def hit_at_k(ranked: list[str], labels: dict[str, float], k: int) -> float:
    """1.0 if any relevant id is in the top k, else 0.0 (0.0 when there are no labels)."""
    return 1.0 if set(ranked[:k]) & set(labels) else 0.0


def precision_at_k(ranked: list[str], labels: dict[str, float], k: int) -> float:
    """|top k ∩ L| / k, always divided by k, even when fewer than k candidates exist."""
    return len(set(ranked[:k]) & set(labels)) / k


def recall_at_k(ranked: list[str], labels: dict[str, float], k: int) -> float:
    """|top k ∩ L| / |L|; 1.0 when there are no labels."""
    if not labels:
        return 1.0
    return len(set(ranked[:k]) & set(labels)) / len(labels)


def f1_at_k(ranked: list[str], labels: dict[str, float], k: int) -> float:
    """Harmonic mean of precision@k and recall@k (0.0 when both are 0)."""
    precision, recall = precision_at_k(ranked, labels, k), recall_at_k(ranked, labels, k)
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def map_at_k(ranked: list[str], labels: dict[str, float], k: int) -> float:
    """AP@k: sum over relevant positions i (1-based) of hits-so-far / i, divided by min(|L|, k)."""
    if not labels:
        return 0.0
    hits, total = 0, 0.0
    for position, cand_id in enumerate(ranked[:k], start=1):
        if cand_id in labels:
            hits += 1
            total += hits / position
    return total / min(len(labels), k)


def mrr_at_k(ranked: list[str], labels: dict[str, float], k: int) -> float:
    """1 / rank of the first relevant id within the top k, else 0.0."""
    for position, cand_id in enumerate(ranked[:k], start=1):
        if cand_id in labels:
            return 1.0 / position
    return 0.0


def ndcg_at_k(ranked: list[str], labels: dict[str, float], k: int, gain: str) -> float:
    """DCG / IDCG with discount log2(i + 2), i 0-based, and each label's own grade.

    Args:
        ranked: candidate ids, best first.
        labels: relevant id -> grade (> 0); 1.0 everywhere for binary tasks.
        k: cut-off.
        gain: `"linear"` (gain g) or `"exponential"` (gain 2^g - 1).

    Returns:
        NDCG@k; 0.0 when there are no labels.

    Raises:
        ValueError: for an unknown `gain`.
    """
    if gain == "linear":
        gain_of = float
    elif gain == "exponential":
        gain_of = lambda grade: 2.0**grade - 1.0  # noqa: E731
    else:
        raise ValueError(f"unknown NDCG gain {gain!r}; use 'linear' or 'exponential'")
    dcg = sum(gain_of(labels[c]) / math.log2(i + 2) for i, c in enumerate(ranked[:k]) if c in labels)
    ideal = sorted(labels.values(), reverse=True)[:k]
    idcg = sum(gain_of(grade) / math.log2(i + 2) for i, grade in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


# Metric name -> `f(ranked, labels, k)`, in the key order of the published score files.
METRIC_FUNCTIONS = {
    "hit": hit_at_k,
    "ndcg_linear": functools.partial(ndcg_at_k, gain="linear"),
    "ndcg_exponential": functools.partial(ndcg_at_k, gain="exponential"),
    "precision": precision_at_k,
    "recall": recall_at_k,
    "f1": f1_at_k,
    "map": map_at_k,
    "mrr": mrr_at_k,
}
# Every metric key a task score carries, e.g. `"hit@1"`, `"ndcg_linear@5"` (the names a headline metric may take).
METRIC_NAMES = tuple(f"{name}@{k}" for k in K_VALUES for name in METRIC_FUNCTIONS)


def query_metrics(ranked: list[str], labels: dict[str, float], ks: tuple[int, ...] = K_VALUES) -> dict[str, float]:
    """Every metric at every k for one query, keyed like the published score files (`"hit@1"`, ...)."""
    return {f"{name}@{k}": metric(ranked, labels, k) for k in ks for name, metric in METRIC_FUNCTIONS.items()}


def mean_metrics(per_query: list[dict[str, float]]) -> dict[str, float]:
    """Mean of each metric over queries (the task score), plus `num_pred` / `num_data` as in the score files."""
    if not per_query:
        raise ValueError("cannot average metrics over zero queries")
    means = {name: float(np.mean([scores[name] for scores in per_query])) for name in per_query[0]}
    return {**means, "num_pred": len(per_query), "num_data": len(per_query)}
