"""Row builders for the 18 video tasks (harness doc §2.3), from one local row format per family.

Local formats (`<task>/test.jsonl|parquet`; frame folders are relative to the data directory):

- `video_cls`: `video` (frame folder), `label`; plus `<task>/corpus.*` with one `label` per row (the global pool).
- `ssv2`: `video`, `label`, `candidates` (the row's label list).
- `video_qa`: `video`, `question`, `options` (as the source dataset writes them), `answer` (the correct option);
  ActivityNetQA has no `options` (always yes / no).
- `video_ret`: `video_id`, `video`, `caption`.
- `moment_retrieval`: `query`, `video` (the query video), `clips` (clip frame folders; positives are named
  `positive*`).
- `momentseeker`: `query`, `positive_clips`, `negative_clips`, and at most one of `query_image`, `query_video`.

Strings follow VLM2Vec `src/data/eval_dataset/*` step by step, quirks included (the double space after the QA
prompt, EgoSchema's options glued to the question, Video-MME / EgoSchema candidates with the `"A. "` prefix cut).
"""

import os

from .mmeb_strings import (
    ACTIVITYNETQA_OPTIONS,
    IMAGE_MARKER,
    MOMENTSEEKER_CANDIDATE,
    MOMENTSEEKER_IMAGE_QUERY,
    MOMENTSEEKER_TEXT_QUERY,
    MOMENTSEEKER_VIDEO_QUERY,
    MRET_CANDIDATE,
    MRET_QUERY,
    VIDEO_CLS_INSTRUCTIONS,
    VIDEO_MARKER,
    VIDEO_QA_PROMPT,
    VIDEO_RET_CANDIDATE,
    VIDEO_RET_INSTRUCTIONS,
    harness_prompt,
)
from .rows import Candidate, Item, QueryRow, RowContext, field, media_path, string_list, text_candidates, video_frames


def _frames(record: dict, name: str, where: str, ctx: RowContext) -> tuple[str, ...]:
    return video_frames(ctx.data_dir, field(record, name, str, where), ctx.num_frames, where)


def _video_candidate(cand_id: str, instruction: str, frames: tuple[str, ...]) -> Candidate:
    return Candidate(cand_id, Item(harness_prompt(instruction, None, VIDEO_MARKER), instruction, video=frames))


def _cls_query(record: dict, where: str, ctx: RowContext) -> Item:
    instruction = VIDEO_CLS_INSTRUCTIONS[ctx.task]
    harness = harness_prompt(instruction, None, VIDEO_MARKER)
    return Item(harness, instruction.strip(), video=_frames(record, "video", where, ctx))


def video_cls_row(record: dict, row_id: str, ctx: RowContext) -> QueryRow:
    """K700 / HMDB51 / UCF101 / Breakfast: `<video> {instruction}`; the row's only candidate is its label."""
    where = ctx.where(row_id)
    label = field(record, "label", str, where)
    return QueryRow(row_id, _cls_query(record, where, ctx), text_candidates([label]), {label: 1.0})


def video_cls_corpus_entry(record: dict, row_id: str, ctx: RowContext) -> Candidate:
    """One label of a global video-classification pool."""
    (candidate,) = text_candidates([field(record, "label", str, ctx.where(row_id))])
    return candidate


def ssv2_row(record: dict, row_id: str, ctx: RowContext) -> QueryRow:
    """SmthSmthV2: like `video_cls`, but ranked locally over the row's own label list."""
    where = ctx.where(row_id)
    label = field(record, "label", str, where)
    candidates = text_candidates(string_list(record, "candidates", where))
    return QueryRow(row_id, _cls_query(record, where, ctx), candidates, {label: 1.0})


def _letter(index: int) -> str:
    return chr(ord("A") + index)


def _cut_option_prefix(option: str) -> str:
    """Video-MME / EgoSchema candidate text: `option[option.find(". "):].strip(". ")`, as the source does."""
    return option[option.find(". ") :].strip(". ")


def _qa_strings(task: str, question: str, options: list[str], answer: str) -> tuple[str, list[str], list[str], str]:
    """Return (query text after the prompt, candidate texts, candidate ids, label id) for one QA task."""
    if task in ("MVBench", "NExTQA"):
        lettered = [f"({_letter(i)}) {option}" for i, option in enumerate(options)]
        body = (question + "\nOptions:\n" + "".join(line + "\n" for line in lettered)).rstrip()
        if task == "MVBench":
            return body, lettered, lettered, f"({_letter(options.index(answer))}) {answer}"
        return body, options, options, answer
    if task == "Video-MME":
        return question + "\n" + "\n".join(options), [_cut_option_prefix(o) for o in options], options, answer
    if task == "EgoSchema":
        return question + " ".join(options), [_cut_option_prefix(o) for o in options], options, answer
    if task == "ActivityNetQA":
        return question + "? (A) yes; (B) no.", options, options, answer
    raise ValueError(f"task {task!r} is not a video QA task")


def video_qa_row(record: dict, row_id: str, ctx: RowContext) -> QueryRow:
    """MVBench, Video-MME, NExTQA, EgoSchema, ActivityNetQA: `<video> {prompt} {question + options}`."""
    where = ctx.where(row_id)
    question = field(record, "question", str, where)
    answer = field(record, "answer", str, where)
    is_yes_no = ctx.task == "ActivityNetQA"
    options = ACTIVITYNETQA_OPTIONS if is_yes_no else string_list(record, "options", where, min_len=2)
    if answer not in options:
        raise ValueError(f"{where}: answer {answer!r} is not one of the options {options!r}")
    body, texts, ids, label = _qa_strings(ctx.task, question, options, answer)
    harness = f"{VIDEO_MARKER} {VIDEO_QA_PROMPT} {body}"
    query = Item(harness, VIDEO_QA_PROMPT.strip(), body, video=_frames(record, "video", where, ctx))
    candidates = tuple(Candidate(cand_id, Item(text, text=text)) for cand_id, text in zip(ids, texts))
    return QueryRow(row_id, query, candidates, {label: 1.0})


def video_ret_row(record: dict, row_id: str, ctx: RowContext) -> QueryRow:
    """MSR-VTT, MSVD, DiDeMo, VATEX, YouCook2: text query `{instruction} {caption}`; the target video, id = video id."""
    where = ctx.where(row_id)
    instruction = VIDEO_RET_INSTRUCTIONS[ctx.task]
    caption = field(record, "caption", str, where)
    query = Item(harness_prompt(instruction, caption), instruction, caption)
    video_id = field(record, "video_id", str, where)
    candidate = _video_candidate(video_id, VIDEO_RET_CANDIDATE, _frames(record, "video", where, ctx))
    return QueryRow(row_id, query, (candidate,), {video_id: 1.0})


def _clip_candidates(clips: list[str], instruction: str, where: str, ctx: RowContext) -> tuple[Candidate, ...]:
    """Clip candidates; the id is the clip's frame-folder path as given (unique per clip)."""
    return tuple(
        _video_candidate(clip, instruction, video_frames(ctx.data_dir, clip, ctx.num_frames, where)) for clip in clips
    )


def moment_retrieval_row(record: dict, row_id: str, ctx: RowContext) -> QueryRow:
    """QVHighlight, Charades-STA: `<video> {instruction} {query}`; clip folders named `positive*` are the labels."""
    where = ctx.where(row_id)
    text = field(record, "query", str, where)
    harness = harness_prompt(MRET_QUERY, text, VIDEO_MARKER)
    query = Item(harness, MRET_QUERY, text, video=_frames(record, "video", where, ctx))
    clips = string_list(record, "clips", where)
    positives = [clip for clip in clips if os.path.basename(os.path.normpath(clip)).startswith("positive")]
    if not positives:
        raise ValueError(f"{where}: no clip folder named 'positive*' among {clips!r}")
    return QueryRow(row_id, query, _clip_candidates(clips, MRET_CANDIDATE, where, ctx), dict.fromkeys(positives, 1.0))


def _momentseeker_query(record: dict, text: str, where: str, ctx: RowContext) -> Item:
    """Text-only, text + image, or text + video query, each with its own instruction."""
    if "query_image" in record and "query_video" in record:
        raise ValueError(f"{where}: give at most one of 'query_image' and 'query_video'")
    if "query_image" in record:
        image = media_path(ctx.data_dir, field(record, "query_image", str, where), where)
        harness = harness_prompt(MOMENTSEEKER_IMAGE_QUERY, text, IMAGE_MARKER)
        return Item(harness, MOMENTSEEKER_IMAGE_QUERY, text, image=image)
    if "query_video" in record:
        harness = harness_prompt(MOMENTSEEKER_VIDEO_QUERY, text, VIDEO_MARKER)
        return Item(harness, MOMENTSEEKER_VIDEO_QUERY, text, video=_frames(record, "query_video", where, ctx))
    return Item(harness_prompt(MOMENTSEEKER_TEXT_QUERY, text), MOMENTSEEKER_TEXT_QUERY, text)


def momentseeker_row(record: dict, row_id: str, ctx: RowContext) -> QueryRow:
    """MomentSeeker (1,602 queries): positive clips first, then negatives; every positive is a label."""
    where = ctx.where(row_id)
    query = _momentseeker_query(record, field(record, "query", str, where), where, ctx)
    positives = string_list(record, "positive_clips", where)
    negatives = string_list(record, "negative_clips", where, min_len=0)
    candidates = _clip_candidates(positives + negatives, MOMENTSEEKER_CANDIDATE, where, ctx)
    return QueryRow(row_id, query, candidates, dict.fromkeys(positives, 1.0))
