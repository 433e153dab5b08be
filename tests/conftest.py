"""Shared fixtures: tiny random-weight TTE models (see training/tiny_models.py) and small images."""

import copy
import functools
import os
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch


REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

from training.tiny_models import build_tte, make_image  # noqa: E402


MATRYOSHKA_DIMS = [8, 16]


@functools.cache
def _cached_tte(name: str, variant: str, max_new_tokens: int):
    return build_tte(name, variant, max_new_tokens=max_new_tokens)


@pytest.fixture(scope="session")
def tiny_tte():
    """Factory `tiny_tte(name, variant, max_new_tokens=6)`; models are shared, so tests must not modify them."""
    return lambda name="qwen2_vl", variant="unified", max_new_tokens=6: _cached_tte(name, variant, max_new_tokens)


@pytest.fixture(scope="session")
def tiny_tte_folder(tmp_path_factory, tiny_tte):
    """A saved tiny random-weight unified Qwen2-VL TTE model folder (text + image)."""
    folder = tmp_path_factory.mktemp("tiny_tte") / "model"
    tiny_tte("qwen2_vl", "unified").save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def tte_mini(tmp_path_factory) -> str:
    """The default model, TTE-mini, built from its committed trained parts (assets/tte-mini) once per session."""
    from training.assets import build_model

    return build_model(os.path.join(REPO_ROOT, "assets", "tte-mini"), str(tmp_path_factory.mktemp("models") / "tte-mini"))


@pytest.fixture
def image():
    return make_image()


@functools.cache
def tiny_export_model():
    """The tiny random-weight unified model the Hub-surface tests share (with Matryoshka dims, for truncate_dim)."""
    return build_tte("qwen2_vl", "unified", matryoshka_dims=MATRYOSHKA_DIMS)


@pytest.fixture(scope="session")
def export_folder(tmp_path_factory) -> str:
    """`tiny_export_model()` saved as a training run would, then exported as random weights by training/export.py."""
    from training.export import main as export_main

    root = tmp_path_factory.mktemp("export")
    tiny_export_model().save_pretrained(root / "checkpoint")
    export_main(["--checkpoint", str(root / "checkpoint"), "--output_dir", str(root / "tte_export"), "--repo_id",
                 "tte-org/tiny-random", "--weights", "random"])  # fmt: skip
    return str(root / "tte_export")


@pytest.fixture(scope="session")
def gated_export_folder(tmp_path_factory) -> str:
    """`tiny_export_model()` with a random think="auto" gate whose threshold splits GATED_TEXTS, exported."""
    from training.export import main as export_main
    from tte.modeling_tte import TTEGate

    model = copy.deepcopy(tiny_export_model())  # a copy: the shared model stays without a gate for export_folder
    model.config.gate_threshold = 0.0
    torch.manual_seed(0)
    model.gate = TTEGate(model.config)
    torch.nn.init.normal_(model.gate.score.weight, std=1.0)
    with torch.no_grad():
        model.config.gate_threshold = float(model.gate(model.gate_features(GATED_TEXTS)).median())
    root = tmp_path_factory.mktemp("gated")
    model.save_pretrained(root / "checkpoint")
    export_main(["--checkpoint", str(root / "checkpoint"), "--output_dir", str(root / "tte_export"), "--repo_id",
                 "tte-org/tiny-random-gated", "--weights", "random"])  # fmt: skip
    return str(root / "tte_export")


GATED_TEXTS = ["a red square", "a blue circle", "what is on the table ?", "a green triangle", "a cat", "how many ?"]


class _LoopbackHandler(BaseHTTPRequestHandler):
    def do_GET(self):
        self._reply(None)

    def do_POST(self):
        self._reply(self.rfile.read(int(self.headers["Content-Length"])))

    def _reply(self, body: bytes | None):
        reply = self.server.respond(self.path, body)
        if not isinstance(reply, tuple):
            reply = (200, reply)
        status, data, headers = reply if len(reply) == 3 else (*reply, {})
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        if isinstance(data, bytes):
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        try:
            for chunk in [data] if isinstance(data, bytes) else data:  # an iterable body is streamed, chunk by chunk
                self.wfile.write(chunk)
                self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):  # the client hung up, as a fetcher that refuses a body does
            pass

    def log_message(self, *args):
        pass


@contextmanager
def loopback_http(respond):
    """Serve `respond(path, body_or_None)` on 127.0.0.1; yields the base URL.

    `respond` returns the body, `(status, body)` or `(status, body, headers)`; a body that is an iterable of bytes
    is streamed without a Content-Length (the connection's end closes it).
    """
    server = ThreadingHTTPServer(("127.0.0.1", 0), _LoopbackHandler)
    server.respond = respond
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


def run_concurrently(call, arguments: list, rounds: int = 3) -> list[list]:
    """`call(argument)` for every argument at once, one thread each, `rounds` times; results[round][thread].

    A barrier starts each round's calls together, so that they overlap as an Inference Endpoint's requests do.
    """
    barrier = threading.Barrier(len(arguments))

    def together(argument):
        barrier.wait()
        return call(argument)

    with ThreadPoolExecutor(max_workers=len(arguments)) as pool:
        return [list(pool.map(together, arguments)) for _ in range(rounds)]


# Runs first in a subprocess: takes this repository off the import machinery, including the finder that an editable
# install (`pip install -e .`) puts on sys.meta_path, then proves that none of its packages can be imported.
WITHOUT_REPO_PRELUDE = """
import importlib.util, sys
sys.meta_path = [finder for finder in sys.meta_path if "__editable__" not in getattr(finder, "__module__", "")]
sys.path = [path for path in sys.path if path not in ("", ".") and not path.startswith({repo!r})]
for name in ("tte", "training", "tte_eval", "tests", "scripts"):
    if importlib.util.find_spec(name) is not None:
        raise SystemExit(f"repository package {{name!r}} is importable")
"""


def run_without_repo(script: str, args: list[str], cwd) -> subprocess.CompletedProcess:
    """Run `script` in a fresh Python where this repository is not importable (only public libraries)."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(HF_HOME=str(cwd / "hf_home"), HF_HUB_OFFLINE="1")
    prelude = WITHOUT_REPO_PRELUDE.format(repo=REPO_ROOT)
    return subprocess.run([sys.executable, "-c", prelude + script, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, stdin=subprocess.DEVNULL, timeout=900)  # fmt: skip  (a hang bound, not a speed check)
