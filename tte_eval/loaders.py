"""Load one MMEB task from local files into the normalised `TaskData` (see `rows.py` for the schema).

Layout: `<data_dir>/<task>/` holds `test.jsonl` or `test.parquet` (query rows), plus `corpus.*` for the global
video-classification tasks (one `label` per row) and, for visual documents, the BEIR trio `queries.*`
(`query-id`, `query`), `qrels.*` (`query-id`, `corpus-id`, `score`) and `corpus.*` (`corpus-id`, `image`).
Media paths are relative to `<data_dir>`. Row fields per family are documented in `image_rows.py` (the MMEB-V1 and
`ziyjiang/MMEB_Test_Instruct` fields) and `video_rows.py`.
"""

import os

from .image_rows import image_cls_row, image_i2i_vg_row, image_qa_row, image_t2i_row, v1_row
from .mmeb_strings import IMAGE_MARKER, VISDOC_CANDIDATE, VISDOC_QUERY, harness_prompt
from .rows import Candidate, Item, QueryRow, RowContext, TaskData, build_task_data, field, media_path, read_records
from .tasks import TASK_LIST_VERSIONS, TaskSpec, get_task
from .video_rows import (
    moment_retrieval_row,
    momentseeker_row,
    ssv2_row,
    video_cls_corpus_entry,
    video_cls_row,
    video_qa_row,
    video_ret_row,
)


BENCHMARKS = tuple(TASK_LIST_VERSIONS)

# Parser family -> row builder; every builder takes `(record, row_id, ctx)` and returns a `QueryRow`.
ROW_BUILDERS = {
    "image_cls": image_cls_row,
    "image_i2t": image_cls_row,  # VLM2Vec builds i2t queries exactly like classification queries
    "image_qa": image_qa_row,
    "image_t2i": image_t2i_row,
    "image_i2i_vg": image_i2i_vg_row,
    "video_cls": video_cls_row,
    "ssv2": ssv2_row,
    "video_qa": video_qa_row,
    "video_ret": video_ret_row,
    "moment_retrieval": moment_retrieval_row,
    "momentseeker": momentseeker_row,
}


def load_task(data_dir: str, task: str, benchmark: str = "mmeb-v2", num_frames: int = 8) -> TaskData:
    """Load one task from `<data_dir>/<task>/`.

    Args:
        data_dir: the data directory (media paths in rows are relative to it).
        task: a task key from `tasks.TASKS`, e.g. `"OK-VQA"`.
        benchmark: `"mmeb-v2"` (V2 formats, all 78 tasks) or `"mmeb-v1"` (V1 rows, the 36 image tasks).
        num_frames: frames sampled per video (VLM2Vec: 8).

    Returns:
        The task's rows and de-duplicated candidate set.

    Raises:
        ValueError: for an unknown task or benchmark, a missing task folder, a malformed row or a missing media file.
    """
    spec = get_task(task)
    if benchmark not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {benchmark!r}; use one of {BENCHMARKS}")
    if benchmark == "mmeb-v1" and spec.modality != "image":
        raise ValueError(f"task {task!r} is a {spec.modality} task; MMEB-V1 has only the 36 image tasks")
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    task_dir = os.path.join(data_dir, task)
    if not os.path.isdir(task_dir):
        raise ValueError(f"task {task!r}: folder {task_dir} not found")
    if spec.family == "visdoc":
        return _load_visdoc(spec, task_dir, data_dir, num_frames)
    builder = v1_row if benchmark == "mmeb-v1" else ROW_BUILDERS[spec.family]
    ctx = RowContext(task, data_dir, num_frames, "test")
    rows = [builder(record, str(i), ctx) for i, record in enumerate(read_records(task_dir, "test"))]
    return build_task_data(spec, rows, _video_cls_corpus(spec, task_dir, data_dir, num_frames))


def _video_cls_corpus(spec: TaskSpec, task_dir: str, data_dir: str, num_frames: int) -> list[Candidate]:
    """The full label list of a global video-classification task; other tasks have no extra corpus."""
    if spec.family != "video_cls":
        return []
    ctx = RowContext(spec.name, data_dir, num_frames, "corpus")
    return [video_cls_corpus_entry(record, str(i), ctx) for i, record in enumerate(read_records(task_dir, "corpus"))]


def _load_visdoc(spec: TaskSpec, task_dir: str, data_dir: str, num_frames: int) -> TaskData:
    """BEIR-style visual-document task: text queries ranked over the whole page corpus, graded by qrels."""
    corpus_ctx = RowContext(spec.name, data_dir, num_frames, "corpus")
    corpus = [_page(record, str(i), corpus_ctx) for i, record in enumerate(read_records(task_dir, "corpus"))]
    pages = {candidate.cand_id: candidate for candidate in corpus}
    grades = _qrels(read_records(task_dir, "qrels"), RowContext(spec.name, data_dir, num_frames, "qrels"))
    query_ctx = RowContext(spec.name, data_dir, num_frames, "queries")
    queries = read_records(task_dir, "queries")
    rows = [_visdoc_row(record, str(i), query_ctx, grades, pages) for i, record in enumerate(queries)]
    return build_task_data(spec, rows, corpus)


def _doc_id(record: dict, name: str, where: str) -> str:
    return str(field(record, name, (str, int), where))


def _page(record: dict, row_id: str, ctx: RowContext) -> Candidate:
    where = ctx.where(row_id)
    image = media_path(ctx.data_dir, field(record, "image", str, where), where)
    harness = harness_prompt(VISDOC_CANDIDATE, None, IMAGE_MARKER)
    return Candidate(_doc_id(record, "corpus-id", where), Item(harness, VISDOC_CANDIDATE, image=image))


def _qrels(records: list[dict], ctx: RowContext) -> dict[str, dict[str, float]]:
    """query-id -> {corpus-id: grade}, keeping grades > 0 and the maximum of duplicates (`load_qrels_mapping`)."""
    grades = {}
    for i, record in enumerate(records):
        where = ctx.where(str(i))
        score = field(record, "score", (int, float), where)
        if score > 0:
            per_query = grades.setdefault(_doc_id(record, "query-id", where), {})
            corpus_id = _doc_id(record, "corpus-id", where)
            per_query[corpus_id] = max(float(score), per_query.get(corpus_id, 0.0))
    return grades


def _visdoc_row(record: dict, row_id: str, ctx: RowContext, grades: dict, pages: dict[str, Candidate]) -> QueryRow:
    where = ctx.where(row_id)
    query_id = _doc_id(record, "query-id", where)
    text = field(record, "query", str, where)
    labels = grades.get(query_id, {})
    unknown = sorted(set(labels) - set(pages))
    if unknown:
        raise ValueError(f"{where}: qrels of query-id {query_id!r} name corpus ids {unknown} missing from the corpus")
    query = Item(harness_prompt(VISDOC_QUERY, text), VISDOC_QUERY, text)
    return QueryRow(query_id, query, tuple(pages[corpus_id] for corpus_id in labels), labels)
