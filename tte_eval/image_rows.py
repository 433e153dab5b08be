"""Row builders for the 36 image tasks: the MMEB-V1 row format and the five MMEB-V2 image parsers.

The harness strings are rebuilt by the same steps as VLM2Vec `src/data/eval_dataset/image_*.py` (harness doc §2.1),
including their whitespace rules: `" \\n"` -> `"\\n"`, a trailing `"\\n"` on most strings, the extra `"\\n"` for
VisDial and none on image-only `image_i2i_vg` candidates. The positive is always candidate 0.
"""

import json

from .mmeb_strings import (
    IMAGE_MARKER,
    RAW_IMAGE_TOKEN,
    V1_CANDIDATE_INSTRUCTIONS,
    V1_QUERY_INSTRUCTIONS,
    harness_prompt,
)
from .rows import (
    Candidate,
    Item,
    QueryRow,
    RowContext,
    field,
    media_path,
    optional_text,
    string_list,
    text_candidates,
)


def _instruction(raw: str) -> str | None:
    """The structured instruction: the raw instruction without the image token and outer whitespace."""
    return optional_text(raw.replace(RAW_IMAGE_TOKEN, "").strip())


def target_lists(record: dict, where: str) -> tuple[list[str], list[str]]:
    """`(tgt_text, tgt_img_path)`: two lists of strings of the same length (`""` where a target has none)."""
    texts = string_list(record, "tgt_text", where)
    paths = string_list(record, "tgt_img_path", where)
    if len(texts) != len(paths):
        raise ValueError(f"{where}: tgt_text has {len(texts)} entries but tgt_img_path has {len(paths)}")
    return texts, paths


def _row(record_id: str, query: Item, candidates: tuple[Candidate, ...] | list[Candidate]) -> QueryRow:
    return QueryRow(record_id, query, tuple(candidates), {candidates[0].cand_id: 1.0})


def _image_query(record: dict, inst: str, where: str, data_dir: str) -> Item:
    """`image_cls` / `image_qa` / `image_i2i_vg` / `image_i2t` query: marker, instruction, text, then `\\n`."""
    text = field(record, "qry_text", str, where)
    harness = harness_prompt(inst, text, IMAGE_MARKER).replace(" \n", "\n") + "\n"
    image = media_path(data_dir, field(record, "qry_img_path", str, where), where)
    return Item(harness, _instruction(inst), optional_text(text), image)


def image_cls_row(record: dict, row_id: str, ctx: RowContext) -> QueryRow:
    """`image_cls` and `image_i2t`: the instruction keeps its own leading whitespace; text candidates."""
    where = ctx.where(row_id)
    inst = field(record, "qry_inst", str, where).replace(RAW_IMAGE_TOKEN, "")
    query = _image_query(record, inst, where, ctx.data_dir)
    return _row(row_id, query, text_candidates(string_list(record, "tgt_text", where)))


def image_qa_row(record: dict, row_id: str, ctx: RowContext) -> QueryRow:
    """`image_qa`: `<image>\\n{inst} {question}\\n`; text answer candidates."""
    where = ctx.where(row_id)
    inst = "\n" + field(record, "qry_inst", str, where).replace(RAW_IMAGE_TOKEN, "").strip()
    query = _image_query(record, inst, where, ctx.data_dir)
    return _row(row_id, query, text_candidates(string_list(record, "tgt_text", where)))


def _image_candidate(inst: str, caption: str | None, path: str, where: str, data_dir: str, newline: str) -> Item:
    prompt = inst + " " + caption if caption is not None else inst
    harness = harness_prompt(prompt, None, IMAGE_MARKER).replace(" \n", "\n") + newline
    text = optional_text(caption) if caption is not None else None
    return Item(harness, _instruction(inst), text, media_path(data_dir, path, where))


def _image_candidates(record: dict, captions: list[str], paths: list[str], where: str, data_dir: str,
                      image_only_newline: str) -> list[Item]:  # fmt: skip
    """Image candidates, captioned when the first caption is non-blank (WebQA, EDIS, OVEN, RefCOCO-Matching)."""
    inst = field(record, "tgt_inst", str, where).replace(RAW_IMAGE_TOKEN, "")
    if captions[0].strip():
        return [_image_candidate(inst, cap, path, where, data_dir, "\n") for cap, path in zip(captions, paths)]
    return [_image_candidate(inst, None, path, where, data_dir, image_only_newline) for path in paths]


def image_t2i_row(record: dict, row_id: str, ctx: RowContext) -> QueryRow:
    """`image_t2i`: text query `{inst} {text}\\n` (VisDial: one more `\\n`); image candidates, id = image path."""
    where = ctx.where(row_id)
    inst = field(record, "qry_inst", str, where)
    text = field(record, "qry_text", str, where)
    visdial_newline = "\n" if ctx.task == "VisDial" else ""
    harness = inst.replace(RAW_IMAGE_TOKEN, IMAGE_MARKER) + " " + text + "\n" + visdial_newline
    query = Item(harness, _instruction(inst), optional_text(text))
    captions, paths = target_lists(record, where)
    items = _image_candidates(record, captions, paths, where, ctx.data_dir, image_only_newline="\n")
    return _row(row_id, query, [Candidate(path, item) for path, item in zip(paths, items)])


def image_i2i_vg_row(record: dict, row_id: str, ctx: RowContext) -> QueryRow:
    """`image_i2i_vg`: `<image>\\n{inst} {text}\\n`; image candidates, id = `path:caption` (one image, many targets)."""
    where = ctx.where(row_id)
    inst = "\n" + field(record, "qry_inst", str, where).replace(RAW_IMAGE_TOKEN, "").strip()
    query = _image_query(record, inst, where, ctx.data_dir)
    captions, paths = target_lists(record, where)
    items = _image_candidates(record, captions, paths, where, ctx.data_dir, image_only_newline="")
    ids = [path + ":" + caption.strip('"') for path, caption in zip(paths, captions)]
    return _row(row_id, query, [Candidate(cand_id, item) for cand_id, item in zip(ids, items)])


def split_v1_instruction(raw: str, instruction: str, where: str) -> tuple[str, str | None]:
    """Split a V1 string into (instruction, text) at the task's stock instruction.

    The image token and outer whitespace are dropped; a `":"` or `"."` right after the instruction stays with it.

    Raises:
        ValueError: if the string does not start with the stock instruction (a rewritten prompt set, harness §1.4).
    """
    body = raw.replace(RAW_IMAGE_TOKEN, "").strip()
    if not body.startswith(instruction):
        raise ValueError(f"{where}: {raw!r} does not start with the stock MMEB-V1 instruction {instruction!r}")
    rest = body[len(instruction) :]
    if rest[:1] in (":", "."):
        instruction, rest = instruction + rest[0], rest[1:]
    return instruction, optional_text(rest.strip())


def _v1_candidate(text: str, path: str, where: str, ctx: RowContext) -> Candidate:
    """A V1 candidate; the id is the (image, text) pair, which V1 encodes once."""
    cand_id = json.dumps([path, text], ensure_ascii=False)
    if not path:
        return Candidate(cand_id, Item(text, text=text))
    if ctx.task not in V1_CANDIDATE_INSTRUCTIONS:
        raise ValueError(f"{where}: task {ctx.task!r} has no image candidates in MMEB-V1, but got image {path!r}")
    instruction, rest = split_v1_instruction(text, V1_CANDIDATE_INSTRUCTIONS[ctx.task], where)
    harness = text.replace(RAW_IMAGE_TOKEN, IMAGE_MARKER)
    return Candidate(cand_id, Item(harness, instruction, rest, media_path(ctx.data_dir, path, where)))


def v1_row(record: dict, row_id: str, ctx: RowContext) -> QueryRow:
    """An MMEB-V1 row (`qry_text` with the instruction inline, `tgt_text` / `tgt_img_path` lists)."""
    where = ctx.where(row_id)
    raw = field(record, "qry_text", str, where)
    instruction, text = split_v1_instruction(raw, V1_QUERY_INSTRUCTIONS[ctx.task], where)
    image_path = field(record, "qry_img_path", str, where)
    image = media_path(ctx.data_dir, image_path, where) if image_path else None
    query = Item(raw.replace(RAW_IMAGE_TOKEN, IMAGE_MARKER), instruction, text, image)
    texts, paths = target_lists(record, where)
    return _row(row_id, query, [_v1_candidate(t, p, where, ctx) for t, p in zip(texts, paths)])
