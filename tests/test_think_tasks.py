"""think="tasks": the queries of the chosen task families think, every other input embeds without a trace."""

import copy

import numpy as np
import pytest

from tests.conftest import make_image


QUERIES = [{"text": "what colour is the square ?", "task": "vqa"}, "a red square left of a blue circle",
           {"image": make_image(3), "task": "classification"}, {"text": "how many shapes ?", "task": "vqa"},
           {"text": "the shape above the circle", "image": make_image(4), "task": "grounding"}]  # fmt: skip
THINKS = np.array([True, False, False, True, True])  # the second is a retrieval query (the default family)


def thinking_about(model, families):
    model = copy.deepcopy(model)
    model.config.think, model.config.think_tasks = "tasks", families
    return model


@pytest.mark.parametrize("variant", ["unified", "student"])
def test_the_chosen_families_think_and_the_others_embed_without_a_trace(tiny_tte, variant):
    model = thinking_about(tiny_tte("qwen2_vl", variant), ["grounding", "vqa"])
    tasks, traces, stats = model.embed(QUERIES, return_reasoning="ids", return_stats=True)
    assert [bool(ids) for ids in traces] == THINKS.tolist()
    assert (stats.generated, stats.without_trace) == (THINKS.sum(), (~THINKS).sum())
    assert np.abs(tasks[THINKS] - model.embed(QUERIES, think=True)[THINKS]).max() <= 1e-4
    assert np.abs(tasks[~THINKS] - model.embed(QUERIES, think=False)[~THINKS]).max() <= 1e-4
    documents = model.embed(QUERIES, side="document", return_stats=True)[1]
    assert (documents.generated, documents.without_trace) == (0, len(QUERIES))
    # a per-input flag still wins over the policy
    flagged = model.embed([{**QUERIES[0], "think": False}, {"text": "a red square", "think": True}],
                          return_reasoning="ids")[1]  # fmt: skip
    assert [bool(ids) for ids in flagged] == [False, True]


def test_a_call_may_ask_for_the_policy_and_an_empty_choice_never_thinks(tiny_tte):
    base = tiny_tte("qwen2_vl", "unified")
    model = copy.deepcopy(base)
    model.config.think_tasks = ["classification"]  # the default stays "queries"
    _, traces = model.embed(QUERIES, think="tasks", return_reasoning="ids")
    assert [bool(ids) for ids in traces] == [False, False, True, False, False]
    _, traces = thinking_about(base, []).embed(QUERIES, return_reasoning="ids")
    assert not any(traces)


def test_the_policy_needs_known_families(tiny_tte):
    base = tiny_tte("qwen2_vl", "unified")
    with pytest.raises(ValueError, match="needs config.think_tasks"):
        base.embed(QUERIES, think="tasks")
    with pytest.raises(ValueError, match=r"config.think_tasks names \['vqa-typo'\], which prompt set 'ecr-v1' lacks"):
        thinking_about(base, ["vqa", "vqa-typo"]).embed(QUERIES)


def test_the_policy_is_saved_with_the_model(tiny_tte, tmp_path):
    from tte.modeling_tte import TTEModel

    model = thinking_about(tiny_tte("qwen2_vl", "unified"), ["vqa"])
    model.save_pretrained(tmp_path / "model")
    again = TTEModel.from_pretrained(tmp_path / "model")
    assert (again.config.think, again.config.think_tasks) == ("tasks", ["vqa"])
    assert np.abs(again.embed(QUERIES) - model.embed(QUERIES)).max() <= 1e-4


def test_tasks_through_sentence_transformers_the_handler_and_the_cli(export_folder, tmp_path, capsys):
    import json
    import shutil

    from sentence_transformers import SentenceTransformer

    import tte_cli
    from tests.test_handler import load_handler
    from tte.modeling_tte import TTEModel

    folder = tmp_path / "model"
    shutil.copytree(export_folder, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "think_tasks": ["vqa"]}))
    texts = ["what colour is the square ?", "how many shapes ?"]
    model = TTEModel.from_pretrained(folder).eval()
    for family, thinks in (("vqa", True), ("retrieval", False)):
        expected = model.embed(texts, task=family, think=thinks)
        st_model = SentenceTransformer(str(folder), trust_remote_code=True)
        assert np.abs(st_model.encode(texts, think="tasks", task_family=family) - expected).max() <= 1e-4
        reply = load_handler(str(folder))({"inputs": texts, "parameters": {"think": "tasks", "task": family,
                                                                           "return_stats": True}})  # fmt: skip
        assert np.abs(np.asarray(reply["embeddings"]) - expected).max() <= 1e-4
        assert reply["stats"]["without_trace"] == (0 if thinks else len(texts))
        tte_cli.main(["embed", str(folder), *texts, "--think", "tasks", "--task", family, "--stats"])
        printed = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
        assert printed[-1]["stats"]["without_trace"] == (0 if thinks else len(texts))
