"""Configuration of a Think-Then-Embed (TTE) model.

A TTE model wraps a generative backbone (a Qwen-VL model that `AutoModelForImageTextToText` loads, or a text-only
causal LM). A reasoner writes an embedding-centric reasoning trace (ECR) for each input; the embedder encodes
input + trace + one embedding token and returns the L2-normalised last-token state.

Variants (arXiv 2510.05014):
    - `"teacher"` (TTE_t): traces come from outside (the caller or an external reasoner); only the embedder lives here.
    - `"student"` (TTE_s): a same-size reasoner is stored next to the embedder in the same checkpoint.
    - `"unified"` (TTE_u): one frozen backbone reasons; a head, initialised as a copy of its last N decoder layers
      and final norm, reads the layer L-N hidden states of input + trace and produces the embedding.
"""

from typing import Literal

from transformers import AutoConfig, PretrainedConfig
from transformers.configuration_utils import SubConfigSpec


VARIANTS = ("teacher", "student", "unified")
THINK_POLICIES = ("always", "never", "queries", "auto", "tasks")
GENERATION_CACHES = ("dynamic", "static")


class TTEConfig(PretrainedConfig):
    r"""Settings of a TTE model; every behaviour switch lives here and is validated once.

    Args:
        backbone_config: config of the embedder backbone (and of the reasoner for `"unified"`).
        reasoner_config: config of the separate reasoner, only for `variant="student"`.
        variant: one of `"teacher"`, `"student"`, `"unified"`.
        head_num_layers: N, the number of backbone decoder layers copied into the unified head (paper: 8).
        head_source_layer: the head reads the output of the backbone's first `head_source_layer` decoder layers;
            defaults to L-N (the paper's design: the head replaces the top N layers).
        prompt_set_version: version of the ECR prompt set in `processing_tte.PROMPT_SETS`.
        max_new_tokens: bound on the generated trace length.
        think: default thinking policy: `"always"`, `"never"`, `"queries"` (queries think, documents don't),
            `"auto"` (the gate decides per query whether it thinks; documents don't; needs `gate_threshold`) or
            `"tasks"` (the queries of the task families in `think_tasks` think; other queries and documents don't).
        think_tasks: the ECR task families whose queries think under `think="tasks"` (`training.think_tasks`
            chooses them on a development split). None for a model without such a choice.
        gate_threshold: the `think="auto"` gate's threshold: a query thinks when the gate's logit is above it. None
            for a model without a gate (`training.train_gate` adds one).
        normalize: L2-normalise embeddings.
        use_prefix_cache: compute the keys and values of each task family's shared template prefix (the system turn)
            once and reuse them (exact: causal attention makes them independent of the input). Off for debugging
            and for the benchmark's side-by-side runs.
        generation_cache: how traces are generated. `"dynamic"` (default): `decoding_tte.decode_greedily`, a
            growing cache from which a row leaves once its trace has ended (batch compaction), and the unified
            single pass. `"static"`: transformers' `generate` with a preallocated `StaticCache`, whose fixed shapes
            transformers compiles with `torch.compile` on CUDA; no compaction, and the unified model embeds a new
            trace from its ids after generation (one more forward). The same greedy tokens either way.
        matryoshka_dims: dimensions accepted by `truncate_dim` (the full dimension is always accepted).
        embedding_token_id: id of the token appended after the trace; its last-layer state is the embedding.
        embedding_dim: size of the embedding; always the backbone's hidden size (set from the backbone config).
    """

    model_type = "tte"
    sub_configs_defaults = {
        "backbone_config": SubConfigSpec(config_class=AutoConfig, model_type="qwen2_vl"),
        "reasoner_config": SubConfigSpec(config_class=AutoConfig, model_type="qwen2_vl", optional=True),
    }

    backbone_config: dict | PretrainedConfig | None = None
    reasoner_config: dict | PretrainedConfig | None = None
    variant: Literal["teacher", "student", "unified"] = "unified"
    head_num_layers: int = 8
    head_source_layer: int | None = None
    prompt_set_version: str = "ecr-v1"
    max_new_tokens: int = 128
    think: Literal["always", "never", "queries", "auto", "tasks"] = "queries"
    gate_threshold: float | None = None
    think_tasks: list[str] | None = None
    normalize: bool = True
    use_prefix_cache: bool = True
    generation_cache: Literal["dynamic", "static"] = "dynamic"
    matryoshka_dims: list[int] | None = None
    embedding_token_id: int | None = None
    embedding_dim: int | None = None
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.variant not in VARIANTS:
            raise ValueError(f"variant={self.variant!r} is not one of {VARIANTS}")
        if self.think not in THINK_POLICIES:
            raise ValueError(f"think={self.think!r} is not one of {THINK_POLICIES}")
        if self.think == "auto" and self.gate_threshold is None:
            raise ValueError("think='auto' needs a gate (gate_threshold is None): add one with training.train_gate")
        if self.think_tasks is not None:
            self.think_tasks = self._checked_think_tasks(self.think_tasks)
        if self.think == "tasks" and self.think_tasks is None:
            raise ValueError("think='tasks' needs think_tasks (the task families that think): choose them with "
                             "training.think_tasks")
        if self.variant == "student" and self.reasoner_config is None:
            raise ValueError("variant='student' needs a reasoner_config (the reasoner's backbone config)")
        if self.variant != "student" and self.reasoner_config is not None:
            raise ValueError(f"reasoner_config is only used by variant='student', not {self.variant!r}")
        if self.generation_cache not in GENERATION_CACHES:
            raise ValueError(f"generation_cache={self.generation_cache!r} is not one of {GENERATION_CACHES}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        text_config = self.backbone_config.get_text_config()
        if self.embedding_dim is not None and self.embedding_dim != text_config.hidden_size:
            raise ValueError(
                f"embedding_dim={self.embedding_dim} differs from the backbone's hidden size {text_config.hidden_size}; "
                "the embedding is a hidden state, so leave embedding_dim unset (use matryoshka_dims to shorten it)"
            )
        self.embedding_dim = text_config.hidden_size
        if self.variant == "unified":
            self._validate_head(text_config.num_hidden_layers)
        self.matryoshka_dims = sorted(set(self.matryoshka_dims or []) | {self.embedding_dim})
        if self.matryoshka_dims[0] < 1 or self.matryoshka_dims[-1] > self.embedding_dim:
            raise ValueError(f"matryoshka_dims must lie in [1, {self.embedding_dim}], got {self.matryoshka_dims}")

    @staticmethod
    def _checked_think_tasks(think_tasks) -> list[str]:
        """A sorted list of distinct family names (whether the prompt set has them is the model's check, where the
        processor is known)."""
        if not isinstance(think_tasks, (list, tuple)) or not all(isinstance(family, str) for family in think_tasks):
            raise TypeError(f"think_tasks must be a list of task family names, got {think_tasks!r}")
        if len(set(think_tasks)) != len(think_tasks):
            raise ValueError(f"think_tasks names a family twice: {think_tasks!r}")
        return sorted(think_tasks)

    def _validate_head(self, num_backbone_layers: int) -> None:
        if not 1 <= self.head_num_layers <= num_backbone_layers:
            raise ValueError(
                f"head_num_layers={self.head_num_layers} must lie in [1, {num_backbone_layers}] "
                "(the backbone's number of decoder layers)"
            )
        if self.head_source_layer is None:
            self.head_source_layer = num_backbone_layers - self.head_num_layers
        if not 1 <= self.head_source_layer <= num_backbone_layers:
            raise ValueError(f"head_source_layer={self.head_source_layer} must lie in [1, {num_backbone_layers}]")
        # Qwen3-VL adds deepstack visual features after its first layers, outside the layer modules the head reads.
        vision_config = getattr(self.backbone_config, "vision_config", None)
        deepstack_layers = len(getattr(vision_config, "deepstack_visual_indexes", None) or [])
        if self.head_source_layer <= deepstack_layers:
            raise ValueError(
                f"head_source_layer={self.head_source_layer} reads a layer before the backbone's {deepstack_layers} "
                "deepstack layers have added their visual features; use a later source layer (fewer head layers)"
            )


__all__ = ["TTEConfig"]
