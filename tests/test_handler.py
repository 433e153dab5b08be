"""handler.py (loaded from the exported folder, as Inference Endpoints load it): requests in, vectors or errors out."""

import base64
import importlib.util
import io
import os
import re

import numpy as np
import pytest

from tests.conftest import loopback_http, make_image, run_concurrently, tiny_export_model


def png_bytes(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def data_uri(image) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(image)).decode("ascii")


def load_handler(folder: str):
    """`EndpointHandler` from the folder's own `handler.py`, imported as a plain file."""
    spec = importlib.util.spec_from_file_location("handler", os.path.join(folder, "handler.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.EndpointHandler(folder)


@pytest.fixture(scope="module")
def handler(export_folder):
    return load_handler(export_folder)


def assert_close(vectors: list, expected: np.ndarray) -> None:
    assert np.asarray(vectors).shape == expected.shape
    assert np.abs(np.asarray(vectors) - expected).max() <= 1e-5


def test_text_request(handler):
    assert_close(handler({"inputs": "a red square"}), tiny_export_model().embed(["a red square"]))


def test_image_request(handler):
    image = make_image(6)
    reply = handler({"inputs": [data_uri(image)], "prompt_name": "document", "normalize": True, "truncate": False})
    assert_close(reply, tiny_export_model().embed([image], side="document"))


def test_mixed_request_with_parameters_and_traces(handler):
    image = make_image(7)
    parameters = {"return_reasoning": True, "instruction": "find the image", "truncate_dim": 8}
    reply = handler({"inputs": ["what is it ?", data_uri(image), {"text": "a cat", "image": data_uri(image)}],
                     "parameters": parameters})  # fmt: skip
    expected, traces = tiny_export_model().embed(["what is it ?", image, {"text": "a cat", "image": image}],
                                          instruction="find the image", truncate_dim=8, return_reasoning=True)
    assert_close(reply["embeddings"], expected)
    assert reply["reasoning"] == traces and all(traces)


def test_precomputed_traces_and_think_switch(handler):
    traces = ["<think> red </think> a red shape", None]
    reply = handler({"inputs": ["a red square", "a blue circle"], "parameters": {"reasoning": traces}})
    assert_close(reply, tiny_export_model().embed(["a red square", "a blue circle"], reasoning=traces))
    reply = handler({"inputs": ["a red square"], "parameters": {"think": False, "return_reasoning": True}})
    assert reply["reasoning"] == [""]


@pytest.mark.parametrize("request_body, message", [
    ("a red square", r"the request must be a JSON object with 'inputs', got str"),
    ({"text": "a red square"}, r"unknown request keys \['text'\]"),
    ({"parameters": {}}, r"the request has no 'inputs'"),
    ({"inputs": []}, r"'inputs' must be a string or a non-empty list"),
    ({"inputs": ["ok", 3]}, r"inputs\[1\]: expected a string or an object with 'text' and/or 'image', got int"),
    ({"inputs": [{"txt": "a"}]}, r"inputs\[0\]: unknown keys \['txt'\]"),
    ({"inputs": [{"image": "/etc/hosts.png"}]}, r"inputs\[0\]\['image'\]: an image must be a 'data:image/"),
    ({"inputs": [{"image": "https://example.com/a.png"}]}, r"image URLs are off on this endpoint; .*_URLS=1"),
    ({"inputs": [{"image": 5}]}, r"inputs\[0\]\['image'\]: an image must be a string"),
    ({"inputs": ["data:image/png;base64,%%%"]}, r"inputs\[0\]\['image'\]: data URI payload is not valid base64"),
    ({"inputs": ["data:image/png;base64,AAAA"]}, r"inputs\[0\]\['image'\]: not a readable image"),
    ({"inputs": [""]}, r"inputs\[0\]\['text'\]: text is empty"),
    ({"inputs": "a", "normalize": False}, r"normalize=False is not available: this model's embeddings are always"),
    ({"inputs": "a", "truncate": True}, r"truncate=True is not supported"),
    ({"inputs": "a", "prompt_name": "passage"}, r"prompt_name='passage' must be one of \['query', 'document'\]"),
    ({"inputs": "a", "parameters": [1]}, r"'parameters' must be an object, got list"),
    ({"inputs": "a", "parameters": {"batch_size": 2}}, r"unknown parameters \['batch_size'\]"),
    ({"inputs": "a", "parameters": {"return_reasoning": "yes"}}, r"return_reasoning must be true or false"),
    ({"inputs": "a", "parameters": {"return_stats": 1}}, r"return_stats must be true or false, got 1"),
    ({"inputs": "a", "parameters": {"think": "sometimes"}}, r"think='sometimes' must be a bool or one of"),
    ({"inputs": "a", "parameters": {"truncate_dim": 5}}, r"truncate_dim=5 is not one of matryoshka_dims"),
    ({"inputs": "a", "parameters": {"task": "poetry"}}, r"task='poetry' is not one of"),
    ({"inputs": "a", "parameters": {"task": {"f": 1}}}, r"task: task must be a str, got dict"),
    ({"inputs": "a", "parameters": {"truncate_dim": 8.0}}, r"truncate_dim must be an int, got float 8.0"),
    ({"inputs": ["a", "x<|im_start|>system"]}, r"inputs\[1\]\['text'\]: text contains the reserved token '<\|im_start"),
    ({"inputs": [{"text": "a", "instruction": "<|im_end|>"}]}, r"inputs\[0\]\['instruction'\]: text contains the "
                                                               r"reserved token '<\|im_end\|>'"),
    ({"inputs": "a", "parameters": {"reasoning": ["b<|endoftext|>"]}}, r"reasoning\[0\]: trace contains the reserved "
                                                                       r"token '<\|endoftext\|>'"),
    ({"inputs": ["a", "red " * 5000]}, r"^inputs\[1\]: the reasoning prompt is 5074 tokens; with one trace token and "
                                       r"the embedding token it does not fit the context window of 4096 tokens"),
    ({"inputs": ["red " * 5000], "prompt_name": "document"}, r"^inputs\[0\]: prompt \+ trace \+ embedding token are "
                                                             r"5075 tokens, over the context window of 4096 tokens"),
])  # fmt: skip
def test_malformed_request_gets_error_message(handler, request_body, message):
    reply = handler(request_body)
    assert set(reply) == {"error"}
    assert re.search(message, reply["error"]), reply["error"]


def test_stats_and_a_trace_cache_shared_by_endpoint_workers(export_folder, monkeypatch, tmp_path):
    monkeypatch.setenv("TTE_TRACE_CACHE", str(tmp_path / "traces.sqlite"))
    workers = [load_handler(export_folder) for _ in range(2)]  # two workers of one endpoint, one cache file
    request = {"inputs": ["a red square", "a blue circle"], "parameters": {"return_stats": True}}
    first = workers[0](request)
    assert set(first) == {"embeddings", "stats"}
    assert (first["stats"]["generated"], first["stats"]["cache_hits"], first["stats"]["inputs"]) == (2, 0, 2)
    second = workers[1]({**request, "parameters": {"return_stats": True, "return_reasoning": True}})
    assert (second["stats"]["generated"], second["stats"]["cache_hits"]) == (0, 2)
    assert second["embeddings"] == first["embeddings"]  # a hit is bit for bit the fresh embedding (unified too)
    assert all(second["reasoning"])
    assert second["stats"]["generated_tokens"] == 0 and first["stats"]["generated_tokens"] > 0


def test_image_urls_are_fetched_only_when_enabled(export_folder, monkeypatch):
    image = make_image(8)
    with loopback_http(lambda path, body: png_bytes(image)) as base_url:
        monkeypatch.setenv("TTE_ALLOW_IMAGE_URLS", "1")
        monkeypatch.setenv("TTE_ALLOWED_PRIVATE_NETWORKS", "127.0.0.1/32")  # the test server's address only
        reply = load_handler(export_folder)({"inputs": [{"image": base_url + "/a.png"}]})
    assert_close(reply, tiny_export_model().embed([image]))


def test_image_urls_to_private_addresses_are_bad_requests(export_folder, monkeypatch):
    monkeypatch.setenv("TTE_ALLOW_IMAGE_URLS", "1")
    monkeypatch.delenv("TTE_ALLOWED_PRIVATE_NETWORKS", raising=False)
    with loopback_http(lambda path, body: png_bytes(make_image(8))) as base_url:
        reply = load_handler(export_folder)({"inputs": ["a red square", {"image": base_url + "/a.png"}]})
    assert set(reply) == {"error"}
    assert re.search(r"inputs\[1\]\['image'\]: URL .* resolves to 127.0.0.1, a private", reply["error"]), reply


def test_a_huge_image_header_is_a_bad_request_not_a_server_error(handler):
    import base64
    import io
    import struct
    import zlib

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L", (1, 1)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    header = struct.pack(">II", 100_000, 100_000) + bytes(data[24:29])  # a 10 Gpx IHDR
    data[16:29] = header
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + header))
    reply = handler({"inputs": [{"image": "data:image/png;base64," + base64.b64encode(bytes(data)).decode()}]})
    assert set(reply) == {"error"} and "inputs[0]['image']: image is 100000x100000" in reply["error"]


def test_concurrent_requests_equal_single_threaded(handler):
    texts = ["a red square", "what is on the table ?", "a blue circle", "the cat on the bus"]
    requests = [{"inputs": [texts[t % 4], data_uri(make_image(t)), {"text": texts[(t + 1) % 4], "image": data_uri(
        make_image(t + 8))}][: 1 + t % 3], "parameters": {"think": "always", "return_reasoning": True}}
        for t in range(8)]  # fmt: skip
    expected = [handler(request) for request in requests]
    for replies in run_concurrently(handler, requests, rounds=3):
        for t, (reply, wanted) in enumerate(zip(replies, expected)):
            assert reply["reasoning"] == wanted["reasoning"], f"request {t}"
            assert np.abs(np.asarray(reply["embeddings"]) - np.asarray(wanted["embeddings"])).max() <= 1e-6, t
