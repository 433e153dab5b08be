"""Think-Then-Embed (TTE) model: reason about an input, then embed input + trace.

`TTEModel.forward` turns already-built embedding inputs into L2-normalised vectors (with gradients, for training).
`TTEModel.embed` orchestrates inference as a chain over one `EmbedCall`: `_start_call` (parse the inputs, take given
traces as checked token ids, decide who thinks) -> `_batches` (who thinks together, longest first) -> `_embed_batch`
(generate traces, build the embedding inputs, forward, pool) -> `_truncated`. In the unified variant the generation
step also captures the hidden states that the head needs, so the trunk is not run a second time over prompt + trace.
"""

import copy
import hashlib
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from contextvars import ContextVar
from dataclasses import asdict, dataclass, field, fields

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    BatchFeature,
    DynamicCache,
    GenerationConfig,
    PreTrainedModel,
)
from transformers.generation.streamers import BaseStreamer
from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING
from transformers.utils import ModelOutput, logging

from .configuration_tte import THINK_POLICIES, TTEConfig
from .decoding_tte import Generation, decode_greedily, decode_with_generate
from .processing_tte import EMBEDDING_TOKEN, TTEInput, TTEProcessor
from .reasoning_tte import OpenAIChatReasoner
from .trace_cache_tte import TraceCache, trace_key
from .video_tte import VideoSampling


logger = logging.get_logger(__name__)
SIDES = ("query", "document")


@dataclass
class TTEEmbeddingOutput(ModelOutput):
    """Output of `TTEModel.forward`.

    Args:
        embeddings (`torch.FloatTensor` of shape `(batch_size, embedding_dim)`): pooled (and normalised) embeddings.
    """

    embeddings: torch.FloatTensor | None = None


def pool_embeddings(hidden_states: torch.Tensor, attention_mask: torch.Tensor, normalize: bool) -> torch.Tensor:
    """Return each row's post-norm state at its last real token, L2-normalised when `normalize`.

    This is the only pooling in the project: the model, the sentence-transformers module, the endpoint handler and
    the training losses all get vectors through `TTEModel.forward`, which calls this.

    Args:
        hidden_states: `(batch, seq_len, hidden)`, taken after the final norm.
        attention_mask: `(batch, seq_len)`, 1 for real tokens; left or right padding.
    """
    last = attention_mask.shape[1] - 1 - attention_mask.flip(1).argmax(dim=1)  # first 1 from the right
    rows = torch.arange(hidden_states.shape[0], device=hidden_states.device)
    pooled = hidden_states[rows, last].float()  # normalise in fp32: bf16 norms drift
    return F.normalize(pooled, dim=-1) if normalize else pooled


def as_trace_cache(cache) -> TraceCache | None:
    """A trace cache from a file path, or the cache itself: any object with `TraceCache`'s `get_many` and `put_many`
    (a `TraceCache` imported from the package is another class than this Hub module's own), or None."""
    if isinstance(cache, (str, os.PathLike)):
        return TraceCache(cache)
    if cache is None or all(callable(getattr(cache, method, None)) for method in ("get_many", "put_many")):
        return cache
    raise TypeError(f"trace_cache must be a TraceCache (get_many and put_many), a file path or None, got "
                    f"{type(cache).__name__}")


def check_count(name: str, value) -> None:
    """A count argument must be an int >= 1 (a bool is not a count); the error names the argument."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")


def portable_config(config) -> dict:
    """A sub-model's config as saved inside ours, without the folder it was loaded from: a path of the building
    machine would make two builds of the same weights differ (and their model hashes with them)."""
    return {**config.to_dict(), "_name_or_path": ""}


def is_vision_language(config) -> bool:
    return type(config) in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING


def build_generator(config) -> PreTrainedModel:
    """A generative backbone (with LM head) from its config."""
    auto_class = AutoModelForImageTextToText if is_vision_language(config) else AutoModelForCausalLM
    return auto_class.from_config(config)


def base_model_of(model: PreTrainedModel) -> PreTrainedModel:
    """The backbone without its LM head (`Qwen2VLModel`, `LlamaModel`, ...)."""
    return model.model if hasattr(model, "lm_head") else model


def decoder_of(model: PreTrainedModel) -> nn.Module:
    """The text decoder that holds `layers` and `norm` (the language model of a VLM)."""
    base = base_model_of(model)
    return getattr(base, "language_model", base)


# The processor's vision features, as the backbone's forward and generate take them (`second_per_grid_ts`: Qwen2.5-VL).
VISION_INPUT_KEYS = ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw", "second_per_grid_ts")


def vision_inputs_of(features) -> dict:
    """The vision features present in `features` (a processor's output or a dict of them)."""
    return {key: features[key] for key in VISION_INPUT_KEYS if features.get(key) is not None}


def grids_of(features) -> dict:
    """The vision features that place tokens in M-RoPE positions (`position_ids_of`'s `grids`)."""
    return {key: features.get(key) for key in ("image_grid_thw", "video_grid_thw", "second_per_grid_ts")}


def position_ids_of(model: PreTrainedModel, input_ids, attention_mask, mm_token_type_ids=None, **grids):
    """Position ids of left-padded inputs to `model` (a backbone or generator): 3D M-RoPE ids for Qwen-VL (`grids`:
    `image_grid_thw`, `video_grid_thw`, `second_per_grid_ts`, where present), else counted from the first real
    token."""
    base = base_model_of(model)
    if hasattr(base, "get_rope_index"):
        if mm_token_type_ids is None:
            mm_token_type_ids = torch.zeros_like(input_ids)
        grids = {key: value for key, value in grids.items() if value is not None}
        position_ids, _ = base.get_rope_index(input_ids, mm_token_type_ids=mm_token_type_ids,
                                              attention_mask=attention_mask, **grids)  # fmt: skip
        return position_ids
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


class _SourceLayerReached(Exception):
    """Raised by `capture_layer_output(..., stop=True)` to skip the layers above the captured one."""


@dataclass
class LayerCapture:
    """The outputs of one decoder layer during one call: a per-call object, so concurrent calls never mix states."""

    layer: nn.Module
    stop: bool
    outputs: list[torch.Tensor]


# The capture of the running call. A ContextVar is per thread (and per asyncio task), so each of several concurrent
# `embed` calls sees only its own capture while they all run through the same layer modules.
_ACTIVE_CAPTURE: ContextVar[LayerCapture | None] = ContextVar("tte_active_capture", default=None)


def record_layer_output(module: nn.Module, args, output) -> None:
    """The permanent forward hook of the unified source layer: records into the calling thread's capture, if any.

    It is registered once, when the model is built: hooks added and removed per call would fire for every thread
    that runs the layer meanwhile, and mutate the module's hook table while other threads iterate over it.
    """
    capture = _ACTIVE_CAPTURE.get()
    if capture is None or capture.layer is not module:
        return
    capture.outputs.append(output[0] if isinstance(output, tuple) else output)
    if capture.stop:
        raise _SourceLayerReached


@contextmanager
def capture_layer_output(layer: nn.Module, stop: bool = False):
    """Yield the list of the outputs of `layer` during this call (prefill and each decoding step).

    `layer` must carry the `record_layer_output` hook. With `stop=True` the forward pass ends right after `layer`:
    the layers above it are not run.
    """
    capture = LayerCapture(layer, stop, [])
    token = _ACTIVE_CAPTURE.set(capture)
    try:
        yield capture.outputs
    except _SourceLayerReached:
        pass
    finally:
        _ACTIVE_CAPTURE.reset(token)


class TTEHead(nn.Module):
    """The unified variant's embedding head: a trainable copy of the backbone's last N decoder layers + final norm.

    It is an instance of the backbone's own text-model class with N layers, so rotary embeddings, masks and layers
    run through transformers' code. It reads `inputs_embeds` = the backbone's layer L-N outputs; its token embedding
    table is dropped because it never sees token ids.
    """

    def __init__(self, config: TTEConfig):
        super().__init__()
        head_config = copy.deepcopy(config.backbone_config.get_text_config())
        head_config.num_hidden_layers = config.head_num_layers
        if getattr(head_config, "layer_types", None) is not None:
            head_config.layer_types = head_config.layer_types[-config.head_num_layers :]
        self.decoder = AutoModel.from_config(head_config)
        del self.decoder.embed_tokens

    def forward(self, source_states, attention_mask, position_ids, cache: DynamicCache | None = None) -> torch.Tensor:
        output = self.decoder(inputs_embeds=source_states, attention_mask=attention_mask, position_ids=position_ids,
                              cache=cache, use_cache=cache is not None)  # fmt: skip
        return output.last_hidden_state


class TTEGate(nn.Module):
    """The `think="auto"` gate: a logistic probe on a state the model computes anyway, whose logit says whether a
    query's trace is worth generating (above `config.gate_threshold`: think).

    It reads, for the unified variant, the layer L-N state of the reasoning prompt's last token from the prefill that
    generation needs (so a skipped query costs one more token, not a second pass); for the other variants, the
    query's no-thinking embedding (kept as its embedding when the gate says no). `training.train_gate` fits it.
    """

    def __init__(self, config: TTEConfig):
        super().__init__()
        self.norm = nn.LayerNorm(config.embedding_dim)  # source-layer states are not normalised
        self.score = nn.Linear(config.embedding_dim, 1)

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        """`(batch, hidden)` states -> `(batch,)` logits."""
        return self.score(self.norm(states.to(self.score.weight.dtype))).squeeze(-1).float()


KeysValues = tuple[tuple[torch.Tensor, torch.Tensor], ...]


@dataclass(frozen=True)
class PrefixStates:
    """The keys and values of a shared template prefix (batch 1): the trunk's layers up to the one whose outputs
    embed (all layers, or the unified source layer's), and the unified head's layers."""

    length: int
    trunk: KeysValues
    head: KeysValues | None


@dataclass
class EmbedStats:
    """What one `embed` call did and cost (`embed(..., return_stats=True)`); stats add up with `+`.

    Every input is counted once: `generated + cache_hits + given + without_trace == inputs`.
    """

    inputs: int = 0
    generated: int = 0  # traces generated in the call
    cache_hits: int = 0  # traces read from the trace cache instead
    given: int = 0  # traces passed in (`reasoning=`, or an input's own "reasoning")
    without_trace: int = 0  # embedded with the empty trace: the thinking policy (or the gate) said no
    gate_skips: int = 0  # of those, the queries the think="auto" gate decided not to think about
    generated_tokens: int = 0  # tokens of the traces generated in the call
    trace_tokens: int = 0  # tokens of the traces the inputs were embedded with: generated, cached or given
    cut_traces: int = 0  # generated traces that hit the length bound
    generation_seconds: float = 0.0  # generating traces (for the unified model, with the prefill the head reuses)
    embedding_seconds: float = 0.0  # building the embedding inputs, forward and pooling

    def __add__(self, other: "EmbedStats") -> "EmbedStats":
        return EmbedStats(**{stat.name: getattr(self, stat.name) + getattr(other, stat.name)
                             for stat in fields(self)})  # fmt: skip

    @property
    def think_rate(self) -> float:
        """The share of inputs embedded with a trace the model made (generated now, or from the trace cache)."""
        return (self.generated + self.cache_hits) / self.inputs if self.inputs else 0.0

    def count_gate_skips(self, count: int) -> None:
        self.without_trace += count
        self.gate_skips += count

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class PrefixSplit:
    """Left-padded rows cut after their shared prefixes (`prefix_lengths`, 0 for none): each distinct prefix, and each
    row's rest at the positions it has in the whole sequence.

    Left padding puts each row's tokens after its prefix in its last columns. Moving the prefix out and the pads in
    keeps every such token in its column, so the rests are the batch's last `rest_ids.shape[1]` columns.
    """

    prefixes: list[tuple[int, ...]]  # the distinct prefixes, in order of first use
    rows: torch.Tensor  # (batch,): each row's index in `prefixes`; len(prefixes) for a row without one
    prefix_mask: torch.Tensor  # (batch, longest prefix): each row's prefix right-aligned
    rest_ids: torch.Tensor
    rest_mask: torch.Tensor
    rest_positions: torch.Tensor

    @classmethod
    def of(cls, input_ids, attention_mask, position_ids, prefix_lengths) -> "PrefixSplit":
        length = input_ids.shape[1]
        lengths = attention_mask.sum(dim=1)
        rest_lengths = lengths - prefix_lengths
        width = int(rest_lengths.max())
        rest_mask = (torch.arange(width, device=input_ids.device) >= width - rest_lengths[:, None]).long()
        starts = (length - lengths).tolist()  # each row's first real column
        prefix_of_row = [tuple(input_ids[i, start : start + n].tolist()) if n else None
                         for i, (start, n) in enumerate(zip(starts, prefix_lengths.tolist()))]  # fmt: skip
        prefixes = list(dict.fromkeys(prefix for prefix in prefix_of_row if prefix is not None))
        rows = torch.tensor([prefixes.index(p) if p is not None else len(prefixes) for p in prefix_of_row],
                            device=input_ids.device)  # fmt: skip
        prefix_width = max(map(len, prefixes))
        prefix_mask = (torch.arange(prefix_width, device=input_ids.device) >= prefix_width - prefix_lengths[:, None])
        # The masked columns of the rests keep pads or prefix tokens: text tokens, never vision placeholders.
        rest_ids = input_ids[:, length - width :]
        return cls(prefixes, rows, prefix_mask.long(), rest_ids, rest_mask, position_ids[..., length - width :])

    @property
    def mask(self) -> torch.Tensor:
        """The attention mask over prefix cache + rest."""
        return torch.cat([self.prefix_mask, self.rest_mask], dim=1)

    def prefix_ids(self, pad_token_id: int) -> torch.Tensor:
        """(batch, longest prefix): each row's prefix ids right-aligned after pads, as `prefix_mask` marks them."""
        ids = torch.full(self.prefix_mask.shape, pad_token_id, dtype=torch.long, device=self.rows.device)
        for i, row in enumerate(self.rows.tolist()):
            if row < len(self.prefixes):
                ids[i, ids.shape[1] - len(self.prefixes[row]) :] = torch.tensor(self.prefixes[row])
        return ids

    def rest_of(self, values: torch.Tensor, fill) -> torch.Tensor:
        """`values` (batch, whole length), e.g. labels, in the rest's columns; `fill` where a row has no rest."""
        return values[:, values.shape[1] - self.rest_mask.shape[1] :].masked_fill(self.rest_mask == 0, fill)

    def cache(self, states: list[KeysValues]) -> DynamicCache:
        """A cache whose row i holds its prefix's keys and values (`states[i]` for `prefixes[i]`) right-aligned.
        Indexing makes new tensors (one view when every row has the same prefix), so a call never writes the stored
        ones, and gradients reach them."""
        batch, width = self.prefix_mask.shape
        if len(states) == 1 and bool((self.rows == 0).all()):
            return DynamicCache([(k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1)) for k, v in states[0]])
        layers = []
        for layer in zip(*states):
            padded = []
            for side in (0, 1):
                tensors = [F.pad(kv[side], (0, 0, width - kv[side].shape[2], 0)) for kv in layer]
                padded.append(torch.cat([*tensors, torch.zeros_like(tensors[0])])[self.rows])
            layers.append(tuple(padded))
        return DynamicCache(layers)


def dropout_is_active(model: nn.Module) -> bool:
    """Whether a forward of `model` draws dropout masks: a prefix run once for many rows would then share one mask
    among them, so prefixes are only shared without it."""
    if not model.training:
        return False
    return any(
        (isinstance(module, nn.Dropout) and module.p > 0 and module.training)
        or (isinstance(module, PreTrainedModel) and float(getattr(module.config, "attention_dropout", 0.0) or 0.0) > 0)
        for module in model.modules()
    )


def right_aligned(rows: list[torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
    """`(batch, mask width, hidden)`: each row's states in its last columns, as left padding places its tokens."""
    states = rows[0].new_zeros(mask.shape[0], mask.shape[1], rows[0].shape[-1])
    for i, row in enumerate(rows):
        states[i, mask.shape[1] - row.shape[0] :] = row
    return states


def keys_values(cache: DynamicCache) -> KeysValues:
    return tuple((layer.keys, layer.values) for layer in cache.layers if layer.is_initialized)


def prefix_keys_values(model: PreTrainedModel, prefix_ids: tuple[int, ...]) -> KeysValues:
    """The keys and values of every layer of `model` (a backbone or generator; its LM head is not run) over one
    prefix, in the graph when gradients are on."""
    input_ids = torch.tensor([prefix_ids], device=model.device)
    attention_mask = torch.ones_like(input_ids)
    cache = DynamicCache()
    base_model_of(model)(input_ids=input_ids, attention_mask=attention_mask, cache=cache, use_cache=True,
                         position_ids=position_ids_of(model, input_ids, attention_mask))  # fmt: skip
    return keys_values(cache)


@dataclass
class EmbedCall:
    """One `embed` call: its parsed inputs, who thinks, and per input the trace it is embedded with (given, or
    generated during the call) and its embedding. Each call has its own, so concurrent calls share nothing."""

    items: list[TTEInput]
    generate: list[bool]  # whether the input gets a new trace in this call
    trace_ids: list[list[int]]  # checked once: given traces when the call starts, generated ones when generated
    trace_texts: list[str | None]  # None for a trace given as ids: decoded only if the traces are returned as text
    embeddings: torch.Tensor  # (inputs, embedding_dim), in input order
    gated: list[bool]  # whether the think="auto" gate still has to decide if the input thinks
    streamer: BaseStreamer | None = None  # receives the one generated trace's tokens as they come
    cache: TraceCache | None = None  # where traces are looked up before generating, and stored after
    cache_keys: dict[int, tuple[str, str]] = field(default_factory=dict)  # input -> (key, fields) of its new trace
    stats: EmbedStats = field(default_factory=EmbedStats)

    @staticmethod
    def name(i: int) -> str:
        return f"inputs[{i}]"


class PrefixCache:
    """A bounded, thread-safe LRU of `PrefixStates`.

    Keys name everything the states depend on: the prefix ids (so the task family and the prompt-set version), the
    dtype and device, and the weights' in-place version counters (training steps, `load_state_dict`), so a cache can
    never serve states of other weights.
    """

    def __init__(self, max_entries: int = 32):
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple, PrefixStates] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple, compute: Callable[[], PrefixStates]) -> PrefixStates:
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key]
        states = compute()  # outside the lock: two threads may both compute a new prefix, and get equal states
        with self._lock:
            self._entries[key] = states
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        return states

    def __reduce__(self):
        """A copied or pickled model starts with an empty cache: entries are derived data, and a lock cannot be
        copied."""
        return PrefixCache, (self.max_entries,)

    def __len__(self) -> int:
        return len(self._entries)


class TTEPreTrainedModel(PreTrainedModel):
    config_class = TTEConfig
    base_model_prefix = "tte"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _no_split_modules = ["Qwen2VLDecoderLayer", "Qwen2_5_VLDecoderLayer", "Qwen3VLTextDecoderLayer", "LlamaDecoderLayer"]


class TTEModel(TTEPreTrainedModel):
    r"""A reasoning-conditioned embedding model.

    Attributes by variant:
        - `backbone`: the embedder. Generative (`*ForConditionalGeneration` / `*ForCausalLM`) for `"unified"`, where
          it also reasons; the base model without LM head for `"teacher"` / `"student"`.
        - `reasoner`: the student's own generative reasoner (`"student"` only).
        - `head`: the unified embedding head (`"unified"` only).
        - `external_reasoner`: for `"teacher"`, a callable `(list[TTEInput], TTEProcessor) -> list[str]`, e.g.
          `OpenAIChatReasoner`; set it with `set_reasoner`. Not saved.
    """

    def __init__(self, config: TTEConfig):
        super().__init__(config)
        if config.variant == "unified":
            self.backbone = build_generator(config.backbone_config)
            self.head = TTEHead(config)
            self.source_layer().register_forward_hook(record_layer_output)  # inert outside capture_layer_output
        else:
            self.backbone = AutoModel.from_config(config.backbone_config)
        if config.variant == "student":
            self.reasoner = build_generator(config.reasoner_config)
        if config.gate_threshold is not None:
            self.gate = TTEGate(config)
        self.external_reasoner = None
        self._trace_cache = None
        self._processor = None
        self._prefix_cache = PrefixCache()
        self._weights_digest = (None, None)  # (what it was computed from, sha256): `reasoner_weights_digest`
        self.post_init()

    # ----- construction -----

    @classmethod
    def from_backbone(
        cls, backbone: PreTrainedModel, processor: TTEProcessor, variant: str = "unified",
        reasoner: PreTrainedModel | None = None, **config_kwargs,
    ) -> "TTEModel":  # fmt: skip
        """Build a TTE model from a (pretrained) generative backbone, copying its weights.

        For `"unified"` the head is initialised from the backbone's last N decoder layers and final norm.

        Args:
            backbone: generative model (`AutoModelForImageTextToText` or `AutoModelForCausalLM`).
            processor: a `TTEProcessor` whose tokenizer holds `EMBEDDING_TOKEN` (resize the backbone first).
            variant: `"unified"`, `"student"` or `"teacher"`.
            reasoner: the student's reasoner (a generative model); required for `"student"`.
            **config_kwargs: further `TTEConfig` fields.
        """
        tokenizer = processor.tokenizer
        config = TTEConfig(
            backbone_config=portable_config(backbone.config),
            reasoner_config=portable_config(reasoner.config) if reasoner is not None else None,
            variant=variant,
            embedding_token_id=processor.embedding_token_id,
            prompt_set_version=processor.prompt_set_version,
            **config_kwargs,
        )
        config.pad_token_id = tokenizer.pad_token_id
        # Stop where the backbone's own generation config stops (chat models end turns with e.g. <|im_end|>) and at
        # the tokenizer's EOS, which reasoner SFT appends after each trace.
        backbone_stops = getattr(backbone.generation_config, "eos_token_id", None)
        config.eos_token_id = sorted({tokenizer.eos_token_id, *np.atleast_1d(backbone_stops or []).tolist()})
        model = cls(config)
        if variant == "unified":
            model.backbone.load_state_dict(backbone.state_dict())
            model.init_head_from_backbone()
        else:
            model.backbone.load_state_dict(base_model_of(backbone).state_dict())
        if reasoner is not None:
            model.reasoner.load_state_dict(reasoner.state_dict())
        model._processor = processor
        return model.to(backbone.dtype).eval()

    def init_head_from_backbone(self) -> None:
        """Copy the backbone's last N decoder layers and final norm into the head (TTE_u initialisation)."""
        trunk = decoder_of(self.backbone)
        first_copied = len(trunk.layers) - self.config.head_num_layers
        for head_layer, trunk_layer in zip(self.head.decoder.layers, trunk.layers[first_copied:]):
            head_layer.load_state_dict(trunk_layer.state_dict())
        self.head.decoder.norm.load_state_dict(trunk.norm.state_dict())

    def get_input_embeddings(self) -> nn.Module:
        """The embedder's token embeddings (accelerate's FSDP and `resize_token_embeddings` look for them)."""
        return self.backbone.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.backbone.set_input_embeddings(value)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """`PreTrainedModel.from_pretrained`, remembering where from so the processor loads from the same revision."""
        model = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        # The processor loads with the caller's own remote-code choice (default off): loading our classes never
        # consents to other code shipped in the folder, such as a custom tokenizer.
        hub_keys = ("revision", "subfolder", "token", "cache_dir", "local_files_only", "trust_remote_code")
        loaded = model[0] if isinstance(model, tuple) else model  # output_loading_info=True returns a tuple
        loaded._processor_source = (pretrained_model_name_or_path, {k: kwargs[k] for k in hub_keys if k in kwargs})
        return model

    @property
    def processor(self) -> TTEProcessor:
        """The processor saved next to the weights, loaded on first use."""
        if self._processor is None:
            path, hub_kwargs = getattr(self, "_processor_source", (self.config.name_or_path, {}))
            # Unset means no consent: transformers would otherwise stop and ask on a terminal.
            hub_kwargs = {"trust_remote_code": False, **hub_kwargs}
            self._processor = TTEProcessor.from_pretrained(path, **hub_kwargs)
        return self._processor

    @processor.setter
    def processor(self, processor: TTEProcessor) -> None:
        self._processor = processor

    def save_pretrained(self, save_directory, *args, **kwargs):
        """Save weights, config and code, plus the processor when one is attached, so the folder is self-contained."""
        # config.json maps AutoProcessor too, so AutoProcessor finds our class from the model config alone.
        self.config.auto_map = {**(getattr(self.config, "auto_map", None) or {}),
                                "AutoProcessor": "processing_tte.TTEProcessor"}  # fmt: skip
        super().save_pretrained(save_directory, *args, **kwargs)
        # A model loaded from a folder has a processor there even if it was never used: keep it with the weights.
        processor = self._processor if self._processor is not None or not self.config.name_or_path else self.processor
        self.generator_generation_config().save_pretrained(save_directory)
        if processor is not None:
            processor.save_pretrained(save_directory)

    def set_reasoner(
        self, reasoner: Callable[[list[TTEInput], TTEProcessor], list[str]] | None = None, *,
        base_url: str | None = None, model: str | None = None, api_key: str | None = None,
    ) -> None:  # fmt: skip
        """Plug in an external reasoner (teacher variant, or to override the built-in one).

        Pass a callable `(items, processor) -> traces`, or `base_url` + `model` of an OpenAI-compatible chat endpoint
        (vLLM, SGLang, TGI). `set_reasoner(None)` goes back to the built-in reasoner.
        """
        if base_url is not None:
            if reasoner is not None or model is None:
                raise ValueError("pass either a reasoner callable, or base_url together with model")
            reasoner = OpenAIChatReasoner(base_url, model, api_key=api_key, max_tokens=self.config.max_new_tokens)
        self.external_reasoner = reasoner

    # ----- the trace cache -----

    @property
    def trace_cache(self) -> TraceCache | None:
        """The persistent trace cache every `embed` call uses (`trace_cache_tte.TraceCache`), or None. Set it to a
        `TraceCache` or a file path; `embed(..., trace_cache=...)` overrides it per call. Not saved."""
        return self._trace_cache

    @trace_cache.setter
    def trace_cache(self, cache) -> None:
        self._trace_cache = as_trace_cache(cache)

    def reasoner_weights_digest(self) -> str:
        """sha256 over the built-in reasoner's weights (names, dtypes, shapes, bytes). Recomputed only when a weight
        changed (its in-place version counter, e.g. a training step or `load_state_dict`), moved or was replaced."""
        tensors = self.generator().state_dict(keep_vars=True)
        source = tuple((name, tensor._version, tensor.data_ptr(), tensor.dtype, tensor.device)
                       for name, tensor in tensors.items())  # fmt: skip
        if self._weights_digest[0] != source:
            digest = hashlib.sha256()
            for name, tensor in tensors.items():
                digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}:".encode())
                digest.update(tensor.detach().contiguous().view(-1).view(torch.uint8).cpu().numpy().tobytes())
            self._weights_digest = (source, digest.hexdigest())
        return self._weights_digest[1]

    def trace_cache_context(self, max_new_tokens: int | None = None) -> dict:
        """Everything but the input that a trace depends on, for `trace_cache_tte.trace_key`: the reasoner (its
        weights and decoding settings, or an external reasoner's `identity`) and the processor's
        `reasoning_settings` (prompt set, chat template, image resizing).

        Raises:
            ValueError: an external reasoner without `identity`: its traces cannot be told apart from another's.
        """
        if self.external_reasoner is not None:
            identity = getattr(self.external_reasoner, "identity", None)
            if identity is None:
                raise ValueError(f"the external reasoner {self.external_reasoner!r} has no `identity` (a JSON-able "
                                 "dict naming it and its decoding), so a trace cache cannot key its traces; add one "
                                 "or embed without a trace cache")  # fmt: skip
            reasoner = {"external": identity}
        else:
            decoding = self.generator_generation_config(max_new_tokens).to_diff_dict()
            decoding.pop("transformers_version", None)
            reasoner = {"weights": self.reasoner_weights_digest(), "decoding": decoding}
        return {"reasoner": reasoner, **self.processor.reasoning_settings()}

    # ----- forward: built inputs -> embeddings -----

    def position_ids_for(self, input_ids, attention_mask, mm_token_type_ids=None, **grids):
        """Position ids of left-padded inputs: 3D M-RoPE ids for Qwen-VL, else counted from the first real token."""
        return position_ids_of(self.backbone, input_ids, attention_mask, mm_token_type_ids, **grids)

    def positions_of(self, features) -> torch.LongTensor:
        """`position_ids_for` the processor's `features` (their ids, mask, token types and vision grids)."""
        return self.position_ids_for(features["input_ids"], features["attention_mask"],
                                     features.get("mm_token_type_ids"), **grids_of(features))  # fmt: skip

    def source_layer(self) -> nn.Module:
        """Unified variant: the backbone decoder layer whose outputs feed the head (layer L-N by default)."""
        return decoder_of(self.backbone).layers[self.config.head_source_layer - 1]

    def source_states(self, input_ids, attention_mask, position_ids, **vision_inputs) -> torch.Tensor:
        """Unified variant: the source layer's outputs over whole embedding inputs (the layers above are skipped)."""
        with capture_layer_output(self.source_layer(), stop=True) as captured:
            base_model_of(self.backbone)(
                input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False,
                **vision_inputs,
            )  # fmt: skip
        return captured[0]

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        image_grid_thw: torch.LongTensor | None = None,
        mm_token_type_ids: torch.IntTensor | None = None,
        pixel_values_videos: torch.Tensor | None = None,
        video_grid_thw: torch.LongTensor | None = None,
        second_per_grid_ts: torch.Tensor | None = None,
        source_states: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        prefix_lengths: torch.LongTensor | None = None,
        **kwargs,
    ) -> TTEEmbeddingOutput:
        r"""Embed already-built embedding inputs (`TTEProcessor.build_embedding_inputs`); gradients flow.

        Args:
            input_ids (`torch.LongTensor` of shape `(batch, seq_len)`): prompt + trace + embedding token, left-padded.
            attention_mask (`torch.Tensor` of shape `(batch, seq_len)`).
            pixel_values, image_grid_thw, mm_token_type_ids, pixel_values_videos, video_grid_thw, second_per_grid_ts:
                the Qwen-VL vision inputs from the processor.
            source_states (`torch.Tensor` of shape `(batch, seq_len, hidden)`, *optional*): unified variant only;
                layer L-N states already computed (by generation), so the trunk is skipped.
            position_ids (`torch.LongTensor`, *optional*): from `position_ids_for`, when the caller has them already.
            prefix_lengths (`torch.LongTensor` of shape `(batch,)`, *optional*): from the processor: how many of each
                row's first tokens are its task family's shared template prefix. With `config.use_prefix_cache`
                each distinct prefix is run once (from the prefix cache when no gradient is needed) and only the
                rest of each row is fed; the embeddings are the same.

        Returns:
            `TTEEmbeddingOutput` with `embeddings` of shape `(batch, embedding_dim)`, fp32.
        """
        vision_inputs = vision_inputs_of({"pixel_values": pixel_values, "image_grid_thw": image_grid_thw,
                                          "pixel_values_videos": pixel_values_videos, "video_grid_thw": video_grid_thw,
                                          "second_per_grid_ts": second_per_grid_ts})  # fmt: skip
        if position_ids is None:
            position_ids = self.positions_of({"input_ids": input_ids, "attention_mask": attention_mask,
                                              "mm_token_type_ids": mm_token_type_ids, **vision_inputs})  # fmt: skip
        if (self.config.use_prefix_cache and source_states is None and prefix_lengths is not None
                and bool(prefix_lengths.any()) and not dropout_is_active(self)):  # fmt: skip
            return self._forward_after_prefixes(input_ids, attention_mask, position_ids, prefix_lengths, vision_inputs)
        if self.config.variant == "unified":
            if source_states is None:
                source_states = self.source_states(input_ids, attention_mask, position_ids, **vision_inputs)
            hidden_states = self.head(source_states, attention_mask, position_ids)
        else:
            hidden_states = self.backbone(
                input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, **vision_inputs
            ).last_hidden_state  # post-norm
        return TTEEmbeddingOutput(embeddings=pool_embeddings(hidden_states, attention_mask, self.config.normalize))

    # ----- shared template prefixes, run once -----

    def prefix_states(self, prefix_ids: tuple[int, ...], for_generation: bool = False) -> PrefixStates:
        """The keys and values of a shared template prefix: from the prefix cache when no gradient is needed, else
        computed in the graph. Causal attention makes them independent of what follows, so reusing them is exact.

        `for_generation`: the generator's (every layer of the reasoner, or of the unified backbone), else the
        embedder's (up to the layer whose outputs embed, and the unified head's).
        """
        if torch.is_grad_enabled() and any(parameter.requires_grad for parameter in self.parameters()):
            return self._compute_prefix_states(prefix_ids, for_generation)
        # Optimizer steps and load_state_dict write parameters in place, which bumps their version counters.
        weights_version = sum(parameter._version for parameter in self.parameters())
        key = (prefix_ids, for_generation, self.dtype, self.device, weights_version)
        return self._prefix_cache.get(key, lambda: self._compute_prefix_states(prefix_ids, for_generation))

    def _compute_prefix_states(self, prefix_ids: tuple[int, ...], for_generation: bool) -> PrefixStates:
        if for_generation or self.config.variant != "unified":
            model = self.generator() if for_generation else self.backbone
            return PrefixStates(len(prefix_ids), prefix_keys_values(model, prefix_ids), None)
        input_ids = torch.tensor([prefix_ids], device=self.device)
        attention_mask = torch.ones_like(input_ids)
        position_ids = self.position_ids_for(input_ids, attention_mask)
        trunk = DynamicCache()
        with capture_layer_output(self.source_layer(), stop=True) as captured:
            base_model_of(self.backbone)(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                         cache=trunk, use_cache=True)  # fmt: skip
        head = DynamicCache()
        self.head(captured[0], attention_mask, position_ids, cache=head)
        return PrefixStates(len(prefix_ids), keys_values(trunk), keys_values(head))

    def _generation_inputs(self, inputs: BatchFeature) -> dict:
        """`generate` arguments for reasoning inputs with `prefix_lengths`: each row's family prefix comes from the
        prefix cache, and the prompt is laid out as the cache expects (prefix right-aligned, pads, then the rest)."""
        inputs = dict(inputs)
        prefix_lengths = inputs.pop("prefix_lengths")
        if not self.config.use_prefix_cache or not bool(prefix_lengths.any()):
            return inputs
        input_ids, attention_mask = inputs["input_ids"], inputs["attention_mask"]
        position_ids = self.positions_of(inputs)
        split = PrefixSplit.of(input_ids, attention_mask, position_ids, prefix_lengths)
        states = [self.prefix_states(prefix, for_generation=True) for prefix in split.prefixes]
        prompt = torch.cat([split.prefix_ids(self.config.pad_token_id), split.rest_ids], dim=1)
        if "mm_token_type_ids" in inputs:  # prefixes are text
            rest_types = split.rest_of(inputs["mm_token_type_ids"], 0)
            inputs["mm_token_type_ids"] = torch.cat([torch.zeros_like(split.prefix_mask), rest_types], dim=1)
        inputs.update(input_ids=prompt, attention_mask=split.mask)
        # The whole prompt's positions, as generate computes them without a cache: given a non-empty cache, Qwen-VL's
        # generate would instead reuse the M-RoPE offsets that the model's last call (in any thread) left on it.
        inputs["position_ids"] = self.generator()._prepare_position_ids_for_generation(prompt, dict(inputs))
        inputs["cache"] = split.cache([state.trunk for state in states])
        return inputs

    def _forward_after_prefixes(self, input_ids, attention_mask, position_ids, prefix_lengths, vision_inputs):
        """`forward` that runs each distinct prefix once (`prefix_states`) and each row's tokens after it
        (`PrefixSplit`)."""
        split = PrefixSplit.of(input_ids, attention_mask, position_ids, prefix_lengths)
        states = [self.prefix_states(prefix) for prefix in split.prefixes]
        trunk = split.cache([state.trunk for state in states])
        rest = {"input_ids": split.rest_ids, "attention_mask": split.mask, "position_ids": split.rest_positions}
        if self.config.variant == "unified":
            with capture_layer_output(self.source_layer(), stop=True) as captured:
                base_model_of(self.backbone)(**rest, cache=trunk, use_cache=True, **vision_inputs)
            head = split.cache([state.head for state in states])
            hidden_states = self.head(captured[0], split.mask, split.rest_positions, cache=head)
        else:
            hidden_states = self.backbone(**rest, cache=trunk, use_cache=True, **vision_inputs).last_hidden_state
        return TTEEmbeddingOutput(embeddings=pool_embeddings(hidden_states, split.rest_mask, self.config.normalize))

    # ----- reasoning -----

    def generator(self) -> PreTrainedModel:
        return self.backbone if self.config.variant == "unified" else self.reasoner

    def generator_generation_config(self, max_new_tokens: int | None = None) -> GenerationConfig:
        """Greedy, bounded decoding; the tokens a trace may not contain are suppressed, so a trace is plain text."""
        suppressed = {self.config.embedding_token_id, self.config.pad_token_id}  # a pad in a trace reads as padding
        if self._processor is not None:
            tokenizer = self._processor.tokenizer
            for token in self._processor.forbidden_text_tokens:
                token_id = tokenizer.convert_tokens_to_ids(token)
                # A token the vocabulary lacks converts to the unk id; only the token's own id is suppressed.
                if token_id is not None and tokenizer.convert_ids_to_tokens(token_id) == token:
                    suppressed.add(token_id)
        suppressed -= set(np.atleast_1d(self.config.eos_token_id).tolist())  # generation must still stop
        return GenerationConfig(
            do_sample=False,
            max_new_tokens=max_new_tokens or self.config.max_new_tokens,
            eos_token_id=self.config.eos_token_id,
            pad_token_id=self.config.pad_token_id,
            suppress_tokens=sorted(suppressed),
            return_dict_in_generate=True,
            cache_implementation="static" if self.config.generation_cache == "static" else None,
        )

    @property
    def context_window(self) -> int:
        """Tokens the backbone (and a student's reasoner) can attend over: `max_position_embeddings` of its text
        config. Longer inputs are refused, never cut."""
        configs = [self.config.backbone_config, self.config.reasoner_config]
        return min(config.get_text_config().max_position_embeddings for config in configs if config is not None)

    def trace_budget(self, prompt_mask: torch.Tensor, max_new_tokens: int | None, where: list[str]) -> int:
        """The trace-length bound of one generation batch: `max_new_tokens` (default `config.max_new_tokens`), lowered
        to what the context window leaves after the batch's longest prompt and the embedding token.

        Args:
            prompt_mask: `(batch, longest prompt)`, the left-padded reasoning prompts' attention mask.
            where: the name of each row in errors, e.g. `"inputs[3]"`.

        Raises:
            ValueError: naming a row whose prompt leaves no room for one trace token and the embedding token.
        """
        window = self.context_window
        for name, length in zip(where, prompt_mask.sum(dim=1).tolist()):
            if length + 2 > window:
                raise ValueError(f"{name}: the reasoning prompt is {length} tokens; with one trace token and the "
                                 f"embedding token it does not fit the context window of {window} tokens "
                                 "(max_position_embeddings); shorten the input")  # fmt: skip
        room = window - prompt_mask.shape[1] - 1  # every row's trace starts after the longest prompt (left padding)
        requested = max_new_tokens or self.config.max_new_tokens
        if requested > room:
            logger.warning_once(f"max_new_tokens={requested} is more than the context window of {window} tokens leaves "
                                f"after the longest prompt; traces are bounded at {room} tokens")  # fmt: skip
        return min(requested, room)

    @torch.no_grad()
    def generate_traces(
        self, items: list[TTEInput], max_new_tokens: int | None = None, capture: bool = False,
        where: list[str] | None = None, streamer: BaseStreamer | None = None, gated: list[bool] | None = None,
    ):  # fmt: skip
        """Generate a trace per input with the built-in reasoner (batched, left-padded, greedy, a row leaving the
        batch once its trace ended: `decoding_tte.decode_greedily`), bounded by `trace_budget` (`where` names the
        items in its errors; default `inputs[i]`). A `streamer` (transformers' `BaseStreamer`, for one input)
        receives the tokens as they are generated. `capture` (unified): also collect each row's layer L-N states of
        prompt + trace + embedding token for the single pass. `gated` (unified, with `capture`): the rows whose
        thinking the `think="auto"` gate decides after the prefill; a row it skips gets the empty trace.

        Returns:
            `(traces, trace_ids, generation)`: the trace strings, the generated token ids (what an embedding of the
            trace is fed: `TTEProcessor.build_embedding_inputs`), and the `Generation`.
        """
        processor = self.processor
        inputs = processor.build_reasoning_inputs(items, with_prefix_lengths=True).to(self.device)
        where = where or [f"inputs[{i}]" for i in range(len(items))]
        max_new_tokens = self.trace_budget(inputs["attention_mask"], max_new_tokens, where)
        generation = self._decode(inputs, max_new_tokens, capture, streamer, gated)
        return [processor.decode_trace(ids) for ids in generation.trace_ids], generation.trace_ids, generation

    def _decode(self, inputs: BatchFeature, max_new_tokens: int, capture: bool, streamer, gated) -> Generation:
        """`generate_traces`' decoding, as `config.generation_cache` says: the compacting decode (with the prefix
        cache, the unified single pass's capture and the gate), or transformers' `generate` with a static cache."""
        config = self.generator_generation_config(max_new_tokens)
        if self.config.generation_cache == "static":
            if capture:
                raise ValueError("the unified single pass needs generation_cache='dynamic'")
            prompt = {key: value for key, value in inputs.items() if key != "prefix_lengths"}
            return decode_with_generate(self.generator(), prompt, config, streamer)
        prompt = self._generation_inputs(inputs)  # with the prefix cache: prefixes cached, then only the rests
        gate = None
        if gated is not None and any(gated):
            gated_rows = torch.tensor(gated, device=self.device)
            gate = lambda states: gated_rows & (self.gate(states) <= self.config.gate_threshold)  # noqa: E731
        with capture_layer_output(self.source_layer()) if capture else nullcontext(None) as captured:
            return decode_greedily(self.generator(), prompt, config, streamer, captured,
                                   self.config.embedding_token_id, gate)  # fmt: skip

    def reason(
        self, items: list[TTEInput], max_new_tokens: int | None = None, where: list[str] | None = None
    ) -> list[str]:
        """Traces from the external reasoner if one is set, else from the built-in one (see `generate_traces`)."""
        if self.external_reasoner is not None:
            traces = self.external_reasoner(items, self.processor)
            if len(traces) != len(items):
                raise ValueError(f"external reasoner returned {len(traces)} traces for {len(items)} inputs")
            return traces
        if self.config.variant == "teacher":
            raise ValueError(
                "this is a teacher-variant model: pass reasoning=[...] traces, or plug in a reasoner with "
                "model.set_reasoner(base_url=..., model=...) (an OpenAI-compatible endpoint), or use think=False"
            )
        return self.generate_traces(items, max_new_tokens, where=where)[0]

    def _reasoner_traces(
        self, items, max_new_tokens: int | None, where: list[str], streamer: BaseStreamer | None = None
    ) -> tuple[list[str], list[list], Generation]:
        """`reason`'s traces with the token ids they are embedded with (the built-in reasoner's generated ids, an
        external reasoner's texts tokenised), and the `Generation`."""
        if self.external_reasoner is None and self.config.variant != "teacher":
            traces, trace_ids, generation = self.generate_traces(items, max_new_tokens, where=where, streamer=streamer)
            self._check_generated(trace_ids, where)
            return traces, trace_ids, generation
        traces = self.reason(items, max_new_tokens, where)
        trace_ids = [self.processor.trace_token_ids(trace, f"the reasoner's trace for {name}")
                     for trace, name in zip(traces, where)]  # fmt: skip
        return traces, trace_ids, Generation(trace_ids, [False] * len(traces), None)

    # ----- embed: the public API -----

    def _thinking(self, item: TTEInput, think, side: str) -> str:
        """Whether an input thinks: `"yes"`, `"no"`, or `"gate"` (the `think="auto"` gate decides, for a query)."""
        if item.think is not None:
            return "yes" if item.think else "no"
        policy = think if think is not None else self.config.think
        if isinstance(policy, bool):
            return "yes" if policy else "no"
        if policy not in THINK_POLICIES:
            raise ValueError(f"think={policy!r} must be a bool or one of {THINK_POLICIES}")
        if policy == "auto" and getattr(self, "gate", None) is None:
            raise ValueError("think='auto' needs a gate, and this model has none: add one with training.train_gate")
        if policy == "always" or (policy == "queries" and side == "query"):
            return "yes"
        if policy == "tasks":
            return "yes" if side == "query" and item.task in self._think_tasks() else "no"
        return "gate" if policy == "auto" and side == "query" else "no"

    def _think_tasks(self) -> list[str]:
        """`config.think_tasks`, each a family of this model's prompt set (a name it lacks could never think)."""
        if self.config.think_tasks is None:
            raise ValueError("think='tasks' needs config.think_tasks (the task families that think), and this model "
                             "has none: choose them with training.think_tasks, or set model.config.think_tasks")
        unknown = sorted(set(self.config.think_tasks) - set(self.processor.task_families))
        if unknown:
            raise ValueError(f"config.think_tasks names {unknown}, which prompt set "
                             f"{self.processor.prompt_set_version!r} lacks (its families: "
                             f"{self.processor.task_families})")  # fmt: skip
        return self.config.think_tasks

    def _start_call(
        self, inputs, instruction, task, side: str, think, reasoning, streamer, trace_cache, max_new_tokens,
        video_sampling=None,
    ) -> EmbedCall:  # fmt: skip
        """Parse the inputs, take each given trace as its token ids (checked here, once), decide who thinks (or
        leave it to the gate), and take the traces the trace cache has."""
        items = self.processor.parse_inputs(inputs, instruction, task, video_sampling)
        given = self._given_traces(reasoning, items)
        trace_ids = [[] if trace is None else self.processor.trace_token_ids(trace, f"reasoning[{i}]")
                     for i, trace in enumerate(given)]  # fmt: skip
        texts = [None if isinstance(trace, list) else trace or "" for trace in given]
        thinking = ["given" if given[i] is not None else self._thinking(item, think, side)
                    for i, item in enumerate(items)]  # fmt: skip
        embeddings = torch.empty(len(items), self.config.embedding_dim, device=self.device)
        if streamer is not None:
            self._check_streamable(sum(mode in ("yes", "gate") for mode in thinking))
        stats = EmbedStats(inputs=len(items), given=thinking.count("given"), without_trace=thinking.count("no"))
        call = EmbedCall(items, [mode in ("yes", "gate") for mode in thinking], trace_ids, texts, embeddings,
                         [mode == "gate" for mode in thinking], streamer, stats=stats)  # fmt: skip
        cache = self.trace_cache if trace_cache is None else as_trace_cache(trace_cache)
        if cache is not None and (self.external_reasoner is not None or self.config.variant != "teacher"):
            call.cache = cache
            self._take_cached_traces(call, [i for i, mode in enumerate(thinking) if mode == "yes"], max_new_tokens)
        return call

    def _take_cached_traces(self, call: EmbedCall, indices: list[int], max_new_tokens: int | None) -> None:
        """Inputs (of `indices`) whose trace the cache holds take it (its text and ids, checked like a given trace)
        and do not generate; the others remember their keys, so their new traces are stored."""
        if call.cache is None or not indices:
            return
        context = self.trace_cache_context(max_new_tokens)
        keys = {i: trace_key(call.items[i], context) for i in indices}
        found = call.cache.get_many(key for key, _ in keys.values())
        for i, (key, fields_json) in keys.items():
            if key not in found:
                call.cache_keys[i] = (key, fields_json)
                continue
            text, ids = found[key]
            where = f"the trace cache's trace for {call.name(i)}"
            call.trace_ids[i] = self.processor.trace_token_ids(text if ids is None else ids, where)
            call.trace_texts[i], call.generate[i] = text, False
            call.stats.cache_hits += 1
            if call.streamer is not None:  # the demo still shows the trace, in one piece
                call.streamer.put(torch.empty(1, 0, dtype=torch.long))  # the prompt, as `generate` sends first
                call.streamer.put(torch.tensor(call.trace_ids[i], dtype=torch.long))
                call.streamer.end()

    def _check_streamable(self, thinking: int) -> None:
        if self.external_reasoner is not None or self.config.variant == "teacher":
            raise ValueError("streamer= streams the built-in reasoner's tokens; this model's traces come from an "
                             "external reasoner or are given")  # fmt: skip
        if thinking > 1:
            raise ValueError(f"streamer= streams one trace, but {thinking} inputs think in this call; embed them one "
                             "at a time, or without a streamer")  # fmt: skip

    @staticmethod
    def _batches(call: EmbedCall, batch_size: int, show_progress_bar: bool):
        """Input indices in batches of `batch_size`: inputs that think together, images together, longest first (a
        stable sort), so that a batch pads little and a generation batch holds only rows that generate. The
        embeddings go back to input order through `call.embeddings`."""

        def length(i: int) -> int:  # characters, a cheap stand-in for tokens
            item = call.items[i]
            return len(item.text or "") + len(item.instruction or "") + 4 * len(call.trace_ids[i])

        order = sorted(range(len(call.items)), key=lambda i: (not call.generate[i], call.items[i].image is None,
                                                              -length(i)))  # fmt: skip
        batches = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
        if show_progress_bar:
            from tqdm.auto import tqdm

            batches = tqdm(batches, desc="Embedding")
        return batches

    def _clock(self) -> float:
        """Seconds, after the device's queued work is done (CUDA runs asynchronously)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    @torch.no_grad()
    def _embed_batch(self, call: EmbedCall, batch: list[int], max_new_tokens: int | None) -> None:
        """Embed the inputs `batch` of `call` into `call.embeddings`; those that think get a new trace first, which
        is recorded in `call` with the token ids it is embedded with (the generated ids: see
        `TTEProcessor.build_embedding_inputs`) and stored in the call's trace cache. The `think="auto"` gate
        decides first (student, teacher, and unified outside the single pass) or during generation (unified).

        The unified model embeds its new traces in a single pass with generation, except in a call with a trace
        cache (`_single_pass`: there a new trace is embedded from its ids like a cached one, so that a later hit
        gives the same embedding bit for bit) or with `generation_cache="static"`."""
        gated = [i for i in batch if call.gated[i]]
        skipped = []  # queries the gate said no to, embedded by the gate's own pass
        if gated and not self._gates_in_generation():
            skipped = self._gate_on_plain_embeddings(call, gated, max_new_tokens)
        elif gated and not self._single_pass(call):
            self._gate_before_generation(call, gated, max_new_tokens)
        thinking = [i for i in batch if call.generate[i]]
        plain = [i for i in batch if not call.generate[i] and i not in skipped]
        if thinking:
            items, names = [call.items[i] for i in thinking], [call.name(i) for i in thinking]
            started = self._clock()
            if self._single_pass(call):
                texts, trace_ids, generation = self.generate_traces(
                    items, max_new_tokens, capture=True, where=names, streamer=call.streamer,
                    gated=[call.gated[i] for i in thinking],
                )  # fmt: skip
                self._check_generated(trace_ids, names)
                generated = self._clock()
                call.embeddings[thinking] = self._embed_with_state(items, trace_ids, generation, names)
                call.stats.embedding_seconds += self._clock() - generated
            else:
                texts, trace_ids, generation = self._reasoner_traces(items, max_new_tokens, names, call.streamer)
                generated = self._clock()
                plain = [i for i in batch if i not in skipped]
            call.stats.generation_seconds += generated - started
            for i, text, ids in zip(thinking, texts, trace_ids):
                call.trace_texts[i], call.trace_ids[i] = text, ids
            self._count_generated(call, thinking, generation)
            self._store_traces(call, thinking, generation, max_new_tokens)
        if plain:
            started = self._clock()
            inputs = self._embedding_inputs([call.items[i] for i in plain], [call.trace_ids[i] for i in plain],
                                            [call.name(i) for i in plain])  # fmt: skip
            call.embeddings[plain] = self(**inputs).embeddings
            call.stats.embedding_seconds += self._clock() - started

    @torch.no_grad()
    def gate_features(self, inputs, instruction: str | None = None, task: str | None = None,
                      batch_size: int = 8) -> torch.Tensor:  # fmt: skip
        """`(n, hidden)` states the `think="auto"` gate reads, for fitting it (`training.train_gate`): for the
        unified variant, the layer L-N state of each reasoning prompt's last token (what generation's prefill
        captures); for the others, the no-thinking embedding. Inputs as `embed` takes them."""
        items = self.processor.parse_inputs(inputs, instruction, task)
        rows = []
        for start in range(0, len(items), batch_size):
            chunk = items[start : start + batch_size]
            if not self._gates_in_generation():
                names = [f"inputs[{start + i}]" for i in range(len(chunk))]
                rows.append(self(**self._embedding_inputs(chunk, [[] for _ in chunk], names)).embeddings)
                continue
            rows.append(self._prompt_gate_states(chunk))
        return torch.cat(rows).float()

    def _prompt_gate_states(self, items: list[TTEInput]) -> torch.Tensor:
        """Unified: the layer L-N state of each reasoning prompt's last token, from a pass up to that layer (what
        generation's prefill captures for the gate)."""
        prompts = self.processor.build_reasoning_inputs(items).to(self.device)
        states = self.source_states(prompts["input_ids"], prompts["attention_mask"], self.positions_of(prompts),
                                    **vision_inputs_of(prompts))  # fmt: skip
        return states[:, -1]  # left padding: the last column is each prompt's last token

    def _gates_in_generation(self) -> bool:
        """The unified model's gate reads generation's prefill; the others' gate reads a no-thinking embedding."""
        return self.config.variant == "unified" and self.external_reasoner is None

    def _single_pass(self, call: EmbedCall) -> bool:
        """Whether the unified model embeds this call's new traces from the states generation captured. Not with a
        trace cache (a new trace is embedded from its ids, as a later hit will be: bit for bit the same), nor with
        `generation_cache="static"` (transformers' `generate` has no capture)."""
        return self._gates_in_generation() and call.cache is None and self.config.generation_cache == "dynamic"

    def _gate_on_plain_embeddings(self, call: EmbedCall, gated: list[int], max_new_tokens: int | None) -> list[int]:
        """Student, teacher: embed the gated queries without a trace and ask the gate about those embeddings. A query
        it says no to keeps that embedding; the others think (from the trace cache where it holds their trace).
        Returns the skipped queries, already embedded."""
        started = self._clock()
        inputs = self._embedding_inputs([call.items[i] for i in gated], [[] for _ in gated],
                                        [call.name(i) for i in gated])  # fmt: skip
        embeddings = self(**inputs).embeddings
        thinks = (self.gate(embeddings) > self.config.gate_threshold).tolist()
        call.stats.embedding_seconds += self._clock() - started
        skipped = [i for i, think in zip(gated, thinks) if not think]
        call.embeddings[skipped] = embeddings[[not think for think in thinks]]
        self._follow_gate(call, gated, thinks, max_new_tokens)
        return skipped

    def _gate_before_generation(self, call: EmbedCall, gated: list[int], max_new_tokens: int | None) -> None:
        """Unified outside the single pass (with a trace cache, or a static generation cache): the gate reads the
        prefill state from a pass of its own (up to layer L-N) before generation, so that a query it sends to think
        can take its trace from the cache instead of generating it. A query it says no to is embedded with the empty
        trace, as when it decides inside generation. The price is that pass: a thinking query's prompt is run twice
        (a cached trace saves every decode step)."""
        started = self._clock()
        thinks = (self.gate(self._prompt_gate_states([call.items[i] for i in gated]))
                  > self.config.gate_threshold).tolist()  # fmt: skip
        call.stats.generation_seconds += self._clock() - started
        self._follow_gate(call, gated, thinks, max_new_tokens)

    def _follow_gate(self, call: EmbedCall, gated: list[int], thinks: list[bool], max_new_tokens: int | None) -> None:
        """Record the gate's decisions made before generation: the queries it sends to think take their trace from
        the trace cache where it holds one; the others are counted as gate skips."""
        for i, think in zip(gated, thinks):
            call.gated[i], call.generate[i] = False, think
        call.stats.count_gate_skips(thinks.count(False))
        self._take_cached_traces(call, [i for i in gated if call.generate[i]], max_new_tokens)

    @staticmethod
    def _count_generated(call: EmbedCall, thinking: list[int], generation: Generation) -> None:
        skipped = generation.gate_skipped or [False] * len(thinking)
        for ids, cut, skip in zip(generation.trace_ids, generation.cut, skipped):
            if skip:  # the gate ended it before its first token
                call.stats.count_gate_skips(1)
                continue
            call.stats.generated += 1
            call.stats.generated_tokens += len(ids)
            call.stats.cut_traces += int(cut)

    def _store_traces(self, call: EmbedCall, thinking: list[int], generation: Generation, max_new_tokens) -> None:
        """Put a batch's new traces into the call's trace cache, in one transaction. A trace cut at a bound the
        context window lowered is not what the requested bound would give, so it is not stored."""
        if call.cache is None:
            return
        requested = max_new_tokens or self.config.max_new_tokens
        entries = [(*call.cache_keys[i], call.trace_texts[i], call.trace_ids[i])
                   for i, cut in zip(thinking, generation.cut) if i in call.cache_keys
                   and not (cut and generation.budget is not None and generation.budget < requested)]  # fmt: skip
        call.cache.put_many(entries)

    def _check_generated(self, trace_ids: list[list[int]], where: list[str]) -> None:
        """Refuse a generated trace holding a reserved token, as a given one (an image token would not match the
        image's features)."""
        for ids, name in zip(trace_ids, where):
            self.processor.check_trace(ids, f"the reasoner's trace for {name}")

    def _embedding_inputs(self, items, trace_ids: list[list[int]], where: list[str]) -> BatchFeature:
        """The embedding inputs of already checked trace ids on the model's device, refusing an input the context
        window cannot hold."""
        inputs = self.processor.build_embedding_inputs_of_ids(items, trace_ids)
        window = self.context_window
        for name, length in zip(where, inputs["attention_mask"].sum(dim=1).tolist()):
            if length > window:
                raise ValueError(f"{name}: prompt + trace + embedding token are {length} tokens, over the context "
                                 f"window of {window} tokens (max_position_embeddings); shorten the input or its "
                                 "trace")  # fmt: skip
        return inputs.to(self.device)

    def _embed_with_state(self, items, trace_ids, state, where: list[str]) -> torch.Tensor:
        """Unified single pass: reuse the layer L-N states captured while generating. The embedding inputs are the
        reasoning prompts' ids + the generated ids + the embedding token, so they continue the generation exactly."""
        inputs = self._embedding_inputs(items, trace_ids, where)
        position_ids = self.positions_of(inputs)
        if state.first_fed == 0:
            source = right_aligned(state.source_rows, inputs["attention_mask"])
            return self(**inputs, source_states=source, position_ids=position_ids).embeddings
        # The prefixes came from the cache: the head runs the rests over its own cached prefix keys and values.
        split = PrefixSplit.of(inputs["input_ids"], inputs["attention_mask"], position_ids, inputs["prefix_lengths"])
        head = split.cache([self.prefix_states(prefix).head for prefix in split.prefixes])
        source = right_aligned(state.source_rows, split.rest_mask)
        hidden_states = self.head(source, split.mask, split.rest_positions, cache=head)
        return pool_embeddings(hidden_states, split.rest_mask, self.config.normalize)

    def _check_truncate_dim(self, truncate_dim: int | None) -> None:
        if truncate_dim is not None and (isinstance(truncate_dim, bool) or not isinstance(truncate_dim, int)):
            raise TypeError(f"truncate_dim must be an int, got {type(truncate_dim).__name__} {truncate_dim!r}")
        if truncate_dim is not None and truncate_dim not in self.config.matryoshka_dims:
            raise ValueError(f"truncate_dim={truncate_dim} is not one of matryoshka_dims={self.config.matryoshka_dims}")

    def _given_traces(self, reasoning, items: list[TTEInput]) -> list[str | list[int] | None]:
        """Precomputed traces (texts or token ids): from `reasoning=` (one per input) or from each input's own
        `reasoning` key."""
        if reasoning is None:
            return [item.reasoning for item in items]
        if isinstance(reasoning, str):
            reasoning = [reasoning]
        if not isinstance(reasoning, (list, tuple)) or len(reasoning) != len(items):
            raise ValueError(f"reasoning must be a list with one trace (or None) per input: {len(items)} inputs")
        for i, (trace, item) in enumerate(zip(reasoning, items)):
            if trace is not None and item.reasoning is not None:
                raise ValueError(f"inputs[{i}]: a trace is given both in reasoning= and in the input's 'reasoning'")
        return [trace if trace is not None else item.reasoning for trace, item in zip(reasoning, items)]

    def embed(
        self,
        inputs,
        instruction: str | None = None,
        task: str | None = None,
        side: str = "query",
        think: bool | str | None = None,
        reasoning: list[str | list[int] | None] | str | None = None,
        return_reasoning: bool | str = False,
        max_new_tokens: int | None = None,
        batch_size: int = 8,
        truncate_dim: int | None = None,
        convert_to_numpy: bool = True,
        convert_to_tensor: bool = False,
        show_progress_bar: bool = False,
        streamer: BaseStreamer | None = None,
        trace_cache: "TraceCache | str | os.PathLike | None" = None,
        return_stats: bool = False,
        video_sampling: "VideoSampling | dict | None" = None,
    ):
        r"""Embed texts, images, videos and their pairs with texts, thinking first where the policy says so.

        Args:
            inputs: one input or a list: `str` (text, or an image or video file path / URL / `data:` URI), PIL image,
                `bytes` (an image), or a dict with keys `text`, `image`, `video`, `instruction`, `task`, `think`,
                `reasoning`. A video is a list of frames (anything an image may be), a folder of frame images, a
                video file (mp4, webm, avi, mkv, mov; decoded with PyAV) or its bytes.
            instruction: instruction for every input without its own.
            task: ECR prompt family (the processor's `task_families`); default `"retrieval"`, and for a video the
                prompt set's `"video"` family where it has one (ecr-v2).
            side: `"query"` or `"document"`; decides thinking under the `"queries"` policy.
            think: `True`/`False` or `"always"`/`"never"`/`"queries"`/`"auto"`/`"tasks"` (see `TTEConfig.think`);
                default `config.think`.
            reasoning: precomputed traces, one per input (`None` entries are generated if they think); a dict input
                may carry its own as `"reasoning"`. A trace is a text, tokenised on its own, or its token ids as
                `return_reasoning="ids"` gave them, fed as they are.
            return_reasoning: also return the traces used (`""` where none): `True` for their texts, `"ids"` for the
                token ids each was embedded with. A generated trace is embedded from the ids that were generated,
                which its decoded text need not tokenise back to; passing those ids back as `reasoning=` reproduces
                its embedding exactly.
            max_new_tokens: trace length bound (default `config.max_new_tokens`); a trace cut there still gets the
                embedding token. A bound larger than the context window leaves after a batch's longest prompt is
                lowered to what fits (a warning says so).
            batch_size: inputs per forward / generate call.
            truncate_dim: Matryoshka dimension (one of `config.matryoshka_dims`); re-normalised after truncation.
            convert_to_numpy / convert_to_tensor: output type (numpy by default; tensor wins if both).
            show_progress_bar: show a tqdm bar over batches.
            streamer: a transformers streamer (e.g. `TextIteratorStreamer(processor.tokenizer, skip_prompt=True)`)
                that receives the trace's tokens as the built-in reasoner generates them, for a call where one input
                thinks (a demo shows the trace while it is written). The embedding is the same with or without it.
                A trace found in the trace cache is sent in one piece.
            trace_cache: a `TraceCache` or its file path, for this call (default `model.trace_cache`). A trace the
                cache holds for the same input, reasoner, prompt set and decoding is reused instead of generated,
                with the ids it was embedded with: the embedding equals `embed(reasoning=those ids)` bit for bit,
                and equals the embedding the trace got when it was generated (the unified model then embeds new
                traces from their ids too, one forward after generation instead of its single pass).
                New traces are stored.
            return_stats: also return an `EmbedStats`: inputs that thought, cache hits, given traces, inputs without
                a trace, generated tokens, traces cut at the bound, seconds generating and embedding.
            video_sampling: this call's video settings, a `VideoSampling` or a dict of the fields to change
                (`num_frames`, `fps`, `max_frame_pixels`, `max_video_pixels`, `min_frame_pixels`); default the
                processor's.

        Returns:
            `(n, dim)` embeddings; with `return_reasoning` and/or `return_stats`, a tuple `(embeddings, traces,
            stats)` of what was asked for, in that order.

        Raises:
            ValueError / TypeError: bad inputs, naming the offending item; among them an input that does not fit the
                context window (`context_window`): prompt + trace + embedding token, or for an input that thinks,
                its reasoning prompt + one trace token + the embedding token. Inputs are never cut.

        Concurrent calls on one model (threads, e.g. an Inference Endpoint's) are safe without a lock: each call
        keeps its own captured states (`capture_layer_output`) and its own generation cache.
        """
        if side not in SIDES:
            raise ValueError(f"side={side!r} must be one of {SIDES}")
        if max_new_tokens is not None:
            check_count("max_new_tokens", max_new_tokens)
        check_count("batch_size", batch_size)
        if return_reasoning not in (False, True, "ids"):
            raise ValueError(f"return_reasoning={return_reasoning!r} must be True, False or 'ids'")
        self._check_truncate_dim(truncate_dim)
        if not isinstance(return_stats, bool):
            raise TypeError(f"return_stats must be True or False, got {return_stats!r}")
        call = self._start_call(inputs, instruction, task, side, think, reasoning, streamer, trace_cache,
                                max_new_tokens, video_sampling)  # fmt: skip
        for batch in self._batches(call, batch_size, show_progress_bar):
            self._embed_batch(call, batch, max_new_tokens)
        call.stats.trace_tokens = sum(map(len, call.trace_ids))
        embeddings = self._truncated(call.embeddings, truncate_dim)
        result = [embeddings if convert_to_tensor or not convert_to_numpy else embeddings.cpu().numpy()]
        if return_reasoning:
            result.append(call.trace_ids if return_reasoning == "ids" else self._trace_texts(call))
        if return_stats:
            result.append(call.stats)
        return tuple(result) if len(result) > 1 else result[0]

    def _truncated(self, embeddings: torch.Tensor, truncate_dim: int | None) -> torch.Tensor:
        """Matryoshka truncation, re-normalised (the pooled vectors were normalised at full size)."""
        if truncate_dim is None:
            return embeddings
        embeddings = embeddings[:, :truncate_dim]
        return F.normalize(embeddings, dim=-1) if self.config.normalize else embeddings

    def _trace_texts(self, call: EmbedCall) -> list[str]:
        """Each input's trace as text (`""` where none); traces given as ids are decoded only here, when asked."""
        return [self.processor.decode_trace(ids) if text is None else text
                for text, ids in zip(call.trace_texts, call.trace_ids)]  # fmt: skip

    def encode_query(self, inputs, **kwargs):
        """`embed` for queries: thinks under the default `"queries"` policy."""
        return self.embed(inputs, side="query", **kwargs)

    def encode_document(self, inputs, **kwargs):
        """`embed` for documents: does not think under the default `"queries"` policy."""
        return self.embed(inputs, side="document", **kwargs)


TTEConfig.register_for_auto_class()
TTEModel.register_for_auto_class("AutoModel")
TTEProcessor.register_for_auto_class("AutoProcessor")


__all__ = ["TTEModel", "TTEPreTrainedModel", "TTEHead", "TTEEmbeddingOutput", "EmbedStats", "pool_embeddings",
           "PrefixSplit"]
