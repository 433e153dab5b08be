import json

import pytest

import tte_cli
from tests.conftest import make_image


def test_cli_embed_prints_vectors_and_reasoning(tiny_tte_folder, tmp_path, capsys):
    make_image().save(tmp_path / "img.png")
    tte_cli.main(["embed", tiny_tte_folder, "a red square", "--image", str(tmp_path / "img.png"), "--show-reasoning"])
    rows = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [row["input"] for row in rows] == ["a red square", {"image": str(tmp_path / "img.png")}]
    assert all(len(row["embedding"]) == 8 and row["reasoning"] for row in rows)


def test_cli_rank_orders_candidates_by_score(tiny_tte_folder, capsys):
    tte_cli.main(["rank", tiny_tte_folder, "circle", "square", "triangle", "--query", "what shape ?"])
    rows = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert sorted(row["candidate"] for row in rows) == ["circle", "square", "triangle"]
    scores = [row["score"] for row in rows]
    assert scores == sorted(scores, reverse=True) and [row["rank"] for row in rows] == [1, 2, 3]


def test_cli_stats_and_trace_cache(tiny_tte_folder, tmp_path, capsys):
    command = ["embed", tiny_tte_folder, "a red square", "a blue circle", "--trace-cache", str(tmp_path / "t.sqlite"),
               "--stats"]  # fmt: skip
    tte_cli.main(command)
    first = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert len(first) == 3 and set(first[-1]) == {"stats"}
    assert (first[-1]["stats"]["generated"], first[-1]["stats"]["cache_hits"]) == (2, 0)
    tte_cli.main(command)
    second = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert (second[-1]["stats"]["generated"], second[-1]["stats"]["cache_hits"]) == (0, 2)
    tte_cli.main(["rank", tiny_tte_folder, "circle", "square", "--query", "what shape ?", "--stats"])
    stats = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["stats"]
    assert (stats["inputs"], stats["generated"], stats["without_trace"]) == (3, 1, 2)  # documents do not think
    tte_cli.main(["embed", tiny_tte_folder, "a red square"])
    assert "stats" not in capsys.readouterr().out


def test_cli_reports_bad_input_without_traceback(tiny_tte_folder, capsys):
    with pytest.raises(SystemExit) as exit_info:
        tte_cli.main(["embed", tiny_tte_folder, "--image", "no-such-file.png"])
    assert exit_info.value.code == 2
    assert "inputs[0]['image']: image file 'no-such-file.png' does not exist" in capsys.readouterr().err


def test_cli_names_a_missing_model_folder_without_traceback(tmp_path, capsys):
    missing = str(tmp_path / "no-such-model")
    with pytest.raises(SystemExit) as exit_info:
        tte_cli.main(["embed", missing, "a red square"])
    assert exit_info.value.code == 2
    assert f"tte embed: error: model folder {missing!r} does not exist" in capsys.readouterr().err
