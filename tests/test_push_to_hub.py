"""training/push_to_hub.py against a local fake Hub: only the HTTP boundary is faked, huggingface_hub runs for real."""

import base64
import json
import os
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from training.push_to_hub import main


REPO = r"/api/(?P<kind>models|spaces)/(?P<repo>[^/]+/[^/]+)"
SPACE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "space")


class FakeHub:
    """The few Hub API routes an upload uses: create repo, create branch, validate YAML, preupload, commit."""

    def __init__(self):
        self.repos = {}  # repo id -> {"private": bool, "branches": {name: {path: bytes}}, "commits": [summary]}
        self.requests = []  # (method, path, authorization header)
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self.request_handler())
        self.url = f"http://127.0.0.1:{self.server.server_port}"

    def request_handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                hub.requests.append(("POST", self.path, self.headers.get("Authorization")))
                status, reply = hub.route(self.path.split("?")[0], body)
                data = json.dumps(reply).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        return Handler

    def route(self, path: str, body: bytes) -> tuple[int, dict]:
        if path == "/api/repos/create":
            payload = json.loads(body)
            repo = f"{payload['organization']}/{payload['name']}"
            if repo in self.repos:
                return 409, {"error": "You already created this model repo", "url": f"{self.url}/{repo}"}
            private = payload.get("visibility") == "private"
            self.repos[repo] = {"private": private, "branches": {"main": {}}, "commits": [],
                                "type": payload.get("type", "model"), "sdk": payload.get("sdk")}  # fmt: skip
            return 200, {"url": f"{self.url}/{repo}"}
        if path == "/api/validate-yaml":
            return 200, {"errors": [], "warnings": []}
        match = re.fullmatch(REPO + r"/(?P<action>branch|preupload|commit)/(?P<revision>[^/]+)", path)
        if match is None or match["repo"] not in self.repos:
            return 404, {"error": f"not found: {path}"}
        if match["kind"] != self.repos[match["repo"]].get("type", "model") + "s":
            return 404, {"error": f"{match['repo']} is not a {match['kind'][:-1]} repository"}
        branches = self.repos[match["repo"]]["branches"]
        if match["action"] == "branch":
            branches.setdefault(match["revision"], dict(branches["main"]))
            return 200, {}
        if match["revision"] not in branches:
            return 404, {"error": f"revision {match['revision']} not found"}
        if match["action"] == "preupload":
            files = json.loads(body)["files"]
            return 200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]}
        lines = [json.loads(line) for line in body.decode().splitlines()]
        self.repos[match["repo"]]["commits"].append(lines[0]["value"]["summary"])
        for line in lines[1:]:
            branches[match["revision"]][line["value"]["path"]] = base64.b64decode(line["value"]["content"])
        return 200, {"commitUrl": f"{self.url}/{match['repo']}/commit/{'a' * 40}", "commitOid": "a" * 40}


@pytest.fixture
def fake_hub(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_fake_token")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    hub = FakeHub()
    threading.Thread(target=hub.server.serve_forever, daemon=True).start()
    yield hub
    hub.server.shutdown()


def test_push_creates_private_repo_and_branch_and_uploads_every_file(fake_hub, export_folder):
    main(["--folder", export_folder, "--repo_id", "tte-org/tiny-random", "--revision", "dev", "--private",
          "--commit_message", "Tiny random TTE", "--endpoint", fake_hub.url])  # fmt: skip
    repo = fake_hub.repos["tte-org/tiny-random"]
    assert repo["private"] is True and repo["commits"] == ["Tiny random TTE"]
    assert repo["branches"]["main"] == {}
    local = {name: open(os.path.join(export_folder, name), "rb").read() for name in os.listdir(export_folder)}
    assert repo["branches"]["dev"] == local
    assert all(auth == "Bearer hf_fake_token" for _, _, auth in fake_hub.requests)


def test_push_to_existing_repo_commits_to_main(fake_hub, export_folder):
    fake_hub.repos["tte-org/old"] = {"private": False, "branches": {"main": {"README.md": b"old"}}, "commits": []}
    main(["--folder", export_folder, "--repo_id", "tte-org/old", "--endpoint", fake_hub.url])
    repo = fake_hub.repos["tte-org/old"]
    assert repo["commits"] == ["Upload TTE model"] and repo["private"] is False
    assert repo["branches"]["main"]["README.md"] == open(os.path.join(export_folder, "README.md"), "rb").read()


def test_dry_run_lists_files_and_uploads_nothing(fake_hub, export_folder, capsys):
    main(["--folder", export_folder, "--repo_id", "tte-org/tiny-random", "--dry-run", "--endpoint", fake_hub.url])
    out = capsys.readouterr().out
    assert "repo tte-org/tiny-random (model, public if created), branch main" in out
    for name in os.listdir(export_folder):
        assert f"  {name}  {os.path.getsize(os.path.join(export_folder, name)):,} bytes" in out
    assert "dry run: nothing uploaded" in out
    assert fake_hub.requests == []


def test_push_refuses_a_folder_that_is_not_an_export(fake_hub, tmp_path):
    (tmp_path / "optimizer.bin").write_bytes(b"x")
    with pytest.raises(ValueError, match=r"files outside the export's allowed set: \['optimizer.bin'\]"):
        main(["--folder", str(tmp_path), "--repo_id", "tte-org/x", "--endpoint", fake_hub.url])
    assert fake_hub.requests == []


def test_push_help_lists_its_settings(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    usage = capsys.readouterr().out
    assert all(flag in usage for flag in ("--folder", "--repo_id", "--revision", "--private", "--dry_run"))


def test_push_space_creates_a_gradio_space_with_its_app_and_examples(fake_hub):
    main(["--folder", SPACE, "--repo_id", "tte-org/tte-mini-demo", "--repo_type", "space",
          "--commit_message", "TTE-mini demo", "--endpoint", fake_hub.url])  # fmt: skip
    repo = fake_hub.repos["tte-org/tte-mini-demo"]
    assert repo["type"] == "space" and repo["sdk"] == "gradio" and repo["commits"] == ["TTE-mini demo"]
    uploaded = repo["branches"]["main"]
    assert {"README.md", "app.py", "requirements.txt", "examples/examples.json"} <= set(uploaded)
    assert uploaded["app.py"] == open(os.path.join(SPACE, "app.py"), "rb").read()
    examples = json.loads(uploaded["examples/examples.json"])
    assert all(f"examples/{example['image']}" in uploaded for example in examples)


def test_space_dry_run_lists_the_space_files_and_uploads_nothing(fake_hub, capsys):
    main(["--folder", SPACE, "--repo_id", "tte-org/demo", "--repo_type", "space", "--dry_run",
          "--endpoint", fake_hub.url])  # fmt: skip
    out = capsys.readouterr().out
    assert "repo tte-org/demo (space, public if created), branch main" in out
    assert f"  app.py  {os.path.getsize(os.path.join(SPACE, 'app.py')):,} bytes" in out
    assert fake_hub.requests == []


def make_space(folder, readme: str = "---\nsdk: gradio\napp_file: app.py\n---\n# demo\n") -> str:
    (folder / "README.md").write_text(readme)
    (folder / "app.py").write_text("print('hi')\n")
    (folder / "requirements.txt").write_text("gradio\n")
    return str(folder)


def test_push_refuses_a_space_folder_with_files_a_space_does_not_take(fake_hub, tmp_path):
    folder = make_space(tmp_path)
    (tmp_path / ".env").write_text("HF_TOKEN=secret\n")
    with pytest.raises(ValueError, match=r"files a Space upload does not take: \['.env'\]"):
        main(["--folder", folder, "--repo_id", "tte-org/x", "--repo_type", "space", "--endpoint", fake_hub.url])
    assert fake_hub.requests == []


def test_push_refuses_a_space_whose_readme_does_not_name_gradio_and_its_app(fake_hub, tmp_path):
    folder = make_space(tmp_path, "---\nsdk: docker\napp_file: app.py\n---\n")
    with pytest.raises(ValueError, match="sdk: gradio.*sdk='docker'"):
        main(["--folder", folder, "--repo_id", "tte-org/x", "--repo_type", "space", "--endpoint", fake_hub.url])
    (tmp_path / "README.md").write_text("# no YAML\n")
    with pytest.raises(ValueError, match="no YAML block"):
        main(["--folder", folder, "--repo_id", "tte-org/x", "--repo_type", "space", "--endpoint", fake_hub.url])
    assert fake_hub.requests == []
