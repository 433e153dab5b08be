"""Short motion clips from the scene generator, as a video task for `tte-eval`: a shape moves left or right, appears
or disappears.

    python -m training.motion_clips --output_dir runs/motion-clips --rows 50 --seed 0
    tte-eval evaluate --model models/tte-mini --tasks-dir runs/motion-clips --output runs/motion-eval --think never

writes one user task (`tte_eval.write_task`), `scene-motion`: each query is a clip (a folder of `FRAMES` frames of
64x64 pixels) with a question, its targets the four events of the clip's shape ("the red circle moves left", "...
moves right", "... appears", "... disappears"), the true one the positive. Only the order of the frames tells the
events apart: the shape, its colour and its size are the same in the four targets.
"""

import argparse
import os
import random
from dataclasses import replace

from training.scenes import Scene, random_scene, render
from tte_eval.user_tasks import write_task


FRAMES = 8
EVENTS = ("moves left", "moves right", "appears", "disappears")
TASK = {"name": "scene-motion", "modality": "video", "eval_type": "local", "metric": "hit@1", "task": "retrieval"}
QUESTION = "What happens to the shape in this video?"
INSTRUCTION = "Select the description of the video."


def clip(scene: Scene, event: str) -> list[Scene]:
    """`FRAMES` scenes of one shape doing `event`: sliding across the canvas, or present in half of the clip only."""
    (shape,) = scene.objects
    left, top, right, bottom = shape.box
    width = right - left
    if event in ("moves left", "moves right"):
        travel = scene.size - width  # from one edge to the other
        lefts = [round(travel * step / (FRAMES - 1)) for step in range(FRAMES)]
        lefts = lefts[::-1] if event == "moves left" else lefts
        return [replace(scene, objects=[replace(shape, box=(x, top, x + width, bottom))]) for x in lefts]
    shown = [step >= FRAMES // 2 for step in range(FRAMES)]
    shown = shown if event == "appears" else [not value for value in shown]
    return [replace(scene, objects=[shape] if visible else []) for visible in shown]


def write_motion_task(folder: str, rows: int, seed: int) -> str:
    """The `scene-motion` task in `folder`: `rows` clips, the events in turn, shapes drawn at random."""
    rng = random.Random(seed)
    records = []
    for number in range(rows):
        event = EVENTS[number % len(EVENTS)]
        scene = random_scene(rng, num_objects=1, max_extent=20)  # small enough to travel across the canvas
        clip_folder = os.path.join("clips", f"{number:04d}")
        os.makedirs(os.path.join(folder, clip_folder), exist_ok=True)
        for step, frame in enumerate(clip(scene, event)):
            render(frame).save(os.path.join(folder, clip_folder, f"frame_{step}.png"))
        name = scene.objects[0].name
        targets = [f"the {name} {event}"] + [f"the {name} {other}" for other in EVENTS if other != event]
        records.append({"qry_inst": INSTRUCTION, "qry_text": QUESTION, "qry_img_path": "",
                        "qry_video_path": clip_folder, "tgt_inst": "", "tgt_text": targets,
                        "tgt_img_path": [""] * len(targets), "positives": [0]})  # fmt: skip
    write_task(folder, TASK, records)
    return folder


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output_dir", required=True, help="the tasks dir; the task goes in <output_dir>/scene-motion")
    parser.add_argument("--rows", type=int, default=48, help="clips (the four events in turn)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    folder = write_motion_task(os.path.join(args.output_dir, TASK["name"]), args.rows, args.seed)
    print(f"wrote {args.rows} motion clips to {folder}")
    return folder


if __name__ == "__main__":
    main()
