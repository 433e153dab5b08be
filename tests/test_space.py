"""The Space (space/app.py): its request handling on a tiny random model, and the real thing in headless Chromium on
TTE-mini, started from a folder that holds only `space/` and the model folder, as the Hub runs it."""

import importlib.util
import io
import json
import os
import shutil
import sys
import time

import gradio as gr
import numpy as np
import pytest
from PIL import Image

from scripts.space_browser import chromium, choose_file, open_page, running_space, search, shown_error, shown_ranking
from tests.conftest import REPO_ROOT, WITHOUT_REPO_PRELUDE, make_image


SPACE = os.path.join(REPO_ROOT, "space")


def load_app():
    spec = importlib.util.spec_from_file_location("space_app", os.path.join(SPACE, "app.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def app():
    return load_app()


def png_file(tmp_path, name: str, image: Image.Image) -> str:
    path = tmp_path / name
    image.save(path)
    return str(path)


def test_search_ranks_as_embed_does_with_and_without_thinking(app, tiny_tte, tmp_path):
    model = tiny_tte("qwen2_vl", "unified")
    image = png_file(tmp_path, "query.png", make_image(1))
    candidates = ["a red circle", "a blue square", "a green triangle"]
    *_, final = app.search(
        model, "what is left of the circle?", image, "Answer.", "vqa", "\n".join(candidates), None, "queries", 6
    )
    trace, thinking, thinking_list, plain, plain_list = final
    query = {"text": "what is left of the circle?", "image": open(image, "rb").read(), "instruction": "Answer.",
             "task": "vqa"}  # fmt: skip
    vector, traces = model.embed([query], side="query", think="queries", return_reasoning=True, max_new_tokens=6)
    documents = model.embed(candidates, side="document", think="queries", max_new_tokens=6)
    scores = documents @ vector[0]
    assert trace == traces[0] and trace
    assert listed(thinking_list) == [candidates[i] for i in np.argsort(-scores, kind="stable")]
    assert list(thinking["candidate"]) == listed(thinking_list)[: app.CHART_BARS]
    assert np.allclose(thinking["score"], np.sort(scores)[::-1][: app.CHART_BARS], atol=1e-6)
    plain_scores = documents @ model.embed([query], side="query", think="never")[0]
    assert listed(plain_list) == [candidates[i] for i in np.argsort(-plain_scores, kind="stable")]
    assert list(plain["candidate"]) == listed(plain_list)[: app.CHART_BARS]


def test_search_shows_the_trace_while_it_is_written(app, tiny_tte):
    model = tiny_tte("qwen2_vl", "unified")
    *streamed, final = app.search(model, "a red circle", None, "", "retrieval", "a\nb", None, "always", 12)
    pieces = [update[0] for update in streamed]
    assert pieces and all(later.startswith(earlier) for earlier, later in zip(pieces, pieces[1:]))
    assert all(update[1:] == (gr.skip(),) * 4 for update in streamed)  # the rankings come once, at the end
    _, traces = model.embed(["a red circle"], think="always", return_reasoning=True, max_new_tokens=12)
    assert final[0] == traces[0]


def listed(listing: str) -> list[str]:
    """The candidates of the page's numbered list ("1. a red circle (0.123)"), in order."""
    return [line.split(". ", 1)[1].rsplit(" (", 1)[0] for line in listing.splitlines()]


def test_the_chart_shows_the_top_candidates_and_the_list_all(app):
    table, listing = app.ranking(np.arange(12, dtype=np.float32), [f"c{i}" for i in range(12)])
    assert list(table["candidate"]) == [f"c{i}" for i in range(11, 1, -1)]
    assert listed(listing) == [f"c{i}" for i in range(11, -1, -1)]


def test_image_candidates_are_ranked_by_file_name(app, tiny_tte, tmp_path):
    model = tiny_tte("qwen2_vl", "unified")
    files = [png_file(tmp_path, f"candidate-{i}.png", make_image(i)) for i in range(2)]
    *_, (_, _, listing, _, _) = app.search(model, "a picture", None, "", "retrieval", "a caption", files, "never", 4)
    assert sorted(listed(listing)) == ["a caption", "candidate-0.png", "candidate-1.png"]


@pytest.mark.parametrize(
    "query_file, candidates, message",
    [
        ("notes.txt", "a", r"inputs\[0\]\['image'\]: not a readable image"),
        ("huge.png", "a", r"inputs\[0\]\['image'\]: image is 9000x9000 = 81000000 pixels, over max_image_pixels"),
        ("small.png", " \n ", "Give candidates"),
        (None, "a", "Give a query"),
    ],
)
def test_bad_input_is_a_readable_error_for_the_page(app, tiny_tte, tmp_path, query_file, candidates, message):
    (tmp_path / "notes.txt").write_text("not an image")
    Image.new("L", (9000, 9000)).save(tmp_path / "huge.png")  # small on disk, too many pixels to decode
    make_image(0).save(tmp_path / "small.png")
    path = str(tmp_path / query_file) if query_file else None
    with pytest.raises(gr.Error, match=message):
        list(app.search(tiny_tte("qwen2_vl", "unified"), "", path, "", "vqa", candidates, None, "queries", 4))


def test_compare_gives_both_traces_and_their_cosine(app, tiny_tte):
    model = tiny_tte("qwen2_vl", "unified")
    trace_a, trace_b, similarity = app.compare(model, "a red circle", None, "a blue square", None, "", "retrieval",
                                               "always", 5)  # fmt: skip
    vectors, traces = model.embed(["a red circle", "a blue square"], side="query", think="always",
                                  return_reasoning=True, max_new_tokens=5)  # fmt: skip
    assert (trace_a, trace_b) == tuple(traces)
    assert similarity == f"**cosine similarity: {float(vectors[0] @ vectors[1]):.4f}**"


def test_examples_exist_and_are_what_the_page_offers(app):
    with open(os.path.join(SPACE, "examples", "examples.json")) as handle:
        examples = json.load(handle)
    rows = app.load_examples()
    assert len(rows) == len(examples) >= 5
    for row, example in zip(rows, examples):
        assert os.path.isfile(row[1]) and Image.open(row[1]).size == (64, 64)
        assert example["answer"] in example["candidates"]


# The Hub runs `python app.py` in a folder holding the Space; the model comes from its own repository. Here: a fresh
# process where this repository cannot be imported, in a folder with only space/ and the model folder.
APP_WITHOUT_REPO = WITHOUT_REPO_PRELUDE + """
import runpy
runpy.run_path("space/app.py", run_name="__main__")
"""


@pytest.fixture(scope="module")
def space_folder(tte_mini, tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("hub-space")
    shutil.copytree(SPACE, folder / "space")
    shutil.copytree(tte_mini, folder / "tte-mini")
    assert sorted(os.listdir(folder)) == ["space", "tte-mini"]
    return str(folder)


def test_space_in_a_real_browser_shows_the_trace_and_embeds_top_candidate(space_folder, tmp_path):
    from transformers import AutoModel

    example = json.load(open(os.path.join(SPACE, "examples", "examples.json")))[0]  # the relational test question
    image = os.path.join(SPACE, "examples", example["image"])
    (tmp_path / "notes.txt").write_text("not an image")
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(HF_HOME=str(tmp_path / "hf_home"), HF_HUB_OFFLINE="1")
    command = [sys.executable, "-c", APP_WITHOUT_REPO.format(repo=REPO_ROOT)]
    log = str(tmp_path / "space.log")
    with running_space(command, "tte-mini", space_folder, log, env) as url, chromium() as driver:
        search(driver, url, image, example["question"], example["candidates"], example["instruction"])
        shown = shown_ranking(driver)
        shown_plain = shown_ranking(driver, "ranking-plain")
        trace = driver.find_element("css selector", "#trace textarea").get_attribute("value")
        driver.save_screenshot(str(tmp_path / "space.png"))
        search(driver, url, str(tmp_path / "notes.txt"), example["question"], ["a", "b"])
        error = shown_error(driver)
        (tmp_path / "big.png").write_bytes(os.urandom(5 * 2**20))  # over the Space's 4 MB upload limit
        open_page(driver, url)
        choose_file(driver, "query-image", str(tmp_path / "big.png"))
        too_big = shown_error(driver)
    assert Image.open(io.BytesIO(open(tmp_path / "space.png", "rb").read())).size[0] > 0
    assert "not a readable image" in error
    assert "exceed the maximum allowed size of 4.0 Mb" in too_big and "big.png" in too_big

    model = AutoModel.from_pretrained(os.path.join(space_folder, "tte-mini"), trust_remote_code=True).eval()
    query = {"text": example["question"], "image": open(image, "rb").read(), "instruction": example["instruction"],
             "task": example["task"]}  # fmt: skip
    vector, traces = model.embed([query], side="query", think="queries", return_reasoning=True)
    documents = model.embed(example["candidates"], side="document", think="queries")
    plain = model.embed([query], side="query", think="never")
    assert trace == traces[0] and "</think>" in trace
    assert shown[0] == example["candidates"][int(np.argmax(documents @ vector[0]))]
    assert shown_plain[0] == example["candidates"][int(np.argmax(documents @ plain[0]))]
    assert sorted(shown) == sorted(example["candidates"])


def test_the_page_offers_auto_and_tasks_only_for_a_model_that_has_them(app, tiny_tte_folder, gated_export_folder,
                                                                       tmp_path):  # fmt: skip
    import json
    import shutil

    _, policies, _ = app.load_model(tiny_tte_folder)
    assert list(policies) == ["always", "never", "queries"]
    _, policies, _ = app.load_model(gated_export_folder)
    assert list(policies) == ["always", "never", "queries", "auto"]
    shutil.copytree(gated_export_folder, tmp_path / "both")
    config = json.loads((tmp_path / "both" / "config.json").read_text())
    (tmp_path / "both" / "config.json").write_text(json.dumps({**config, "think_tasks": ["vqa"]}))
    _, policies, _ = app.load_model(str(tmp_path / "both"))
    assert list(policies) == ["always", "never", "queries", "auto", "tasks"]


def test_the_queue_runs_one_request_at_a_time_and_refuses_past_its_size(app, tiny_tte_folder):
    from gradio_client import Client

    model, policies, tasks = app.load_model(tiny_tte_folder)
    running, most = [0], [0]
    embed = model.embed

    def slow_embed(*arguments, **settings):  # long enough that every request below is sent while the first runs
        running[0] += 1
        most[0] = max(most[0], running[0])
        try:
            time.sleep(0.5)
            return embed(*arguments, **settings)
        finally:
            running[0] -= 1

    model.embed = slow_embed
    demo = app.queued(app.build_demo(model, policies, tasks), size=2)
    assert app.CONCURRENCY == 1
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", quiet=True)
    try:
        client = Client(demo.local_url, verbose=False)
        arguments = ["a question", None, "Answer.", "vqa", "a red circle\na blue square", None, "never", 4]
        jobs = [client.submit(*arguments, api_name="/search") for _ in range(6)]
        outcomes = []
        for job in jobs:
            try:
                job.result(timeout=120)
                outcomes.append("done")
            except Exception as error:  # gradio_client raises its own error types for a refused request
                outcomes.append(str(error))
    finally:
        demo.close()
    assert most[0] == 1  # one request at a time
    assert outcomes.count("done") == 3, outcomes  # the running one and the two that fit in the queue
    assert all("queue is full" in outcome.lower() for outcome in outcomes if outcome != "done"), outcomes
