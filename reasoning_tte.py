"""External reasoners for the teacher variant (TTE_t): traces from a large model served elsewhere.

Large reasoners (the paper's teacher is Qwen2.5-VL-72B) are served with vLLM, SGLang or TGI behind an
OpenAI-compatible `/v1/chat/completions` endpoint. `OpenAIChatReasoner` sends each input's reasoning conversation
(built by `TTEProcessor.build_messages`, the same prompt the built-in reasoners see) with greedy decoding.
"""

import base64
import io
import json
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from .processing_tte import TTEInput, TTEProcessor


def image_to_data_uri(image) -> str:
    """PNG data URI of a PIL image, as OpenAI-style `image_url` parts take it."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def to_openai_messages(messages: list[dict], item: TTEInput) -> list[dict]:
    """Replace the `{"type": "image"}` placeholder parts with the input's image as a data URI."""
    converted = []
    for message in messages:
        content = message["content"]
        if isinstance(content, list):
            content = [
                {"type": "image_url", "image_url": {"url": image_to_data_uri(item.image)}}
                if part["type"] == "image"
                else part
                for part in content
            ]
        converted.append({"role": message["role"], "content": content})
    return converted


class OpenAIChatReasoner:
    """Generate traces with an OpenAI-compatible chat endpoint (vLLM, SGLang, TGI, `transformers serve`).

    Args:
        base_url: endpoint root including the API prefix, e.g. `"http://127.0.0.1:8000/v1"`.
        model: model name the server expects.
        api_key: sent as a bearer token when given.
        max_tokens: trace length bound.
        timeout_s: per-request timeout.
        max_workers: concurrent requests (servers batch them).
        retries: further attempts after a connection error or a 429 / 5xx reply, with exponential backoff.
    """

    def __init__(self, base_url: str, model: str, api_key: str | None = None, max_tokens: int = 128,
                 timeout_s: float = 120.0, max_workers: int = 8, retries: int = 3):  # fmt: skip
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.api_key = api_key
        self.max_tokens = max_tokens
        self.timeout_s = timeout_s
        self.max_workers = max_workers
        self.retries = retries

    def _request(self, payload: dict) -> dict:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(self.url, data=json.dumps(payload).encode(), headers=headers)
        for attempt in range(self.retries + 1):
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    return json.loads(response.read())
            except urllib.error.HTTPError as error:
                if error.code != 429 and error.code < 500 or attempt == self.retries:
                    raise
            except urllib.error.URLError:  # refused or unreachable: the server may be starting or overloaded
                if attempt == self.retries:
                    raise
            time.sleep(0.5 * 2**attempt)

    @property
    def identity(self) -> dict:
        """What names this reasoner's traces in a trace cache key: the endpoint, the served model and the decoding
        (greedy, bounded). An external reasoner without `identity` cannot use a trace cache."""
        return {"endpoint": self.url, "model": self.model, "decoding": {"temperature": 0.0,
                                                                        "max_tokens": self.max_tokens}}

    def reason_one(self, item: TTEInput, processor: TTEProcessor, index: int) -> str:
        payload = {
            "model": self.model,
            "messages": to_openai_messages(processor.build_messages(item), item),
            "max_tokens": self.max_tokens,
            "temperature": 0.0,  # greedy: traces, and so embeddings, are reproducible
        }
        try:
            reply = self._request(payload)
            return reply["choices"][0]["message"]["content"] or ""
        except (urllib.error.URLError, OSError, KeyError, IndexError, json.JSONDecodeError) as error:
            raise ValueError(f"inputs[{index}]: reasoner endpoint {self.url} failed: {error!r}") from None

    def __call__(self, items: list[TTEInput], processor: TTEProcessor) -> list[str]:
        with ThreadPoolExecutor(max_workers=self.max_workers) as pool:
            return list(pool.map(lambda pair: self.reason_one(pair[1], processor, pair[0]), enumerate(items)))


__all__ = ["OpenAIChatReasoner", "image_to_data_uri", "to_openai_messages"]
