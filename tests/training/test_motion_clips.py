"""The motion clips (training/motion_clips.py): frames that show the event, a user video task that `tte-eval` runs."""

import json
import os

import numpy as np
from PIL import Image

from training.motion_clips import EVENTS, FRAMES, main
from tte_eval.cli import main as tte_eval
from tte_eval.user_tasks import load_user_task


def shape_columns(path: str) -> np.ndarray:
    """The columns where a frame differs from its background (its top-left pixel)."""
    pixels = np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)
    return np.nonzero((np.abs(pixels - pixels[0, 0]).sum(axis=-1) > 60).any(axis=0))[0]


def test_each_clip_shows_its_event_and_the_task_loads_as_video(tmp_path):
    folder = main(["--output_dir", str(tmp_path), "--rows", "8", "--seed", "3"])
    task = load_user_task(folder, num_frames=FRAMES)
    assert task.data.spec.modality == "video" and len(task.data.rows) == 8
    for row in task.data.rows:
        frames = row.query.video
        assert len(frames) == FRAMES and row.query.image is None
        event = EVENTS[int(row.row_id) % len(EVENTS)]
        assert row.candidates[0].item.text.endswith(event) and set(row.labels) == {row.candidates[0].cand_id}
        columns = [shape_columns(path) for path in frames]
        if event in ("moves left", "moves right"):
            centres = [c.mean() for c in columns]
            assert all(b > a for a, b in zip(centres, centres[1:])) == (event == "moves right")
            assert all(b < a for a, b in zip(centres, centres[1:])) == (event == "moves left")
        else:
            present = [len(c) > 0 for c in columns]
            half = [False] * (FRAMES // 2) + [True] * (FRAMES // 2)
            assert present == (half if event == "appears" else half[::-1])


def test_tte_eval_runs_the_motion_task_with_and_without_thinking(tmp_path, tiny_tte_folder):
    main(["--output_dir", str(tmp_path / "tasks"), "--rows", "4"])
    for think in ("never", "queries"):
        output = tmp_path / think
        tte_eval(["evaluate", "--model", tiny_tte_folder, "--tasks-dir", str(tmp_path / "tasks"), "--output",
                  str(output), "--think", think])  # fmt: skip
        report = json.loads((output / "results.json").read_text())
        entry = report["user_tasks"]["tasks"]["scene-motion"]
        assert entry["modality"] == "video" and entry["metrics"]["num_pred"] == 4 and 0 <= entry["score"] <= 1
        assert report["cost"]["query"]["think_rate"] == (0.0 if think == "never" else 1.0)
    assert os.path.isdir(tmp_path / "tasks" / "scene-motion" / "clips" / "0003")
