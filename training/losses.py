"""Training objectives: InfoNCE over in-batch targets gathered across processes, GradCache, and the reasoner's
next-token loss.

Both step functions compute the gradients of one optimizer step of the *global* batch: under DDP each process
backpropagates its share scaled by the world size, because DDP averages the gradients it all-reduces. So n processes
with batch B/n per process train like one process with batch B.
"""

from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from accelerate import Accelerator
from transformers import BatchFeature

from tte.modeling_tte import PrefixSplit, dropout_is_active, grids_of, position_ids_of, prefix_keys_values


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate `tensor` from every process in rank order; the local slice keeps its gradient.

    Every process must pass the same shape. Without a process group this returns `tensor`.
    """
    if not dist.is_available() or not dist.is_initialized() or dist.get_world_size() == 1:
        return tensor
    gathered = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, tensor.detach().contiguous())
    gathered[dist.get_rank()] = tensor  # all_gather cuts the graph; put the local slice back with its gradient
    return torch.cat(gathered)


def positive_columns(num_queries: int, num_targets: int) -> torch.Tensor:
    """Column of each query's positive when every query brings k = num_targets / num_queries targets.

    Targets are laid out `[pos_0, neg_0_1..neg_0_m, pos_1, ...]`, so the positive of query i is column `i * k`
    (VLM2Vec's `main` branch used `i * (num_queries // num_targets)`, which is 0 for every query once k > 1).

    Raises:
        ValueError: `num_targets` is not a positive multiple of `num_queries`.
    """
    if num_queries < 1 or num_targets < num_queries or num_targets % num_queries:
        raise ValueError(f"{num_targets} targets are not a positive multiple of {num_queries} queries")
    return torch.arange(num_queries) * (num_targets // num_queries)


def info_nce(query: torch.Tensor, target: torch.Tensor, temperature: float,
             target_ids: torch.Tensor | None = None) -> dict[str, torch.Tensor]:  # fmt: skip
    """Unidirectional query-to-target InfoNCE over all targets of all processes.

    Args:
        query: `(n, dim)` this process's L2-normalised query embeddings.
        target: `(n * k, dim)` its targets, k per query, the positive first (see `positive_columns`).
        temperature: the softmax temperature (TTE: 0.02).
        target_ids: `(n * k,)` int64 content ids of the targets (`PairCollator`: equal ids, equal inputs). An
            in-batch target with the same content as a query's positive is not a negative of that query (a one-word
            answer such as "two" recurs within a batch); such columns are left out of its softmax. None: no masking.

    Returns:
        `{"contrastive_loss": scalar}`: the mean loss over the global batch, the same on every process.
    """
    queries, targets = gather_with_grad(query), gather_with_grad(target)
    scores = queries @ targets.T / temperature  # (global n, global n * k)
    labels = positive_columns(queries.shape[0], targets.shape[0]).to(scores.device)
    if target_ids is not None:
        ids = gather_with_grad(target_ids.to(scores.device))
        same_as_positive = ids[labels][:, None] == ids[None, :]
        same_as_positive[torch.arange(len(labels), device=scores.device), labels] = False
        scores = scores.masked_fill(same_as_positive, float("-inf"))
    return {"contrastive_loss": F.cross_entropy(scores, labels)}


@dataclass
class RngState:
    """The random state a forward pass starts from: CPU, and the accelerator device's when it is CUDA."""

    cpu: torch.Tensor
    cuda: torch.Tensor | None
    device: torch.device


def capture_rng(device: torch.device) -> RngState:
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return RngState(torch.get_rng_state(), cuda, device)


@contextmanager
def replay_rng(state: RngState):
    """Run the block from `state`, then put the random state back to where it was before the block."""
    devices = [state.device] if state.cuda is not None else []
    with torch.random.fork_rng(devices=devices):
        torch.set_rng_state(state.cpu)
        if state.cuda is not None:
            torch.cuda.set_rng_state(state.cuda, state.device)
        yield


class GradCache:
    """The contrastive step with a batch size independent of memory (Gao et al., 2021), on one process or many.

    1. Embed every chunk without a graph, recording the random state each chunk starts from.
    2. Compute the loss on the cached embeddings and backpropagate it to them only.
    3. Re-embed each chunk with a graph from its recorded random state (so dropout masks match pass 1) and
       backpropagate the cached embedding gradients into the model; gradients are synchronised on the last chunk.

    On one process, a batch whose sides each fit in one chunk takes the plain loss in one pass (`one_pass`).

    Args:
        model: the prepared model; `model(**chunk).embeddings` gives `(rows, dim)` embeddings.
        accelerator: the run's accelerator.
        temperature: InfoNCE temperature.
    """

    def __init__(self, model: torch.nn.Module, accelerator: Accelerator, temperature: float):
        self.model, self.accelerator, self.temperature = model, accelerator, temperature

    def embed(self, chunk: BatchFeature) -> torch.Tensor:
        return self.model(**chunk.to(self.accelerator.device)).embeddings

    def __call__(self, batch: dict[str, list[BatchFeature]]) -> dict[str, float]:
        """Accumulate the gradients of one step into the model's `.grad`; returns the loss parts as floats."""
        if self.accelerator.num_processes == 1 and len(batch["query"]) == len(batch["target"]) == 1:
            return self.one_pass(batch)
        chunks = batch["query"] + batch["target"]
        states, cached = [], []
        with torch.no_grad():
            for chunk in chunks:
                states.append(capture_rng(self.accelerator.device))
                cached.append(self.embed(chunk))
        num_query_chunks = len(batch["query"])
        query = torch.cat(cached[:num_query_chunks]).requires_grad_()
        target = torch.cat(cached[num_query_chunks:]).requires_grad_()
        losses = info_nce(query, target, self.temperature, batch.get("target_ids"))
        (losses["contrastive_loss"] * self.accelerator.num_processes).backward()
        sizes = [embeddings.shape[0] for embeddings in cached]
        grads = torch.cat([query.grad, target.grad]).split(sizes)
        for index, (chunk, state, grad) in enumerate(zip(chunks, states, grads)):
            is_last = index == len(chunks) - 1
            with replay_rng(state), (nullcontext() if is_last else self.accelerator.no_sync(self.model)):
                self.accelerator.backward((self.embed(chunk) * grad).sum())
        return {name: value.item() for name, value in losses.items()}

    def one_pass(self, batch: dict[str, list[BatchFeature]]) -> dict[str, float]:
        """The plain loss, when each side fits in one chunk on one process: the graph-free first pass would only
        double the forward compute. It holds both sides' graphs at once (two chunks' worth of activations, where
        GradCache holds one). Under DDP the chunked path is kept: DDP expects one forward per backward."""
        query, target = self.embed(batch["query"][0]), self.embed(batch["target"][0])
        losses = info_nce(query, target, self.temperature, batch.get("target_ids"))
        self.accelerator.backward(losses["contrastive_loss"])
        return {name: value.item() for name, value in losses.items()}


def count_label_tokens(chunk: BatchFeature) -> int:
    """Tokens the next-token loss is computed on: labels after the shift, other than -100."""
    return int((chunk["labels"][:, 1:] != -100).sum())


def next_token_loss(model: torch.nn.Module, chunk: BatchFeature) -> torch.Tensor:
    """`model(**chunk).loss`, running each distinct family prefix (`prefix_lengths`) once for the chunk's rows.

    The prefix's keys and values are computed in the graph, so the loss and gradients are those of whole sequences;
    its label tokens are all after the prefix. While dropout is active the rows are run whole (a shared prefix would
    share one dropout mask).
    """
    inputs = dict(chunk)
    prefix_lengths = inputs.pop("prefix_lengths", None)
    generator = model.module if hasattr(model, "module") else model  # DDP: the prefix pass needs no reducer
    generator = generator.get_base_model() if hasattr(generator, "get_base_model") else generator  # peft
    if prefix_lengths is None or not bool(prefix_lengths.any()) or dropout_is_active(generator):
        return model(**inputs).loss
    input_ids, attention_mask, labels = inputs.pop("input_ids"), inputs.pop("attention_mask"), inputs.pop("labels")
    position_ids = position_ids_of(generator, input_ids, attention_mask, inputs.pop("mm_token_type_ids", None),
                                   **grids_of(inputs))  # fmt: skip
    split = PrefixSplit.of(input_ids, attention_mask, position_ids, prefix_lengths)
    states = [prefix_keys_values(generator, prefix) for prefix in split.prefixes]
    return model(input_ids=split.rest_ids, attention_mask=split.mask, position_ids=split.rest_positions,
                 cache=split.cache(states), use_cache=True, labels=split.rest_of(labels, -100), **inputs).loss


def next_token_step(model: torch.nn.Module, accelerator: Accelerator, chunks: list[BatchFeature]) -> dict[str, float]:
    """Accumulate the gradients of the mean next-token loss over every label token of the global batch.

    Args:
        model: the prepared generator; `model(**chunk).loss` is the mean loss over the chunk's label tokens.
        accelerator: the run's accelerator.
        chunks: this process's share of the batch, with `labels` (-100 on prompt and padding).

    Returns:
        `{"lm_loss": float}`, the global mean loss per label token.
    """
    device = accelerator.device
    counts = [count_label_tokens(chunk) for chunk in chunks]
    total = accelerator.reduce(torch.tensor(sum(counts), device=device), reduction="sum").item()
    summed = torch.zeros((), device=device)
    for index, (chunk, count) in enumerate(zip(chunks, counts)):
        is_last = index == len(chunks) - 1
        with (nullcontext() if is_last else accelerator.no_sync(model)):
            loss = next_token_loss(model, chunk.to(device))
            # Weight each chunk by its share of the global label tokens: every token counts once, on any layout.
            accelerator.backward(loss * count / total * accelerator.num_processes)
        summed += loss.detach() * count
    return {"lm_loss": (accelerator.reduce(summed, reduction="sum") / total).item()}


__all__ = ["info_nce", "positive_columns", "gather_with_grad", "GradCache", "next_token_loss", "next_token_step",
           "count_label_tokens"]
