"""Greedy, batched decoding of reasoning traces that stops computing a row as soon as its trace has ended.

transformers' `generate` carries every row of a batch through each decoding step until the longest trace ends, and
its continuous batching (`generate_batch`) is text-only and paged: it cannot take Qwen-VL's vision inputs or our
capture of a layer's outputs. This loop runs the same greedy steps through the generator's own forward and
`DynamicCache`, and drops the rows whose trace has ended from the cache and the batch (batch compaction), so a short
trace, or one the `think="auto"` gate ends before its first token, stops costing compute.

For the unified single pass (`captured`), a row whose trace has ended feeds the embedding token in the next step,
and only then leaves: each row's layer L-N states of prompt + trace + embedding token are all computed while
generating, and the head needs no second trunk pass.
"""

from dataclasses import dataclass

import numpy as np
import torch
from transformers import DynamicCache, GenerationConfig, PreTrainedModel
from transformers.generation.streamers import BaseStreamer


PROMPT_KEYS = ("input_ids", "attention_mask", "position_ids", "cache")


@dataclass
class Generation:
    """What one generation call did, per row of its batch: the traces, the bound and which traces hit it, and (for
    the unified single pass) each row's captured states. Each call has its own, so concurrent calls never share one."""

    trace_ids: list[list[int]]  # the trace, up to (not including) its stop token
    cut: list[bool]  # the trace hit the bound without a stop token
    budget: int | None  # the bound: max_new_tokens, or less where the context window is short
    # (`TTEModel.trace_budget`); None for an external reasoner, which applies its own
    first_fed: int = 0  # prompt columns the given cache already held (shared prefixes); the prefill fed the rest
    source_rows: list[torch.Tensor] | None = None  # with `captured`: the captured layer's states of what the
    # prefill fed (left pads dropped) + trace + embedding token, `(length, hidden)` per row
    gate_skipped: list[bool] | None = None  # rows the think="auto" gate ended before their first token


class DecodingBatch:
    """The rows still decoding: their generation cache, attention mask and next positions, and the original row
    each of them is. `keep` compacts all of them at once."""

    def __init__(self, cache: DynamicCache, attention_mask: torch.Tensor, positions: torch.Tensor):
        self.cache, self.attention_mask = cache, attention_mask
        self.next_positions = positions[..., -1:] + 1  # every row's prompt ends with a text token (left padding)
        self.rows = torch.arange(attention_mask.shape[0], device=attention_mask.device)

    def keep(self, kept: torch.Tensor) -> None:
        """Keep the rows where `kept` (a bool per current row) is true."""
        if bool(kept.all()):
            return
        indices = kept.nonzero().squeeze(1)
        self.cache.batch_select_indices(indices)
        self.attention_mask, self.rows = self.attention_mask[indices], self.rows[indices]
        self.next_positions = self.next_positions[..., indices, :]

    def step(self, generator: PreTrainedModel, tokens: torch.Tensor) -> torch.Tensor:
        """Feed one token per row on top of the cache; return the logits it gives."""
        return self.feed(generator, tokens[:, None], torch.ones_like(tokens[:, None]))

    def feed(self, generator: PreTrainedModel, tokens: torch.Tensor, tokens_mask: torch.Tensor) -> torch.Tensor:
        """Feed a `(rows, k)` block of tokens (where `tokens_mask` is 0: padding) on top of the cache; return the
        last column's logits."""
        # A padding column takes no position: the row's next token follows its last real one.
        offsets = (tokens_mask.long().cumsum(dim=1) - 1).clamp(min=0)
        positions = self.next_positions + offsets
        self.attention_mask = torch.cat([self.attention_mask, tokens_mask.to(self.attention_mask.dtype)], dim=1)
        output = generator(input_ids=tokens, attention_mask=self.attention_mask, position_ids=positions,
                           cache=self.cache, use_cache=True, logits_to_keep=1)  # fmt: skip
        self.next_positions = self.next_positions + tokens_mask.long().sum(dim=1, keepdim=True)
        return output.logits[:, -1]


def prefill(generator: PreTrainedModel, prompt: dict) -> tuple[torch.Tensor, DecodingBatch, int]:
    """Run the prompt's columns that `prompt["cache"]` (if any) does not hold yet. Returns the last column's
    logits, the batch, and the number of columns the cache held."""
    input_ids, attention_mask = prompt["input_ids"], prompt["attention_mask"]
    positions = prompt.get("position_ids")
    if positions is None:  # as generate computes them (Qwen-VL: M-RoPE over the vision tokens)
        positions = generator._prepare_position_ids_for_generation(input_ids, dict(prompt))
    cache = prompt.get("cache")
    cache = DynamicCache(config=generator.config) if cache is None else cache
    first_fed = cache.get_seq_length()
    vision_inputs = {key: value for key, value in prompt.items() if key not in PROMPT_KEYS}
    if "mm_token_type_ids" in vision_inputs:
        vision_inputs["mm_token_type_ids"] = vision_inputs["mm_token_type_ids"][:, first_fed:]
    output = generator(input_ids=input_ids[:, first_fed:], attention_mask=attention_mask,
                       position_ids=positions[..., first_fed:], cache=cache, use_cache=True, logits_to_keep=1,
                       **vision_inputs)  # fmt: skip
    return output.logits[:, -1], DecodingBatch(cache, attention_mask, positions), first_fed


@torch.no_grad()
def decode_greedily(
    generator: PreTrainedModel, prompt: dict, config: GenerationConfig, streamer: BaseStreamer | None = None,
    captured: list | None = None, embedding_token_id: int | None = None, gate=None,
) -> Generation:  # fmt: skip
    """Greedy traces of a left-padded prompt batch, at most `config.max_new_tokens` tokens each, never containing
    `config.suppress_tokens`, ended by any of `config.eos_token_id`; rows leave the batch once they have ended.

    Args:
        prompt: `input_ids`, `attention_mask` and the vision inputs, as for `generate`; optionally `position_ids`
            and a `cache` holding the prompt's first columns (shared prefixes).
        streamer: receives the prompt, then each generated token, as from `generate` (a batch of one).
        captured: the list that `capture_layer_output` fills with a layer's outputs, for the unified single pass;
            each row then also feeds `embedding_token_id` after its trace (see the module docstring).
        gate: called once on the captured layer's state of each prompt's last token, after the prefill; returns
            a bool per row: end this trace before its first token.
    """
    budget = config.max_new_tokens
    stop_ids = torch.tensor(np.atleast_1d(config.eos_token_id), device=prompt["input_ids"].device)
    if streamer is not None:
        streamer.put(prompt["input_ids"].cpu())
    logits, batch, first_fed = prefill(generator, prompt)
    prompt_states = captured.pop() if captured is not None else None
    skipped = torch.zeros_like(batch.rows, dtype=torch.bool) if gate is None else gate(prompt_states[:, -1]).bool()
    traces = TraceBuffer(batch.rows, budget, config.pad_token_id, prompt_states)
    for step in range(budget):
        tokens = greedy_tokens(logits, config.suppress_tokens)
        if step == 0:
            tokens = torch.where(skipped, stop_ids[0], tokens)
        if streamer is not None:
            streamer.put(tokens.cpu())
        ended = traces.record(batch.rows, step, tokens, stop_ids)
        if step == budget - 1:
            break
        logits = advance(generator, batch, tokens, ended, traces, step, captured, embedding_token_id)
        if batch.rows.numel() == 0:
            break
    if captured is not None and batch.rows.numel() > 0:
        feed_the_bound_rows(generator, batch, ended, traces, captured, embedding_token_id)
    if streamer is not None:
        streamer.end()
    return traces.generation(first_fed, prompt["attention_mask"][:, first_fed:], skipped)


def greedy_tokens(logits: torch.Tensor, suppressed: list[int] | None) -> torch.Tensor:
    """Each row's most likely token that is not suppressed (in fp32, as `generate` scores)."""
    scores = logits.float()
    if suppressed:
        scores[:, suppressed] = float("-inf")
    return scores.argmax(dim=-1)


class TraceBuffer:
    """The tokens chosen so far per row of the whole batch, where each trace ended, and (single pass) the captured
    layer's state of each trace token and embedding token fed."""

    def __init__(self, rows: torch.Tensor, budget: int, pad_id: int, prompt_states: torch.Tensor | None):
        size, device = rows.numel(), rows.device
        self.generated = torch.full((size, budget), pad_id, dtype=torch.long, device=device)
        self.lengths = torch.full((size,), budget, dtype=torch.long, device=device)  # a cut trace keeps the bound
        self.prompt_states = prompt_states
        self.states = None if prompt_states is None else prompt_states.new_zeros(size, budget + 1,
                                                                                  prompt_states.shape[-1])  # fmt: skip

    def record(self, rows: torch.Tensor, step: int, tokens: torch.Tensor, stop_ids: torch.Tensor) -> torch.Tensor:
        """Record the tokens chosen at `step` for `rows`; returns which of them ended their trace."""
        self.generated[rows, step] = tokens
        ended = torch.isin(tokens, stop_ids)
        self.lengths[rows[ended]] = step
        return ended

    def generation(self, first_fed: int, fed_mask: torch.Tensor, skipped: torch.Tensor) -> Generation:
        lengths, rows = self.lengths.tolist(), self.generated.tolist()
        source_rows = None
        if self.states is not None:
            pads = (fed_mask == 0).sum(dim=1).tolist()
            source_rows = [torch.cat([self.prompt_states[i, pads[i] :], self.states[i, : length + 1]])
                           for i, length in enumerate(lengths)]  # fmt: skip
        budget = self.generated.shape[1]
        return Generation([row[:length] for row, length in zip(rows, lengths)],
                          [length == budget for length in lengths], budget, first_fed, source_rows,
                          skipped.tolist())  # fmt: skip


def advance(generator, batch: DecodingBatch, tokens, ended, traces: TraceBuffer, step: int, captured,
            embedding_token_id) -> torch.Tensor | None:  # fmt: skip
    """Feed the chosen tokens of the rows whose trace goes on; the others leave the batch. In the single pass a row
    whose trace has just ended feeds the embedding token first, and leaves with its state."""
    if captured is None:
        batch.keep(~ended)
        return batch.step(generator, tokens[~ended]) if batch.rows.numel() else None
    logits = batch.step(generator, torch.where(ended, embedding_token_id, tokens))
    traces.states[batch.rows, step] = captured.pop()[:, 0]
    batch.keep(~ended)
    return logits[~ended]


def feed_the_bound_rows(generator, batch: DecodingBatch, ended, traces: TraceBuffer, captured, embedding_token_id):
    """Single pass, rows still in the batch at the bound: a trace cut there feeds its last token (generated, never
    fed) and the embedding token; a trace that ended at the last step feeds a masked pad and the embedding token."""
    last = traces.generated[batch.rows, -1]
    embedding = torch.full_like(last, embedding_token_id)
    batch.feed(generator, torch.stack([torch.where(ended, embedding, last), embedding], dim=1),
               torch.stack([~ended, torch.ones_like(ended)], dim=1))  # fmt: skip
    states = captured.pop()
    budget = traces.generated.shape[1]
    traces.states[batch.rows[~ended], budget - 1] = states[~ended, 0]
    traces.states[batch.rows, traces.lengths[batch.rows]] = states[:, 1]


@torch.no_grad()
def decode_with_generate(generator: PreTrainedModel, prompt: dict, config: GenerationConfig,
                         streamer: BaseStreamer | None = None) -> Generation:  # fmt: skip
    """The same greedy traces through transformers' `generate` (every row decodes until the batch's longest trace
    ends), with the cache `config.cache_implementation` names: `"static"` is preallocated, and `generate` compiles
    the forward for it on CUDA. `prompt` as for `decode_greedily` (with a static cache: without a `cache`)."""
    sequences = generator.generate(**prompt, generation_config=config, streamer=streamer).sequences
    stop_ids = set(np.atleast_1d(config.eos_token_id).tolist())
    trace_ids = []
    for row in sequences[:, prompt["input_ids"].shape[1] :].tolist():
        trace_ids.append(row[: next((j for j, token in enumerate(row) if token in stop_ids), len(row))])
    cut = [len(ids) == config.max_new_tokens for ids in trace_ids]
    return Generation(trace_ids, cut, config.max_new_tokens)
