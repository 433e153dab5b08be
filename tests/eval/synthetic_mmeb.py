"""Write a tiny synthetic MMEB data directory: a few rows per task family, generated images and frame folders.

Run as a script to make the worked example in the README ("MMEB evaluation"):

    python tests/eval/synthetic_mmeb.py /tmp/mmeb-synthetic

The rows mimic the real formats (MMEB_Test_Instruct fields with `<|image_1|>` inline, BEIR visdoc files, the local
video formats of `tte_eval/video_rows.py`), with made-up content. Nothing here comes from the real datasets.
"""

import hashlib
import json
import os
import sys

import numpy as np
from PIL import Image

from tte_eval.cache import input_key


IMAGE_TOKEN = "<|image_1|>"
CLS_INST = IMAGE_TOKEN + "\nRepresent the given image for classification"
N24_INST = IMAGE_TOKEN + "\nRepresent the given news image with the following caption for domain classification"
QA_INST = IMAGE_TOKEN + "\nRepresent the given image with the following question:"
I2T_INST = IMAGE_TOKEN + "\nFind an image caption describing the given everyday image"
T2I_INST = "Find me an everyday image that matches the given caption:"
WEBQA_INST = "Find a Wikipedia image that answers this question:"
RC_INST = IMAGE_TOKEN + "\nSelect the portion of the image that follows the language expressions:"
NIGHTS_INST = IMAGE_TOKEN + "\nFind a day-to-day image that looks similar to the provided image:"
IMAGE_TGT = IMAGE_TOKEN + "\nRepresent the given image."
WIKI_TGT = IMAGE_TOKEN + "\nRepresent the given Wikipedia image with related text information:"

IMAGE_TASKS = ["ImageNet-1K", "N24News", "OK-VQA", "MSCOCO_i2t", "MSCOCO_t2i", "VisDial", "WebQA",
               "RefCOCO-Matching", "NIGHTS"]  # fmt: skip
VIDEO_TASKS = ["K700", "SmthSmthV2", "MVBench", "Video-MME", "EgoSchema", "ActivityNetQA", "MSR-VTT",
               "Charades-STA", "MomentSeeker"]  # fmt: skip
VISDOC_TASKS = ["ViDoRe_arxivqa", "ViDoSeek-doc"]
V1_TASKS = ["OK-VQA", "MSCOCO_t2i"]


def _color(name: str) -> tuple[int, int, int]:
    digest = hashlib.sha256(name.encode("utf-8")).digest()
    return digest[0], digest[1], digest[2]


def write_image(root: str, relative: str, size: int = 56) -> str:
    """A solid-colour PNG whose colour depends on its name; returns the relative path."""
    path = os.path.join(root, relative)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", (size, size), _color(relative)).save(path)
    return relative


def write_frames(root: str, relative: str, count: int) -> str:
    """A folder of `count` frames named `frame_1.png` ... (natural order differs from lexicographic at 10)."""
    for i in range(1, count + 1):
        write_image(root, f"{relative}/frame_{i}.png", size=32)
    return relative


def write_jsonl(root: str, relative: str, records: list[dict]) -> None:
    """Write records as JSON lines under `root`."""
    path = os.path.join(root, relative)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(record) + "\n" for record in records)


def _img(root: str, name: str) -> str:
    return write_image(root, f"images/{name}.png")


def _cls_rows(root: str, inst: str, texts: list[str]) -> list[dict]:
    labels = [["cat", "dog", "bird"], ["dog", "cat", "bird"], ["bird", "dog", "cat"]]
    return [
        {"qry_inst": inst, "qry_text": text, "qry_img_path": _img(root, f"cls{i}"), "tgt_inst": "",
         "tgt_text": label, "tgt_img_path": [""] * 3}
        for i, (text, label) in enumerate(zip(texts, labels))
    ]  # fmt: skip


def write_image_tasks(root: str) -> None:
    """V2 image rows (ziyjiang/MMEB_Test_Instruct fields) for one or two tasks per parser."""
    write_jsonl(root, "ImageNet-1K/test.jsonl", _cls_rows(root, CLS_INST, ["", "", ""]))
    write_jsonl(root, "N24News/test.jsonl", _cls_rows(root, N24_INST, ["Storm hits coast", "Final score", "Vote"]))
    qa = [{"qry_inst": QA_INST, "qry_text": f"What colour is square {i}?", "qry_img_path": _img(root, f"qa{i}"),
           "tgt_inst": "", "tgt_text": ["red", "blue", "green"][i:] + ["red", "blue", "green"][:i],
           "tgt_img_path": ["", "", ""]} for i in range(3)]  # fmt: skip
    write_jsonl(root, "OK-VQA/test.jsonl", qa)
    i2t = [{"qry_inst": I2T_INST, "qry_text": "", "qry_img_path": _img(root, f"coco{i}"), "tgt_inst": "",
            "tgt_text": [f"caption {i}", f"caption {(i + 1) % 3}"], "tgt_img_path": ["", ""]}
           for i in range(3)]  # fmt: skip
    write_jsonl(root, "MSCOCO_i2t/test.jsonl", i2t)
    write_jsonl(root, "MSCOCO_t2i/test.jsonl", _t2i_rows(root, T2I_INST, "A red square", ["", ""]))
    write_jsonl(root, "VisDial/test.jsonl", _t2i_rows(root, "Represent the given dialogue about an image, which is "
                "used for image retrieval:", "Q: is it red? A: yes", ["", ""]))  # fmt: skip
    write_jsonl(root, "WebQA/test.jsonl", _t2i_rows(root, WEBQA_INST, "Which flag is red?", ["Flag A", "Flag B"]))
    write_image_i2i_tasks(root)


def _t2i_rows(root: str, inst: str, text: str, captions: list[str]) -> list[dict]:
    tgt_inst = WIKI_TGT if captions[0] else IMAGE_TGT
    return [
        {"qry_inst": inst, "qry_text": f"{text} {i}", "qry_img_path": "", "tgt_inst": tgt_inst, "tgt_text": captions,
         "tgt_img_path": [_img(root, f"t2i{i}"), _img(root, f"t2i{(i + 1) % 3}")]}
        for i in range(3)
    ]  # fmt: skip


def write_image_i2i_tasks(root: str) -> None:
    """RefCOCO-Matching (one image, several captioned targets) and NIGHTS (image-only targets)."""
    scene = _img(root, "scene")
    matching = [{"qry_inst": RC_INST, "qry_text": f"the {side} object", "qry_img_path": _img(root, f"crop{i}"),
                 "tgt_inst": RC_INST, "tgt_text": [f'"the {side} object"', f'"the {other} object"'],
                 "tgt_img_path": [scene, scene]}
                for i, (side, other) in enumerate([("left", "right"), ("right", "left")])]  # fmt: skip
    write_jsonl(root, "RefCOCO-Matching/test.jsonl", matching)
    nights = [{"qry_inst": NIGHTS_INST, "qry_text": "", "qry_img_path": _img(root, f"n{i}"), "tgt_inst": IMAGE_TGT,
               "tgt_text": ["", ""], "tgt_img_path": [_img(root, f"n{i}b"), _img(root, f"n{i}c")]}
              for i in range(2)]  # fmt: skip
    write_jsonl(root, "NIGHTS/test.jsonl", nights)


def write_video_tasks(root: str) -> None:
    """One or two tasks per video family, frame folders with 3 and 12 frames."""
    short, long_ = write_frames(root, "frames/v_short", 3), write_frames(root, "frames/v_long", 12)
    write_jsonl(root, "K700/test.jsonl", [{"video": short, "label": "juggling"}, {"video": long_, "label": "rowing"}])
    write_jsonl(root, "K700/corpus.jsonl", [{"label": name} for name in ["juggling", "rowing", "surfing"]])
    write_jsonl(root, "SmthSmthV2/test.jsonl", [{"video": short, "label": "pushing something",
                                                  "candidates": ["pushing something", "pulling something"]}])
    mvbench = {"video": long_, "question": "What happens?", "options": ["a jump", "a fall"], "answer": "a fall"}
    write_jsonl(root, "MVBench/test.jsonl", [mvbench])
    videomme = {"video": short, "question": "Which sport?", "options": ["A. tennis", "B. golf"], "answer": "B. golf"}
    write_jsonl(root, "Video-MME/test.jsonl", [videomme])
    egoschema = {"video": short, "question": "What does C do?", "options": ["A. cooks", "B. reads"],
                 "answer": "A. cooks"}  # fmt: skip
    write_jsonl(root, "EgoSchema/test.jsonl", [egoschema])
    write_jsonl(root, "ActivityNetQA/test.jsonl", [{"video": long_, "question": "is it outdoors", "answer": "no"}])
    ret = [{"video_id": "vid0", "video": short, "caption": "a man juggles"},
           {"video_id": "vid1", "video": long_, "caption": "people row a boat"}]  # fmt: skip
    write_jsonl(root, "MSR-VTT/test.jsonl", ret)
    clips = [write_frames(root, f"frames/charades0/{name}", 2) for name in ("positive_0", "negative_0", "negative_1")]
    write_jsonl(root, "Charades-STA/test.jsonl", [{"query": "a person opens a door", "video": short, "clips": clips}])
    seeker = [{"query": "the goal", "positive_clips": [clips[0]], "negative_clips": clips[1:]},
              {"query": "the goal again", "query_image": _img(root, "goal"), "positive_clips": [clips[1]],
               "negative_clips": [clips[2]]}]  # fmt: skip
    write_jsonl(root, "MomentSeeker/test.jsonl", seeker)


def write_visdoc_tasks(root: str) -> None:
    """Two BEIR-style tasks: binary qrels, and graded qrels with a duplicate (max kept) and a zero grade (dropped)."""
    pages = [{"corpus-id": f"p{i}", "image": _img(root, f"page{i}")} for i in range(4)]
    for task in VISDOC_TASKS:
        write_jsonl(root, f"{task}/corpus.jsonl", pages)
        write_jsonl(root, f"{task}/queries.jsonl", [{"query-id": "q0", "query": "revenue in 2020"},
                                                     {"query-id": "q1", "query": "the network diagram"}])
    write_jsonl(root, "ViDoRe_arxivqa/qrels.jsonl", [{"query-id": "q0", "corpus-id": "p1", "score": 1},
                                                      {"query-id": "q1", "corpus-id": "p2", "score": 1}])
    graded = [{"query-id": "q0", "corpus-id": "p1", "score": 1}, {"query-id": "q0", "corpus-id": "p3", "score": 2},
              {"query-id": "q0", "corpus-id": "p1", "score": 3}, {"query-id": "q0", "corpus-id": "p0", "score": 0},
              {"query-id": "q1", "corpus-id": "p2", "score": 1}]  # fmt: skip
    write_jsonl(root, "ViDoSeek-doc/qrels.jsonl", graded)


def write_v1_tasks(root: str) -> None:
    """MMEB-V1 rows (TIGER-Lab/MMEB-eval fields: instruction inline, positive first)."""
    qa = [{"qry_text": "<|image_1|>\nRepresent the given image with the following question: What is shown?",
           "qry_img_path": _img(root, "v1qa"), "tgt_text": ["a square", "a circle"],
           "tgt_img_path": ["", ""]}]  # fmt: skip
    write_jsonl(root, "OK-VQA/test.jsonl", qa)
    t2i = [{"qry_text": "Find me an everyday image that matches the given caption: A red square.", "qry_img_path": "",
            "tgt_text": ["<|image_1|>\nRepresent the given image.", "<|image_1|>\nRepresent the given image."],
            "tgt_img_path": [_img(root, "v1a"), _img(root, "v1b")]}]  # fmt: skip
    write_jsonl(root, "MSCOCO_t2i/test.jsonl", t2i)


def write_synthetic_mmeb(root: str) -> dict[str, list[str]]:
    """Write the MMEB-V2 fixture under `root` and the MMEB-V1 fixture under `root/v1`; return the tasks per group."""
    write_image_tasks(root)
    write_video_tasks(root)
    write_visdoc_tasks(root)
    write_v1_tasks(os.path.join(root, "v1"))
    return {"image": IMAGE_TASKS, "video": VIDEO_TASKS, "visdoc": VISDOC_TASKS, "v1": V1_TASKS}


class HashEncoder:
    """A deterministic test encoder (the runner protocol): each input hashes to a fixed random unit vector.

    It records every input it embeds, so tests can check that each unique input is embedded once.
    """

    def __init__(self, dim: int = 32):
        self.dim = dim
        self.calls = []  # (side, inputs) per call

    def vector(self, model_input: dict) -> np.ndarray:
        """The unit vector of one input."""
        seed = int.from_bytes(hashlib.sha256(json.dumps(model_input, sort_keys=True).encode()).digest()[:8], "little")
        vector = np.random.default_rng(seed).standard_normal(self.dim)
        return vector / np.linalg.norm(vector)

    def _encode(self, side: str, inputs: list[dict], batch_size: int) -> np.ndarray:
        self.calls.append((side, list(inputs)))
        return np.stack([self.vector(model_input) for model_input in inputs])

    def encode_query(self, inputs: list[dict], batch_size: int) -> np.ndarray:
        return self._encode("query", inputs, batch_size)

    def encode_document(self, inputs: list[dict], batch_size: int) -> np.ndarray:
        return self._encode("document", inputs, batch_size)


class OracleEncoder(HashEncoder):
    """Embeds each query exactly like its first label, so every task should score hit@1 = 1."""

    def __init__(self, tasks):
        super().__init__()
        by_id = {(t.spec.name, c.cand_id): c.item.model_input() for t in tasks for c in t.candidates}
        self.targets = {input_key(row.query.model_input()): by_id[(t.spec.name, next(iter(row.labels)))]
                        for t in tasks for row in t.rows}  # fmt: skip

    def encode_query(self, inputs, batch_size):
        return np.stack([self.vector(self.targets[input_key(model_input)]) for model_input in inputs])


if __name__ == "__main__":
    groups = write_synthetic_mmeb(sys.argv[1])
    print(f"wrote {sum(len(tasks) for tasks in groups.values())} synthetic tasks under {sys.argv[1]}: {groups}")
