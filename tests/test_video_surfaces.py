"""Videos through every surface: sentence-transformers, the Inference Endpoints handler and the CLI return what
`embed` returns for the same video."""

import base64
import io
import json
import re

import numpy as np
import pytest
from sentence_transformers import SentenceTransformer

import tte_cli
from tests.conftest import tiny_export_model
from tests.test_handler import load_handler
from tests.test_video import frame_of, write_video
from tte.custom_st import TTESentenceTransformer


pytest.importorskip("av")
FRAMES = [frame_of(number) for number in range(6)]


def frame_uri(image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


@pytest.fixture(scope="module")
def mp4(tmp_path_factory):
    return write_video(str(tmp_path_factory.mktemp("clip") / "clip.mp4"), count=20)


def test_sentence_transformers_encodes_videos_as_embed_does(mp4):
    model = tiny_export_model()
    st = SentenceTransformer(modules=[TTESentenceTransformer(model)])
    inputs = [{"video": FRAMES, "text": "what moves?"}, mp4]
    assert np.abs(st.encode_query(inputs) - model.embed(inputs, side="query")).max() <= 1e-4
    assert np.abs(st.encode_document([mp4]) - model.embed([mp4], side="document")).max() <= 1e-4
    assert st.encode_query([{"video": FRAMES}], output_value="reasoning")[0]  # a video query thinks


def test_the_handler_takes_a_video_as_data_uri_frames_or_a_video_uri(export_folder, mp4):
    handler = load_handler(export_folder)
    video_uri = "data:video/mp4;base64," + base64.b64encode(open(mp4, "rb").read()).decode("ascii")
    reply = handler({"inputs": [{"video": [frame_uri(frame) for frame in FRAMES], "text": "what moves?"}, video_uri]})
    expected = tiny_export_model().embed([{"video": FRAMES, "text": "what moves?"}, mp4])
    assert np.abs(np.asarray(reply) - expected).max() <= 1e-4


@pytest.mark.parametrize("video, message", [
    ("/etc/passwd", r"inputs\[0\]\['video'\]: a video must be a 'data:video/...;base64,...' URI or a list of frames"),
    (["/tmp/frame.png"], r"inputs\[0\]\['video'\]\[0\]: an image must be a 'data:image/...;base64,...' URI"),
    (["http://example.com/a.png"], r"inputs\[0\]\['video'\]\[0\]: image URLs are off on this endpoint"),
    ([], r"inputs\[0\]\['video'\]: the video has no frames"),
])  # fmt: skip
def test_the_handler_never_reads_a_server_path_as_a_video(export_folder, video, message):
    reply = load_handler(export_folder)({"inputs": [{"video": video}]})
    assert set(reply) == {"error"}
    assert re.search(message, reply["error"]), reply["error"]


def test_the_cli_embeds_and_ranks_videos(tiny_tte_folder, tmp_path, mp4, capsys):
    folder = tmp_path / "frames"
    folder.mkdir()
    for number, frame in enumerate(FRAMES):
        frame.save(folder / f"{number}.png")
    tte_cli.main(["embed", tiny_tte_folder, "--video", mp4, "--video", str(folder), "--num-frames", "4",
                  "--full-vector"])  # fmt: skip
    rows = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    model = tte_cli.load_model(tiny_tte_folder, allow_urls=False)
    expected = model.embed([{"video": mp4}, {"video": str(folder)}], video_sampling={"num_frames": 4})
    assert [row["input"] for row in rows] == [{"video": mp4}, {"video": str(folder)}]
    assert np.abs(np.asarray([row["embedding"] for row in rows]) - expected).max() <= 1e-4  # printed to 4 places
    tte_cli.main(["rank", tiny_tte_folder, "a shape moves", "--query", "what happens?", "--query-video", mp4,
                  "--candidate-video", str(folder)])  # fmt: skip
    ranked = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert sorted(str(row["candidate"]) for row in ranked) == sorted(["a shape moves", str({"video": str(folder)})])
