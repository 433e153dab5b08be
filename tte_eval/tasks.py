"""The MMEB task table: task -> category -> modality, with parser family, ranking pool and V1 split.

Source: `shared/docs/mmeb-harness.md` §5 (the 78-task table) and §6 (aggregation), which follow TIGER-AI-Lab/VLM2Vec
`experiments/public/eval/{image,video,visdoc}.yaml` and `experiments/report_score_v2.py`, and the 12-category table of
QwenLM/Qwen3-VL-Embedding `gather_results.py`. Task names are the YAML keys used by the published score files.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class TaskSpec:
    """One MMEB task.

    Args:
        name: the YAML key, e.g. `"ImageNet-1K"`, `"ViDoRe_arxivqa"`.
        modality: `"image"`, `"video"` or `"visdoc"`.
        category: one of `CATEGORIES`, e.g. `"I-CLS"`.
        family: the row format and string builder (see `tte_eval/loaders.py`).
        eval_type: `"local"` ranks each row's own candidates; `"global"` ranks the whole candidate set.
        v1_split: `"IND"` / `"OOD"` for the 36 image tasks (MMEB-V1 reporting), else None.
    """

    name: str
    modality: str
    category: str
    family: str
    eval_type: str
    v1_split: str | None = None


# Headline metric per modality (`report_score_v2.py: modality2metric`).
HEADLINE_METRIC = {"image": "hit@1", "video": "hit@1", "visdoc": "ndcg_linear@5"}

# Category -> modality, in report order. Short names follow the papers (harness doc §5).
CATEGORIES = {
    "I-CLS": "image", "I-QA": "image", "I-RET": "image", "I-VG": "image",
    "V-CLS": "video", "V-QA": "video", "V-RET": "video", "V-MRET": "video",
    "VDRv1": "visdoc", "VDRv2": "visdoc", "VisRAG": "visdoc", "VD-OOD": "visdoc",
}  # fmt: skip

# Entries that published score files carry but that are not part of the 78-task suite; the aggregator skips them.
EXCLUDED_TASKS = {
    "MomentSeeker_1k8": "the 1,800-query MomentSeeker, superseded by the de-duplicated 1,602-query MomentSeeker",
}

# Pinned task-list versions, recorded in every results file and cache manifest (harness doc §8.3).
TASK_LIST_VERSIONS = {
    "mmeb-v1": "mmeb-v1/36-image-tasks",
    "mmeb-v2": "mmeb-v2/78-tasks/momentseeker-1602/visdoc-24-page-fixed",
}


def _image(name: str, category: str, family: str, v1_split: str) -> TaskSpec:
    return TaskSpec(name, "image", category, family, "local", v1_split)


_IMAGE_TASKS = [
    _image("ImageNet-1K", "I-CLS", "image_cls", "IND"),
    _image("N24News", "I-CLS", "image_cls", "IND"),
    _image("HatefulMemes", "I-CLS", "image_cls", "IND"),
    _image("VOC2007", "I-CLS", "image_cls", "IND"),
    _image("SUN397", "I-CLS", "image_cls", "IND"),
    _image("Place365", "I-CLS", "image_cls", "OOD"),
    _image("ImageNet-A", "I-CLS", "image_cls", "OOD"),
    _image("ImageNet-R", "I-CLS", "image_cls", "OOD"),
    _image("ObjectNet", "I-CLS", "image_cls", "OOD"),
    _image("Country211", "I-CLS", "image_cls", "OOD"),
    _image("OK-VQA", "I-QA", "image_qa", "IND"),
    _image("A-OKVQA", "I-QA", "image_qa", "IND"),
    _image("DocVQA", "I-QA", "image_qa", "IND"),
    _image("InfographicsVQA", "I-QA", "image_qa", "IND"),
    _image("ChartQA", "I-QA", "image_qa", "IND"),
    _image("Visual7W", "I-QA", "image_qa", "IND"),
    _image("ScienceQA", "I-QA", "image_qa", "OOD"),
    _image("VizWiz", "I-QA", "image_qa", "OOD"),
    _image("GQA", "I-QA", "image_qa", "OOD"),
    _image("TextVQA", "I-QA", "image_qa", "OOD"),
    _image("VisDial", "I-RET", "image_t2i", "IND"),
    _image("CIRR", "I-RET", "image_i2i_vg", "IND"),
    _image("VisualNews_t2i", "I-RET", "image_t2i", "IND"),
    _image("VisualNews_i2t", "I-RET", "image_i2t", "IND"),
    _image("MSCOCO_t2i", "I-RET", "image_t2i", "IND"),
    _image("MSCOCO_i2t", "I-RET", "image_i2t", "IND"),
    _image("NIGHTS", "I-RET", "image_i2i_vg", "IND"),
    _image("WebQA", "I-RET", "image_t2i", "IND"),
    _image("FashionIQ", "I-RET", "image_i2i_vg", "OOD"),
    _image("Wiki-SS-NQ", "I-RET", "image_t2i", "OOD"),
    _image("OVEN", "I-RET", "image_i2i_vg", "OOD"),
    _image("EDIS", "I-RET", "image_t2i", "OOD"),
    _image("MSCOCO", "I-VG", "image_i2i_vg", "IND"),
    _image("RefCOCO", "I-VG", "image_i2i_vg", "OOD"),
    _image("RefCOCO-Matching", "I-VG", "image_i2i_vg", "OOD"),
    _image("Visual7W-Pointing", "I-VG", "image_i2i_vg", "OOD"),
]

_VIDEO_TASKS = [
    TaskSpec("K700", "video", "V-CLS", "video_cls", "global"),
    TaskSpec("SmthSmthV2", "video", "V-CLS", "ssv2", "local"),
    TaskSpec("HMDB51", "video", "V-CLS", "video_cls", "global"),
    TaskSpec("UCF101", "video", "V-CLS", "video_cls", "global"),
    TaskSpec("Breakfast", "video", "V-CLS", "video_cls", "global"),
    TaskSpec("MVBench", "video", "V-QA", "video_qa", "local"),
    TaskSpec("Video-MME", "video", "V-QA", "video_qa", "local"),
    TaskSpec("NExTQA", "video", "V-QA", "video_qa", "local"),
    TaskSpec("EgoSchema", "video", "V-QA", "video_qa", "local"),
    TaskSpec("ActivityNetQA", "video", "V-QA", "video_qa", "local"),
    TaskSpec("DiDeMo", "video", "V-RET", "video_ret", "global"),
    TaskSpec("MSR-VTT", "video", "V-RET", "video_ret", "global"),
    TaskSpec("MSVD", "video", "V-RET", "video_ret", "global"),
    TaskSpec("VATEX", "video", "V-RET", "video_ret", "global"),
    TaskSpec("YouCook2", "video", "V-RET", "video_ret", "global"),
    TaskSpec("QVHighlight", "video", "V-MRET", "moment_retrieval", "local"),
    TaskSpec("Charades-STA", "video", "V-MRET", "moment_retrieval", "local"),
    TaskSpec("MomentSeeker", "video", "V-MRET", "momentseeker", "local"),
]

_VISDOC_CATEGORIES = {
    "VDRv1": [
        "ViDoRe_arxivqa", "ViDoRe_docvqa", "ViDoRe_infovqa", "ViDoRe_tabfquad", "ViDoRe_tatdqa",
        "ViDoRe_shiftproject", "ViDoRe_syntheticDocQA_artificial_intelligence", "ViDoRe_syntheticDocQA_energy",
        "ViDoRe_syntheticDocQA_government_reports", "ViDoRe_syntheticDocQA_healthcare_industry",
    ],
    "VDRv2": [
        "ViDoRe_esg_reports_human_labeled_v2", "ViDoRe_biomedical_lectures_v2_multilingual",
        "ViDoRe_economics_reports_v2_multilingual", "ViDoRe_esg_reports_v2_multilingual",
    ],
    "VisRAG": [
        "VisRAG_ArxivQA", "VisRAG_ChartQA", "VisRAG_MP-DocVQA", "VisRAG_SlideVQA", "VisRAG_InfoVQA", "VisRAG_PlotQA",
    ],
    "VD-OOD": ["ViDoSeek-page", "ViDoSeek-doc", "MMLongBench-page", "MMLongBench-doc"],
}  # fmt: skip

_VISDOC_TASKS = [
    TaskSpec(name, "visdoc", category, "visdoc", "global")
    for category, names in _VISDOC_CATEGORIES.items()
    for name in names
]

TASKS = {spec.name: spec for spec in _IMAGE_TASKS + _VIDEO_TASKS + _VISDOC_TASKS}


def get_task(name: str) -> TaskSpec:
    """Return the spec of one task.

    Raises:
        ValueError: if `name` is not one of the 78 tasks (the message names the excluded ones too).
    """
    if name in EXCLUDED_TASKS:
        raise ValueError(f"task {name!r} is not part of the 78-task suite: {EXCLUDED_TASKS[name]}")
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known tasks are the 78 MMEB-V2 keys, e.g. {list(TASKS)[:3]}")
    return TASKS[name]


def tasks_in(group: str) -> list[str]:
    """Task names in a modality (`"image"`, `"video"`, `"visdoc"`), a category (`"I-CLS"`, ...) or `"all"`.

    Raises:
        ValueError: if `group` is none of these.
    """
    if group == "all":
        return list(TASKS)
    if group in HEADLINE_METRIC:
        return [name for name, spec in TASKS.items() if spec.modality == group]
    if group in CATEGORIES:
        return [name for name, spec in TASKS.items() if spec.category == group]
    raise ValueError(f"unknown task group {group!r}; use 'all', one of {list(HEADLINE_METRIC)} or {list(CATEGORIES)}")
