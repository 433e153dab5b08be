"""sentence-transformers input module of a TTE model: a thin adapter over `TTEModel.embed`.

`SentenceTransformer(folder_or_repo, trust_remote_code=True)` loads this module from `modules.json`. It adds no
prompt building and no pooling of its own: `preprocess` only records the batch and the side, and `forward` calls
`TTEModel.embed`, so both entry points return the same vectors for the same inputs.

How the sentence-transformers API maps onto TTE:
    - `encode_query` passes `task="query"` and `encode_document` `task="document"`; that is `embed(side=...)`. Under
      the default `"queries"` thinking policy queries reason first and documents do not. Plain `encode` uses the
      module's `default_side`.
    - A prompt (`prompt=` or `prompt_name=`) is the TTE instruction; the saved prompts are empty.
    - `encode(..., think=..., instruction=..., task_family=..., max_new_tokens=...)` are passed to `embed`
      (`task_family` is `embed`'s `task`, renamed because sentence-transformers reserves `task` for query/document).
    - `encode(..., output_value="reasoning")` returns the traces (`""` where an input did not think), in input order.
    - `truncate_dim` is applied by sentence-transformers after this module, without re-normalising: pass
      `normalize_embeddings=True` with it to get what `embed(truncate_dim=...)` returns.
    - `max_seq_length` is the backbone's context window; inputs are never cut, and a longer one is refused by `embed`
      with an error naming it.
"""

from typing import Any

from sentence_transformers.base.modules import InputModule

from .configuration_tte import TTEConfig
from .modeling_tte import SIDES, TTEModel
from .processing_tte import TTEProcessor


class TTESentenceTransformer(InputModule):
    """Input module wrapping a `TTEModel` (with its processor attached).

    Args:
        model: the TTE model; its processor is loaded now so that `save` writes it.
        default_side: side of plain `encode()` calls, which carry no query/document task.
    """

    config_file_name = "tte_sentence_transformers.json"  # not config.json: that is the model's
    config_keys = ["default_side"]
    forward_kwargs = {"think", "instruction", "task_family", "max_new_tokens"}
    save_in_root = True
    # "message" lets mixed batches through; a video is a file path, a folder of frames or a list of frames
    modalities = ["text", "image", "video", ("image", "text"), ("text", "video"), "message"]

    def __init__(self, model: TTEModel, default_side: str = "query", **kwargs):
        super().__init__()
        if default_side not in SIDES:
            raise ValueError(f"default_side={default_side!r} must be one of {SIDES}")
        self.model = model
        self.processor = model.processor
        self.default_side = default_side

    def get_embedding_dimension(self) -> int:
        return self.model.config.embedding_dim

    @property
    def max_seq_length(self) -> int:
        """The model's context window in tokens: `embed` refuses longer inputs (prompt + trace + embedding token)."""
        return self.model.context_window

    @max_seq_length.setter
    def max_seq_length(self, value) -> None:
        raise ValueError(f"max_seq_length={value!r} cannot be set: it is the backbone's context window "
                         f"({self.model.context_window} tokens), and TTE refuses longer inputs rather than cutting "
                         "them")  # fmt: skip

    def preprocess(self, inputs: list, prompt: str | None = None, task: str | None = None, **kwargs) -> dict[str, Any]:
        """Keep the raw batch for `forward`; `embed` parses it with the processor (once).

        Args:
            inputs: texts, images, videos, or dicts with `text`, `image`, `video`, `instruction`, `task`, `think`.
            prompt: the resolved sentence-transformers prompt, used as the instruction when non-empty.
            task: `"query"` or `"document"` from `encode_query` / `encode_document`; None for plain `encode`.
        """
        side = task or self.default_side
        if side not in SIDES:
            raise ValueError(f"task={task!r} must be one of {SIDES} (or None for the module's default_side)")
        return {"inputs": list(inputs), "side": side, "prompt": prompt or None}

    def forward(
        self,
        features: dict[str, Any],
        think: bool | str | None = None,
        instruction: str | None = None,
        task_family: str | None = None,
        max_new_tokens: int | None = None,
        **kwargs,
    ) -> dict[str, Any]:
        """Embed the batch with `TTEModel.embed`; sets `sentence_embedding` `(batch, dim)` and `reasoning` (traces)."""
        if features["prompt"] is not None and instruction is not None:
            raise ValueError("got both a prompt and instruction=; pass the instruction one way only")
        embeddings, traces = self.model.embed(
            features["inputs"],
            instruction=instruction or features["prompt"],
            task=task_family,
            side=features["side"],
            think=think,
            return_reasoning=True,
            max_new_tokens=max_new_tokens,
            batch_size=len(features["inputs"]),  # sentence-transformers has already batched
            convert_to_tensor=True,
        )
        features["sentence_embedding"] = embeddings
        features["reasoning"] = traces
        return features

    def save(self, output_path: str, *args, safe_serialization: bool = True, **kwargs) -> None:
        """Write the model (weights, config, code, processor, generation config) and this module's settings."""
        self.model.save_pretrained(output_path)
        self.save_config(output_path)

    @classmethod
    def load(
        cls,
        model_name_or_path: str,
        subfolder: str = "",
        token: bool | str | None = None,
        cache_folder: str | None = None,
        revision: str | None = None,
        local_files_only: bool = False,
        trust_remote_code: bool = False,
        model_kwargs: dict[str, Any] | None = None,
        processor_kwargs: dict[str, Any] | None = None,
        config_kwargs: dict[str, Any] | None = None,
        backend: str = "torch",
        **kwargs,
    ) -> "TTESentenceTransformer":
        """Load the module from a folder or Hub repo written by `save`.

        The model classes are imported directly (this file already runs as remote code); `trust_remote_code` only
        reaches the processor, whose tokenizer reads `config.json` and its `auto_map`. The hub arguments are merged
        into each kwargs dict, so no keyword reaches a `from_pretrained` twice.

        Raises:
            ValueError: for a backend other than `"torch"`.
        """
        if backend != "torch":
            raise ValueError(f"backend={backend!r} is not supported: TTE generates traces, which needs torch")
        hub_kwargs = {"subfolder": subfolder, "token": token, "cache_dir": cache_folder, "revision": revision,
                      "local_files_only": local_files_only}  # fmt: skip
        settings = cls.load_config(model_name_or_path, subfolder=subfolder, token=token, cache_folder=cache_folder,
                                   revision=revision, local_files_only=local_files_only)  # fmt: skip
        config = TTEConfig.from_pretrained(model_name_or_path, **{**hub_kwargs, **(config_kwargs or {})})
        model = TTEModel.from_pretrained(model_name_or_path, config=config, **{**hub_kwargs, **(model_kwargs or {})})
        processor_kwargs = {**hub_kwargs, "trust_remote_code": trust_remote_code, **(processor_kwargs or {})}
        model.processor = TTEProcessor.from_pretrained(model_name_or_path, **processor_kwargs)
        return cls(model, **settings)


__all__ = ["TTESentenceTransformer"]
