"""Trace generation: local reasoner, resume after SIGKILL (onto two processes), and a real loopback endpoint.

The reasoner is a tiny random-weight unified model, so the traces are gibberish; the tests check that every wanted
trace is generated exactly once and that the endpoint path gives the same text as the local path.
"""

import base64
import io
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from PIL import Image

from tests.training.helpers import TWO_PROCESSES, paused_process, run_module, run_until_paused_then_kill
from training.data import PairDataset, load_sources
from training.generate_traces import main
from training.traces import TraceStore
from tte.modeling_tte import TTEModel


SERVER_LIFETIME_S = 900  # a bound against hangs, not a speed check: a busy 2-core CI machine is slow


def _arguments(model: str, data: str, store: str, *extra: str) -> list[str]:
    return ["--model_path", model, "--data_config", data, "--output_dir", store, "--max_new_tokens", "6", *extra]


def test_main_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert "--endpoint_url" in capsys.readouterr().out


def test_generate_traces_writes_one_trace_per_wanted_side(tmp_path, model_folder, pair_data):
    store = str(tmp_path / "store")
    main(_arguments(model_folder("unified"), pair_data, store, "--sides", "query,positive", "--batch_size", "16"))
    dataset = PairDataset(load_sources(pair_data))
    traces = TraceStore(store).read()
    assert set(traces) == {(dataset[i].id, side) for i in range(len(dataset)) for side in ("query", "positive")}
    model = TTEModel.from_pretrained(model_folder("unified"))
    first = [model.processor.parse_input(dataset[i].inputs["query"], 0) for i in (0, 35)]  # a text and an image query
    assert model.generate_traces(first, 6)[0] == [traces[(dataset[i].id, "query")] for i in (0, 35)]


def test_generate_traces_rerun_adds_nothing(tmp_path, model_folder, pair_data):
    store = str(tmp_path / "store")
    main(_arguments(model_folder("unified"), pair_data, store, "--batch_size", "40"))
    before = list(TraceStore(store).cache.entries())
    main(_arguments(model_folder("unified"), pair_data, store, "--batch_size", "40"))
    assert list(TraceStore(store).cache.entries()) == before


def test_generate_traces_resumes_after_sigkill_without_loss_or_duplicates(tmp_path, model_folder, pair_data):
    store = str(tmp_path / "store")
    arguments = _arguments(model_folder("unified"), pair_data, store, "--batch_size", "4")
    run_until_paused_then_kill("training.generate_traces", arguments, pause_after=3)
    written = TraceStore(store).read()
    assert len(written) == 12  # 3 batches of 4, each committed before the pause
    # Resume on two processes: the remaining work is split between them, both writing the one store.
    run_module("training.generate_traces", arguments, launcher=TWO_PROCESSES)
    traces = TraceStore(store).read()
    dataset = PairDataset(load_sources(pair_data))
    assert set(traces) == {(dataset[i].id, "query") for i in range(len(dataset))}
    assert len(TraceStore(store).cache) == len(traces)  # no duplicates
    assert {key: traces[key] for key in written} == written  # the first run's traces are untouched


def _decode_image_part(part: dict) -> Image.Image:
    header, _, payload = part["image_url"]["url"].partition(",")
    assert header == "data:image/png;base64"
    return Image.open(io.BytesIO(base64.b64decode(payload))).convert("RGB")


class ChatCompletionsServer(HTTPServer):
    """A minimal OpenAI-compatible `/v1/chat/completions` server: greedy generations of a real (tiny) model.

    It does what vLLM does with a request: apply the model's chat template to the messages, decode the images and
    generate greedily up to `max_tokens`.
    """

    def __init__(self, model: TTEModel):
        super().__init__(("127.0.0.1", 0), ChatCompletionsHandler)
        self.model = model

    def complete(self, messages: list[dict], max_tokens: int) -> str:
        processor, images = self.model.processor, []
        for message in messages:
            if isinstance(message["content"], list):
                images += [_decode_image_part(part) for part in message["content"] if part["type"] == "image_url"]
                message["content"] = [{"type": "image"} if part["type"] == "image_url" else part
                                      for part in message["content"]]  # fmt: skip
        prompt = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        inputs = processor(text=[prompt], images=images or None, return_tensors="pt", add_special_tokens=False)
        generator = self.model.generator()
        output = generator.generate(**inputs, generation_config=self.model.generator_generation_config(max_tokens))
        new_ids = output.sequences[0, inputs["input_ids"].shape[1] :].tolist()
        stop = self.model.config.eos_token_id
        return processor.decode_trace(new_ids[: new_ids.index(stop)] if stop in new_ids else new_ids)


class ChatCompletionsHandler(BaseHTTPRequestHandler):
    def do_POST(self):
        if self.path != "/v1/chat/completions":
            self.send_error(404)
            return
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        assert request["temperature"] == 0.0
        text = self.server.complete(request["messages"], request["max_tokens"])
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
        body = json.dumps({"object": "chat.completion", "model": request["model"], "choices": [choice]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):
        pass


@pytest.fixture
def endpoint(model_folder):
    """`http://127.0.0.1:<port>/v1` serving the tiny unified model; stopped after the test or after its lifetime."""
    server = ChatCompletionsServer(TTEModel.from_pretrained(model_folder("unified")).eval())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    deadline = threading.Timer(SERVER_LIFETIME_S, server.shutdown)  # bounded even if the test hangs
    deadline.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    deadline.cancel()
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


def test_generate_traces_endpoint_gives_the_local_model_traces(tmp_path, model_folder, pair_data, endpoint):
    local, remote = str(tmp_path / "local"), str(tmp_path / "remote")
    main(_arguments(model_folder("unified"), pair_data, local, "--batch_size", "1"))
    main(_arguments(model_folder("unified"), pair_data, remote, "--batch_size", "8", "--endpoint_url", endpoint,
                    "--endpoint_model", "tiny-unified", "--max_concurrency", "4"))  # fmt: skip
    assert TraceStore(remote).manifest["reasoner"] == "tiny-unified"
    assert TraceStore(remote).read() == TraceStore(local).read()


def test_a_second_writer_of_a_store_adds_no_duplicate_and_the_store_stays_readable(tmp_path, model_folder,
                                                                                  pair_data):  # fmt: skip
    store = str(tmp_path / "store")
    arguments = _arguments(model_folder("unified"), pair_data, store, "--batch_size", "4")
    with paused_process("training.generate_traces", arguments, pause_after=2):  # the first writer, mid-run
        assert len(TraceStore(store).read()) == 8  # readable while the first writer is alive
        main(arguments)  # the same command again, at the same time: it does the rest
    dataset = PairDataset(load_sources(pair_data))
    traces = TraceStore(store).read()
    assert set(traces) == {(dataset[i].id, "query") for i in range(len(dataset))}
    assert len(TraceStore(store).cache) == len(traces)
