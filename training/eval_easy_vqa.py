"""Greedy question answering on easy-VQA's held-out test images, through `TTEModel.reason`.

easy-VQA (`easy-vqa==1.0`, MIT) has 1,000 test images of one coloured shape each, with questions whose answers are a
colour, a shape, or yes/no. The model answers each question with the reasoning prompt it uses at inference (task
family `vqa`), greedily; the answer is the word after "The answer is" in the trace's final text (the form the oracle
teacher's traces teach, `training.scenes.ANSWER_LEAD`), else the first word after the trace's last `</think>` (or of
the whole text when there is none), lower-cased without punctuation, and counts when it equals the label. Accuracy is
reported per answer kind. Each image is also described (`describe the image.` under the default prompt family), and
the trace counts when it names the image's colour and shape and no other. Nothing here is trained on these images.

    python -m training.eval_easy_vqa --model_path models/tte-mini --output results/easy_vqa.json
"""

import json
import os
import re
import time
from dataclasses import dataclass, field

import torch
from transformers import HfArgumentParser

from training.checkpoint import write_atomic
from training.scenes import ANSWER_LEAD, COLOURS, SHAPES
from tte.modeling_tte import TTEModel
from tte.processing_tte import THINK_END


KINDS = {"colour": set(COLOURS), "shape": set(SHAPES), "yes_no": {"yes", "no"}}
DESCRIBE = "describe the image."


@dataclass
class EvalArgs:
    model_path: str = field(metadata={"help": "TTE model folder."})
    output: str | None = field(default=None, metadata={"help": "Where the results JSON is written (atomically)."})
    max_images: int | None = field(default=None, metadata={"help": "Only the first N test images (all: 1,000)."})
    max_yes_no_per_image: int = field(default=1, metadata={"help": "Yes/no questions asked per image."})
    batch_size: int = field(default=32, metadata={"help": "Questions per generate call."})
    max_new_tokens: int = field(default=48, metadata={"help": "Answer (trace) length bound."})
    describe_max_new_tokens: int = field(default=16, metadata={"help": "Description (trace) length bound."})


def answer_kind(label: str) -> str:
    for kind, labels in KINDS.items():
        if label in labels:
            return kind
    raise ValueError(f"easy-VQA label {label!r} is not a colour, a shape, yes or no")


def easy_vqa_questions(max_images: int | None, max_yes_no_per_image: int) -> list[dict]:
    """easy-VQA test questions as `{image, question, label, kind}`: every colour and shape question of each image,
    and its first `max_yes_no_per_image` yes/no questions, images in id order."""
    from easy_vqa import get_test_image_paths, get_test_questions

    paths = get_test_image_paths()
    image_ids = sorted(paths)[:max_images]
    chosen, yes_no_count = set(image_ids), dict.fromkeys(image_ids, 0)
    questions = []
    for question, label, image_id in zip(*get_test_questions()):
        if image_id not in chosen:
            continue
        kind = answer_kind(label)
        if kind == "yes_no":
            if yes_no_count[image_id] >= max_yes_no_per_image:
                continue
            yes_no_count[image_id] += 1
        questions.append({"image": paths[image_id], "image_id": image_id, "question": question, "label": label,
                          "kind": kind})  # fmt: skip
    return sorted(questions, key=lambda q: (q["image_id"], q["kind"], q["question"]))


def image_labels() -> dict[int, tuple[str, str]]:
    """`{image id: (colour, shape)}` of the test images whose questions determine both.

    easy-VQA stores no labels per image; its questions reveal them. An answer fixes an attribute ("what is the red
    shape?" -> "circle" fixes both), and a yes/no answer keeps or removes the attribute it names, negations ("is no
    ... present?", "does ... not contain ...?") included. 888 of the 1,000 test images are fully determined.
    """
    from easy_vqa import get_test_questions

    candidates = {}
    for question, label, image_id in zip(*get_test_questions()):
        known = candidates.setdefault(image_id, {"colour": set(COLOURS), "shape": set(SHAPES)})
        words = re.findall(r"[a-z]+", question)
        named = {"colour": [w for w in words if w in COLOURS], "shape": [w for w in words if w in SHAPES]}
        if label in KINDS["yes_no"]:
            present = (label == "yes") != ("not" in words or "no" in words)
            for kind, values in named.items():
                for value in values:
                    known[kind] = known[kind] & {value} if present else known[kind] - {value}
            continue
        known[answer_kind(label)] &= {label}
        for kind, values in named.items():
            for value in values:
                known[kind] &= {value}
    return {image_id: (min(known["colour"]), min(known["shape"])) for image_id, known in sorted(candidates.items())
            if len(known["colour"]) == 1 and len(known["shape"]) == 1}  # fmt: skip


def names_scene(trace: str, colour: str, shape: str) -> bool:
    """Whether a trace names this colour and this shape, and no other colour or shape."""
    words = set(re.findall(r"[a-z]+", trace.lower()))
    return words & set(COLOURS) == {colour} and words & set(SHAPES) == {shape}


@torch.no_grad()
def reason_in_batches(model: TTEModel, inputs: list[dict], batch_size: int, max_new_tokens: int,
                      task: str | None = None) -> list[str]:  # fmt: skip
    """The model's greedy trace for each input dict, `batch_size` inputs per generate call."""
    traces = []
    for start in range(0, len(inputs), batch_size):
        items = model.processor.parse_inputs(inputs[start : start + batch_size], task=task)
        traces.extend(model.reason(items, max_new_tokens=max_new_tokens))
    return traces


def describe_images(model: TTEModel, image_ids: list[int], batch_size: int, max_new_tokens: int) -> list[str]:
    """Each image's trace for the instruction `DESCRIBE`, under the model's default reasoning prompt family."""
    from easy_vqa import get_test_image_paths

    paths = get_test_image_paths()
    inputs = [{"image": paths[image_id], "instruction": DESCRIBE} for image_id in image_ids]
    return reason_in_batches(model, inputs, batch_size, max_new_tokens)


def final_answer(trace: str) -> str:
    """The answer a trace states, lower-cased, punctuation removed: the word after the final text's first
    "The answer is", else the first word of the text after the trace's last `</think>`."""
    final = trace.rsplit(THINK_END, 1)[-1].lower()
    lead = ANSWER_LEAD.lower()
    words = re.findall(r"[a-z]+", final.split(lead, 1)[1] if lead in final else final)
    return words[0] if words else ""


def answer_questions(model: TTEModel, questions: list[dict], batch_size: int, max_new_tokens: int) -> list[str]:
    """Each question's trace (its answer) under the `vqa` reasoning prompt."""
    inputs = [{"image": q["image"], "text": q["question"]} for q in questions]
    return reason_in_batches(model, inputs, batch_size, max_new_tokens, task="vqa")


def score(questions: list[dict], traces: list[str]) -> dict:
    """Accuracy per answer kind, with counts."""
    results = {}
    for kind in KINDS:
        rows = [(q, t) for q, t in zip(questions, traces) if q["kind"] == kind]
        correct = sum(final_answer(t) == q["label"] for q, t in rows)
        results[kind] = {"accuracy": correct / len(rows) if rows else None, "correct": correct, "total": len(rows)}
    return results


def main(argv: list[str] | None = None) -> dict:
    (args,) = HfArgumentParser(EvalArgs).parse_args_into_dataclasses(argv)
    model = TTEModel.from_pretrained(args.model_path).eval().to("cuda" if torch.cuda.is_available() else "cpu")
    questions = easy_vqa_questions(args.max_images, args.max_yes_no_per_image)
    started = time.perf_counter()
    traces = answer_questions(model, questions, args.batch_size, args.max_new_tokens)
    metrics = score(questions, traces)
    labels = image_labels()
    described = [image_id for image_id in sorted({q["image_id"] for q in questions}) if image_id in labels]
    descriptions = describe_images(model, described, args.batch_size, args.describe_max_new_tokens)
    correct = sum(names_scene(trace, *labels[image_id]) for image_id, trace in zip(described, descriptions))
    metrics["description"] = {"accuracy": correct / len(described) if described else None, "correct": correct,
                              "total": len(described)}  # fmt: skip
    report = {
        "dataset": "easy-VQA 1.0 test split (held out; MIT)",
        "model": os.path.basename(os.path.normpath(args.model_path)),
        "images": len({q["image_id"] for q in questions}),
        "decoding": f"greedy, max_new_tokens={args.max_new_tokens}, task family vqa",
        "description": f"trace for the instruction {DESCRIBE!r} under the default prompt family, greedy, "
                       f"max_new_tokens={args.describe_max_new_tokens}; correct when it names the image's colour "
                       "and shape and no other (images whose questions determine both)",
        "metrics": metrics,
        "seconds": round(time.perf_counter() - started, 1),
        "examples": [{**{k: q[k] for k in ("image_id", "question", "label")}, "trace": t}
                     for q, t in list(zip(questions, traces))[:12]]
                    + [{"image_id": i, "instruction": DESCRIBE, "label": " ".join(labels[i]), "trace": t}
                       for i, t in list(zip(described, descriptions))[:4]],  # fmt: skip
    }
    print(json.dumps(report["metrics"]))
    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        write_atomic(args.output, json.dumps(report, indent=2) + "\n")
    return report


__all__ = ["EvalArgs", "answer_questions", "describe_images", "easy_vqa_questions", "final_answer", "image_labels",
           "main", "names_scene", "reason_in_batches", "score"]  # fmt: skip


if __name__ == "__main__":
    main()
