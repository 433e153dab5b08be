"""Hugging Face Inference Endpoints handler for a TTE model: parse the request, call `TTEModel.embed`, format the reply.

Inference Endpoints load this file on its own (not as part of a package), so it imports only public libraries and
loads the model code from the repository with `trust_remote_code=True`.

Request (the feature-extraction schema, extended with images and TTE parameters):

    {
      "inputs": "a text" | [item, ...],   item: a text, an image as a "data:image/...;base64,..." URI, a video
                                          as a "data:video/...;base64,..." URI, or {"text": ..., "image": ...,
                                          "video": ..., "instruction": ..., "task": ..., "think": ...}, where a
                                          video is such a URI or a list of frames, each an image as above
      "prompt_name": "query" | "document",   the side; queries think under the default policy (default "query")
      "normalize": true,                     embeddings are L2-normalised; false is refused for such a model
      "truncate": false,                     inputs are never cut; true is refused
      "parameters": {"think": true | false | "always" | "never" | "queries" | "auto" | "tasks", "instruction": "...",
                     "task": "retrieval", "reasoning": [precomputed trace or null, one per item],
                     "truncate_dim": 256, "return_reasoning": false, "return_stats": false}
    }

A bare string is text unless it is a `data:` URI. An image (or a video's frame) given as an http(s) URL is fetched
only when the endpoint sets `TTE_ALLOW_IMAGE_URLS=1`, within the processor's `URLFetchLimits` (size, total deadline,
http(s) only, public addresses only); `TTE_ALLOWED_PRIVATE_NETWORKS=10.0.0.0/8,...` lets it fetch from those private
networks too. Local file paths are never read.

`TTE_TRACE_CACHE=/path/traces.sqlite` gives the endpoint a persistent trace cache (`trace_cache_tte.TraceCache`),
which every worker process may share: a trace is generated once per input and reused.

Reply: a list of vectors, or `{"embeddings": [...], "reasoning": [...], "stats": {...}}` with `return_reasoning`
and/or `return_stats` (the request's `EmbedStats`: inputs that thought, cache hits, generated tokens, seconds); a bad
request gets `{"error": "<what is wrong, naming the item>"}`.
"""

import dataclasses
import os
from typing import Any

from transformers import AutoModel, AutoProcessor


ALLOW_URLS_ENV = "TTE_ALLOW_IMAGE_URLS"
PRIVATE_NETWORKS_ENV = "TTE_ALLOWED_PRIVATE_NETWORKS"
TRACE_CACHE_ENV = "TTE_TRACE_CACHE"
REQUEST_KEYS = {"inputs", "prompt_name", "normalize", "truncate", "parameters"}
REPLY_FLAGS = ("return_reasoning", "return_stats")  # parameters that shape the reply, not the embeddings
PARAMETER_KEYS = {"think", "instruction", "task", "reasoning", "truncate_dim", *REPLY_FLAGS}
ITEM_KEYS = {"text", "image", "video", "instruction", "task", "think", "reasoning"}
PROMPT_NAMES = ("query", "document")


def check_image_reference(value, where: str, allow_urls: bool) -> None:
    """Accept a `data:` URI, or an http(s) URL when URLs are allowed; anything else (a server path) is refused."""
    if not isinstance(value, str):
        raise TypeError(f"{where}: an image must be a string (a data URI or URL), got {type(value).__name__}")
    if value.startswith("data:"):
        return
    if value.startswith(("http://", "https://")):
        if not allow_urls:
            raise ValueError(f"{where}: image URLs are off on this endpoint; send a base64 data URI or set "
                             f"{ALLOW_URLS_ENV}=1")  # fmt: skip
        return
    raise ValueError(f"{where}: an image must be a 'data:image/...;base64,...' URI or an http(s) URL, got "
                     f"{value[:40]!r}")  # fmt: skip


def check_video_reference(value, where: str, allow_urls: bool) -> None:
    """Accept a `data:video/...` URI or a non-empty list of frames, each an image reference; never a server path."""
    if isinstance(value, list):
        if not value:
            raise ValueError(f"{where}: the video has no frames")
        for number, frame in enumerate(value):
            check_image_reference(frame, f"{where}[{number}]", allow_urls)
        return
    if isinstance(value, str) and value.startswith("data:video/"):
        return
    raise ValueError(f"{where}: a video must be a 'data:video/...;base64,...' URI or a list of frames (image data "
                     f"URIs), got {str(value)[:40]!r}")  # fmt: skip


def parse_item(item, index: int, allow_urls: bool) -> dict:
    """One request item as an explicit `{"text"/"image"/"video", ...}` dict, so no string is ever read as a file
    path."""
    where = f"inputs[{index}]"
    if isinstance(item, str):
        if item.startswith("data:video/"):
            return {"video": item}
        if item.startswith("data:"):
            return {"image": item}
        return {"text": item}
    if not isinstance(item, dict):
        raise TypeError(f"{where}: expected a string or an object with 'text' and/or 'image', "
                        f"got {type(item).__name__}")  # fmt: skip
    unknown = set(item) - ITEM_KEYS
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)}; allowed keys are {sorted(ITEM_KEYS)}")
    if item.get("image") is not None:
        check_image_reference(item["image"], f"{where}['image']", allow_urls)
    if item.get("video") is not None:
        check_video_reference(item["video"], f"{where}['video']", allow_urls)
    return item


def parse_request(data, allow_urls: bool, model_normalizes: bool) -> tuple[list[dict], dict, dict]:
    """Validate a request.

    Returns:
        The items, the keyword arguments of `TTEModel.embed`, and whether to return the traces.

    Raises:
        ValueError / TypeError: naming the offending key or item.
    """
    if not isinstance(data, dict):
        raise TypeError(f"the request must be a JSON object with 'inputs', got {type(data).__name__}")
    unknown = set(data) - REQUEST_KEYS
    if unknown:
        raise ValueError(f"unknown request keys {sorted(unknown)}; allowed keys are {sorted(REQUEST_KEYS)}")
    if "inputs" not in data:
        raise ValueError("the request has no 'inputs'")
    inputs = [data["inputs"]] if isinstance(data["inputs"], str) else data["inputs"]
    if not isinstance(inputs, list) or not inputs:
        raise ValueError("'inputs' must be a string or a non-empty list of items")
    if data.get("normalize", model_normalizes) is not model_normalizes:
        raise ValueError(f"normalize={data['normalize']!r} is not available: this model's embeddings are "
                         f"{'always' if model_normalizes else 'never'} L2-normalised")  # fmt: skip
    if data.get("truncate", False) is not False:
        raise ValueError(f"truncate={data['truncate']!r} is not supported: TTE never cuts its inputs")
    side = data.get("prompt_name") or "query"
    if side not in PROMPT_NAMES:
        raise ValueError(f"prompt_name={side!r} must be one of {list(PROMPT_NAMES)}")
    parameters, reply_flags = parse_parameters(data.get("parameters") or {})
    items = [parse_item(item, i, allow_urls) for i, item in enumerate(inputs)]
    return items, {"side": side, **parameters}, reply_flags


def parse_parameters(parameters) -> tuple[dict, dict]:
    """The `embed` keyword arguments in `parameters` (checked further by `embed`), and the reply flags
    (`return_reasoning`, `return_stats`)."""
    if not isinstance(parameters, dict):
        raise TypeError(f"'parameters' must be an object, got {type(parameters).__name__}")
    unknown = set(parameters) - PARAMETER_KEYS
    if unknown:
        raise ValueError(f"unknown parameters {sorted(unknown)}; allowed parameters are {sorted(PARAMETER_KEYS)}")
    parameters = dict(parameters)
    flags = {flag: parameters.pop(flag, False) for flag in REPLY_FLAGS}
    for flag, value in flags.items():
        if not isinstance(value, bool):
            raise TypeError(f"parameters.{flag} must be true or false, got {value!r}")
    return parameters, flags


class EndpointHandler:
    """Loads the model once; each call embeds one request. Calls may run concurrently (threads): they share the
    model read-only, as `TTEModel.embed` allows.

    Args:
        path: the model repository folder (Inference Endpoints pass it).
    """

    def __init__(self, path: str = ""):
        self.allow_urls = os.environ.get(ALLOW_URLS_ENV) == "1"
        self.model = AutoModel.from_pretrained(path, trust_remote_code=True).eval()
        processor = AutoProcessor.from_pretrained(path, trust_remote_code=True)
        # The URL opt-in belongs to this process (the endpoint's environment), never to the repository's files.
        processor.allow_urls = self.allow_urls
        networks = tuple(net.strip() for net in os.environ.get(PRIVATE_NETWORKS_ENV, "").split(",") if net.strip())
        processor.url_limits = dataclasses.replace(processor.url_limits, allowed_private_networks=networks)
        self.model.processor = processor
        self.model.trace_cache = os.environ.get(TRACE_CACHE_ENV) or None

    def __call__(self, data: dict[str, Any]) -> list | dict:
        try:
            items, kwargs, flags = parse_request(data, self.allow_urls, self.model.config.normalize)
            embeddings, traces, stats = self.model.embed(items, return_reasoning=True, return_stats=True, **kwargs)
        except (ValueError, TypeError) as error:  # bad requests only; anything else is a server error
            return {"error": str(error)}
        if not any(flags.values()):
            return embeddings.tolist()
        reply = {"embeddings": embeddings.tolist()}
        if flags["return_reasoning"]:
            reply["reasoning"] = traces
        if flags["return_stats"]:
            reply["stats"] = stats.to_dict()
        return reply


__all__ = ["EndpointHandler", "ALLOW_URLS_ENV", "PRIVATE_NETWORKS_ENV", "TRACE_CACHE_ENV"]
