"""easy-VQA (`easy-vqa==1.0`, MIT) as training rows and as an evaluation task.

- `write_easy_vqa_source`: a split's questions as MMEB-train rows (`training/data.py`): image + question -> answer.
- `write_easy_vqa_task`: the test split as a `tte_eval` user task (`tte-eval evaluate --tasks-dir`): each query is an
  image + question, ranked locally against every answer of its kind (8 colours, 3 shapes, or yes / no); the label is
  the positive. The images are copied into the task folder, as a task folder must be self-contained.

    python -m training.easy_vqa_data --output_dir data/easy-vqa
"""

import json
import os
import shutil
from dataclasses import dataclass, field

from transformers import HfArgumentParser

from training.checkpoint import write_atomic
from training.eval_easy_vqa import KINDS, answer_kind, image_labels
from tte_eval.user_tasks import write_task


SPLITS = ("train", "test")


def _split(split: str) -> tuple[list, dict]:
    """(questions as (question, answer, image id) triples, image paths by id) of an easy-VQA split."""
    import easy_vqa

    if split not in SPLITS:
        raise ValueError(f"split {split!r} is not one of {SPLITS}")
    questions = getattr(easy_vqa, f"get_{split}_questions")()
    return list(zip(*questions)), getattr(easy_vqa, f"get_{split}_image_paths")()


def write_easy_vqa_source(folder: str, split: str = "train") -> dict:
    """Write `folder/<split>.jsonl`, MMEB-train rows of every question of the split; returns its source entry."""
    questions, paths = _split(split)
    image_dir = os.path.dirname(next(iter(paths.values())))
    rows = [{"id": f"easy-vqa-{split}-{index}", "qry": question, "qry_image_path": os.path.basename(paths[image_id]),
             "pos_text": answer} for index, (question, answer, image_id) in enumerate(questions)]  # fmt: skip
    os.makedirs(folder, exist_ok=True)
    write_atomic(os.path.join(folder, f"{split}.jsonl"), "".join(json.dumps(row) + "\n" for row in rows))
    return {"name": f"easy-vqa-{split}", "path": f"{split}.jsonl", "image_dir": image_dir, "task": "vqa"}


def copy_images(folder: str, paths: dict, image_ids: list) -> None:
    """Copy the chosen test images into the task folder, which must be self-contained."""
    os.makedirs(os.path.join(folder, "images"), exist_ok=True)
    for image_id in image_ids:
        shutil.copyfile(paths[image_id], os.path.join(folder, "images", f"{image_id}.png"))


def answer_row(question: str, answer: str, image_id) -> dict:
    """A user-task row: image + question, ranked against every answer of its kind, the label first (positive)."""
    others = sorted(KINDS[answer_kind(answer)] - {answer})
    return {"qry_inst": "", "qry_text": question, "qry_img_path": f"images/{image_id}.png", "tgt_inst": "",
            "tgt_text": [answer, *others], "tgt_img_path": [""] * (1 + len(others)), "positives": [0]}


def write_easy_vqa_task(folder: str, max_images: int | None = None) -> str:
    """The test split as a user task folder `folder` (local ranking over the answers of the question's kind)."""
    questions, paths = _split("test")
    image_ids = sorted(paths)[:max_images]
    copy_images(folder, paths, image_ids)
    chosen, rows = set(image_ids), []
    for question, answer, image_id in questions:
        if image_id not in chosen:
            continue
        rows.append(answer_row(question, answer, image_id))
    spec = {"name": "easy-vqa-test", "modality": "image", "eval_type": "local", "metric": "hit@1"}
    write_task(folder, spec, rows)
    return folder


def write_easy_vqa_control(folder: str, max_images: int, name: str = "easy-vqa-control") -> list[tuple[str, str]]:
    """The control task of the variant comparison: on the first `max_images` test images whose labels are known
    (`image_labels`), the first question of each kind (colour, shape, yes/no) an image has, ranked as in
    `write_easy_vqa_task`, under the `vqa` prompt family.

    Returns:
        The oracle's query traces, `("<name>/<row>", trace)`: the image's labelled colour and shape, then the answer.
    """
    from training.scene_tasks import oracle_trace_of

    questions, paths = _split("test")
    labels = image_labels()
    image_ids = sorted(image_id for image_id in paths if image_id in labels)[:max_images]
    copy_images(folder, paths, image_ids)
    chosen, rows, traces, asked = set(image_ids), [], [], set()
    for question, answer, image_id in questions:
        if image_id not in chosen or (image_id, answer_kind(answer)) in asked:
            continue
        asked.add((image_id, answer_kind(answer)))  # one colour, one shape and one yes/no question per image
        colour, shape = labels[image_id]
        traces.append((f"{name}/{len(rows)}", oracle_trace_of(f"The image shows a {colour} {shape}.", answer)))
        rows.append(answer_row(question, answer, image_id))
    write_task(folder, {"name": name, "modality": "image", "eval_type": "local", "metric": "hit@1", "task": "vqa"}, rows)
    return traces


@dataclass
class EasyVQAArgs:
    output_dir: str = field(metadata={"help": "Writes train.jsonl (training rows) and task/ (the test task)."})
    max_images: int | None = field(default=None, metadata={"help": "Test images in the task (all: 1,000)."})


def main(argv: list[str] | None = None) -> None:
    (args,) = HfArgumentParser(EasyVQAArgs).parse_args_into_dataclasses(argv)
    source = write_easy_vqa_source(args.output_dir, "train")
    write_easy_vqa_task(os.path.join(args.output_dir, "task"), args.max_images)
    print(f"wrote {source['path']} (source {source['name']}) and the test task to {args.output_dir}")


__all__ = ["write_easy_vqa_control", "write_easy_vqa_source", "write_easy_vqa_task", "main"]


if __name__ == "__main__":
    main()
