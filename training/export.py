"""Assemble a Hub-ready TTE folder from a trained model folder.

    python -m training.export --checkpoint runs/head/model --output_dir exports/tte-2b --repo_id org/tte-2b \
        --weights trained --training_settings runs/reasoner/checkpoints/step-00001000/settings.json \
        runs/head/checkpoints/step-00005000/settings.json --results evals/tte-2b/results.json

`--checkpoint` is a `save_pretrained` folder (what `training.checkpoint.export_model` writes to `output_dir/model`).
The export writes, into a new folder, exactly:

    weights (safetensors), config.json (with auto_map), generation_config.json (greedy), the processor files,
    the root code files (`*_tte.py`, `custom_st.py`, `handler.py`), the sentence-transformers files (`modules.json`,
    `config_sentence_transformers.json`, the module settings), `requirements.txt`, the model card `README.md` and
    `tte_export_manifest.json` (the sha256 of every other file)

and checks that the folder holds nothing else and reloads with no missing or unexpected weights. It is written to
a temporary folder and renamed into place last; `check_export_folder` (the push gate) verifies the manifest.

The card is rendered from `model_cards/<variant>.md`. Its numbers come only from files: the training settings
(`settings.json` of each training run) and an evaluation results file (`results.json` of `tte_eval`). `--weights`
has no default: an export of random weights says so at the top of its card and gets no training section.
"""

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from typing import Literal

import jinja2
import sentence_transformers
import torch
import transformers
from transformers import AutoModel, HfArgumentParser
from transformers.dynamic_module_utils import get_relative_import_files

import tte
from training.checkpoint import sha256_of
from training.loop import pause_if_requested
from tte.custom_st import TTESentenceTransformer
from tte.handler import ALLOW_URLS_ENV, PRIVATE_NETWORKS_ENV
from tte.processing_tte import PROMPT_SETS


ROOT = tte.__path__[0]
CARD_TEMPLATES = os.path.join(ROOT, "model_cards")
# Version floors, as in setup.py; the card also names the versions the export ran with.
REQUIREMENTS = {"transformers": ">=5.24,<6", "sentence-transformers": ">=6.2,<7", "torch": ">=2.6"}
REQUIREMENT_REASON = "TTE's Hub code targets the transformers 5 / sentence-transformers 6 APIs"
EXPORT_MANIFEST = "tte_export_manifest.json"  # sha256 of every other file; the push gate checks it
FIGURE = "accuracy-vs-tokens.png"  # the card's plot, optional (training.compare_variants draws it)
CODE_FILES = ["custom_st.py", "handler.py",
              *(os.path.basename(path) for path in get_relative_import_files(os.path.join(ROOT, "custom_st.py")))]
ALLOWED_FILES = {
    "config.json", "generation_config.json", "model.safetensors", "model.safetensors.index.json",
    "processor_config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
    "modules.json", "config_sentence_transformers.json", TTESentenceTransformer.config_file_name,
    "README.md", "requirements.txt", EXPORT_MANIFEST, FIGURE, *CODE_FILES,
}  # fmt: skip
OPTIONAL_FILES = {"model.safetensors", "model.safetensors.index.json", FIGURE}
WEIGHT_SHARD = re.compile(r"model-\d{5}-of-\d{5}\.safetensors")
WIDGET = [{"source_sentence": "What colour is the bus in the photo?",
           "sentences": ["A yellow double-decker bus on a city street", "A red car parked under a tree",
                         "A cat asleep on a wooden table"]}]  # fmt: skip


@dataclass
class ExportArgs:
    checkpoint: str = field(metadata={"help": "Trained model folder (`save_pretrained` output)."})
    output_dir: str = field(metadata={"help": "New folder to write; must not exist or be empty."})
    repo_id: str = field(metadata={"help": "Hub repository the folder is meant for (used in the card's snippets)."})
    weights: Literal["trained", "random"] = field(
        metadata={"help": "Whether the weights were trained; 'random' puts a plain warning at the top of the card."}
    )
    training_settings: list[str] = field(
        default_factory=list, metadata={"help": "settings.json of each training run (needed for trained weights)."}
    )
    results: str | None = field(default=None, metadata={"help": "tte_eval results.json; without it: not evaluated."})
    qa_results: str | None = field(default=None, metadata={"help": "training.eval_easy_vqa results file (its "
                                   "question-answering accuracies go in the card)."})  # fmt: skip
    comparison: str | None = field(default=None, metadata={"help": "training.compare_variants comparison.md (the "
                                   "variants' table and its notes go in the card verbatim)."})  # fmt: skip
    figure: str | None = field(default=None, metadata={"help": f"A PNG plot for the card (training.compare_variants' "
                               f"{FIGURE}); the folder holds it as {FIGURE}."})  # fmt: skip
    card_template: str | None = field(default=None, metadata={"help": "Card template in model_cards/ without .md "
                                      "(default: the variant's); e.g. tte-mini."})  # fmt: skip
    base_model: str | None = field(default=None, metadata={"help": "Hub id of the backbone the model starts from."})
    license: str = field(default="apache-2.0", metadata={"help": "License id for the card (Qwen2-VL: apache-2.0)."})
    verify: bool = field(default=True, metadata={"help": "Reload the folder and refuse missing/unexpected weights."})

    def __post_init__(self):
        if self.weights == "trained" and not self.training_settings:
            raise ValueError("--weights trained needs --training_settings (the settings.json of each training run)")
        if self.weights == "random" and self.training_settings:
            raise ValueError("--weights random contradicts --training_settings; random weights were never trained")


def write_export_manifest(folder: str) -> None:
    """`EXPORT_MANIFEST`: the sha256 of every other file, so a torn or edited folder can be told from a whole one."""
    names = [name for name in sorted(os.listdir(folder)) if name != EXPORT_MANIFEST]
    files = {name: sha256_of(os.path.join(folder, name)) for name in names}
    with open(os.path.join(folder, EXPORT_MANIFEST), "w", encoding="utf-8") as handle:
        json.dump({"files": files}, handle, indent=2)


def check_manifest(folder: str, names: list[str]) -> None:
    with open(os.path.join(folder, EXPORT_MANIFEST), encoding="utf-8") as handle:
        listed = json.load(handle)["files"]
    unlisted = sorted(set(names) - set(listed) - {EXPORT_MANIFEST})
    if unlisted:
        raise ValueError(f"{folder}: files not in {EXPORT_MANIFEST}: {unlisted}")
    for name, expected in listed.items():
        if not os.path.isfile(os.path.join(folder, name)) or sha256_of(os.path.join(folder, name)) != expected:
            raise ValueError(f"{folder}: {name} does not match its sha256 in {EXPORT_MANIFEST} (torn or edited); "
                             "re-run training.export")  # fmt: skip


def check_export_folder(folder: str) -> list[str]:
    """The folder's files, sorted, after checking that each is allowed, the required ones are there and every file
    matches the export's sha256 manifest (the gate before `push_to_hub`).

    Raises:
        ValueError: naming unexpected, nested, missing or altered files.
    """
    names = check_export_files(folder)
    check_manifest(folder, names)
    return names


def check_export_files(folder: str) -> list[str]:
    """The folder's files, sorted, after checking their names only (allowed, none missing)."""
    if not os.path.isdir(folder):
        raise ValueError(f"{folder} is not an export folder (it does not exist); run training.export")
    names = sorted(os.listdir(folder))
    unexpected = [n for n in names if n not in ALLOWED_FILES and not WEIGHT_SHARD.fullmatch(n)]
    unexpected += [n + "/" for n in names if os.path.isdir(os.path.join(folder, n))]
    if unexpected:
        raise ValueError(f"{folder}: files outside the export's allowed set: {unexpected}")
    required = ALLOWED_FILES - OPTIONAL_FILES
    missing = sorted(required - set(names))
    if "model.safetensors" not in names and "model.safetensors.index.json" not in names:
        missing.append("model.safetensors")
    if missing:
        raise ValueError(f"{folder}: missing files {missing}; re-run training.export")
    return names


def read_json_object(path: str) -> dict:
    """A JSON file holding one object."""
    with open(path, encoding="utf-8") as handle:
        data = json.load(handle)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def read_results(path: str) -> dict:
    """The card's evaluation section from a `tte_eval` results file (metadata, per-task metrics, aggregate).

    Raises:
        ValueError: if the file lacks the `metadata` / `metrics` layout or a task lacks its headline metric.
    """
    data = read_json_object(path)
    if not isinstance(data.get("metadata"), dict) or not isinstance(data.get("metrics"), dict):
        raise ValueError(f"{path}: expected a tte_eval results file with 'metadata' and 'metrics' objects")
    meta = data["metadata"]
    headline = meta.get("headline_metric", {})
    tasks = []
    for modality, scores in data["metrics"].items():
        for task, metrics in scores.items():
            metric = headline.get(modality)
            if metric not in metrics:
                raise ValueError(f"{path}: task {task!r} ({modality}) has no headline metric {metric!r}")
            tasks.append({"task": task, "modality": modality, "metric": metric, "score": 100 * metrics[metric]})
    aggregate = data.get("aggregate") or {}
    return {
        "path": os.path.basename(path),
        "benchmark": meta.get("benchmark"),
        "created": meta.get("created"),
        "model_hash": meta.get("model_hash"),
        "settings": meta.get("model_settings", {}),
        "columns": [{"name": name, "score": score, "partial": name in aggregate.get("missing", {})}
                    for name, score in aggregate.get("scores", {}).items()],  # fmt: skip
        "aggregate_error": data.get("aggregate_error"),
        "tasks": tasks,
    }


def render_card(args: ExportArgs, config, text_only: bool) -> str:
    """The model card from `model_cards/<variant>.md`, filled from the model's config and the given files only."""
    environment = jinja2.Environment(loader=jinja2.FileSystemLoader(CARD_TEMPLATES), undefined=jinja2.StrictUndefined,
                                     keep_trailing_newline=True)  # fmt: skip
    template = environment.get_template(f"{args.card_template or config.variant}.md")
    return template.render(
        repo_id=args.repo_id,
        license=args.license,
        base_model=args.base_model,
        random_weights=args.weights == "random",
        config=config,
        backbone=config.backbone_config.model_type,
        text_only=text_only,
        requirements=REQUIREMENTS,
        tested={"transformers": transformers.__version__, "sentence-transformers": sentence_transformers.__version__,
                "torch": torch.__version__},  # fmt: skip
        training=[{"path": path, "settings": read_json_object(path)} for path in args.training_settings],
        evaluation=read_results(args.results) if args.results else None,
        qa=read_json_object(args.qa_results) if args.qa_results else None,
        comparison=open(args.comparison, encoding="utf-8").read().strip() if args.comparison else None,
        figure=FIGURE if args.figure else None,
        task_families=list(PROMPT_SETS[config.prompt_set_version]),
        widget=WIDGET,
        allow_urls_env=ALLOW_URLS_ENV,
        private_networks_env=PRIVATE_NETWORKS_ENV,
    )


def write_sentence_transformers_files(folder: str) -> None:
    """`modules.json` (one root module, loaded from `custom_st.py`) and `config_sentence_transformers.json`."""
    modules = [{"idx": 0, "name": "0", "path": "", "type": f"custom_st.{TTESentenceTransformer.__name__}"}]
    config = {
        "__version__": {"sentence_transformers": sentence_transformers.__version__,
                        "transformers": transformers.__version__, "pytorch": torch.__version__},  # fmt: skip
        "model_type": "SentenceTransformer",
        "prompts": {"query": "", "document": ""},  # a prompt is a TTE instruction; none by default
        "default_prompt_name": None,
        "similarity_fn_name": "cosine",
        "requirements": {name: {"specifier": spec, "reason": REQUIREMENT_REASON}
                         for name, spec in REQUIREMENTS.items()},  # fmt: skip
    }
    for name, data in (("modules.json", modules), ("config_sentence_transformers.json", config)):
        with open(os.path.join(folder, name), "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=2)


def verify_weights(folder: str) -> None:
    """Reload with the folder's own code; refuse missing, unexpected or mismatched weights."""
    _, info = AutoModel.from_pretrained(folder, trust_remote_code=True, output_loading_info=True)
    problems = {key: sorted(info[key]) for key in ("missing_keys", "unexpected_keys", "mismatched_keys") if info[key]}
    if problems:
        raise ValueError(f"{folder}: the exported weights do not load cleanly: {problems}")


def export(args: ExportArgs) -> list[str]:
    """Write the Hub folder; returns its file names.

    Everything is written to a temporary folder beside `output_dir`, checked, and renamed into place last, so a crash
    at any point leaves either no export or a whole one, never a torn folder that the push gate would accept.
    """
    if os.path.isdir(args.output_dir) and os.listdir(args.output_dir):
        raise ValueError(f"output_dir {args.output_dir!r} is not empty; export writes a fresh folder")
    module = TTESentenceTransformer.load(args.checkpoint, trust_remote_code=True, local_files_only=True)
    card = render_card(args, module.model.config, module.processor.text_only)  # bad input files fail before writing
    check_figure(args.figure)
    parent, name = os.path.split(os.path.abspath(args.output_dir))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{name}.exporting-", dir=parent)
    try:
        write_export(module, card, staging, args.figure)
        names = check_export_files(staging)  # the manifest was just computed from these very files
        if args.verify:
            verify_weights(staging)
        pause_if_requested("export-written")
        if os.path.isdir(args.output_dir):
            os.rmdir(args.output_dir)  # empty (checked above): the rename needs the name free
        os.rename(staging, args.output_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone already after a successful rename
    return names


def check_figure(path: str | None) -> None:
    if path is None:
        return
    with open(path, "rb") as handle:  # a missing file raises here, naming it
        if handle.read(8) != b"\x89PNG\r\n\x1a\n":
            raise ValueError(f"--figure {path}: not a PNG file")


def write_export(module: TTESentenceTransformer, card: str, folder: str, figure: str | None = None) -> None:
    module.save(folder)  # weights, config, model code, processor, generation config, module settings
    if figure is not None:
        shutil.copyfile(figure, os.path.join(folder, FIGURE))
    for name in CODE_FILES:
        shutil.copy(os.path.join(ROOT, name), folder)
    write_sentence_transformers_files(folder)
    with open(os.path.join(folder, "requirements.txt"), "w", encoding="utf-8") as handle:
        # PyAV decodes video files and data:video URIs (frame lists need only Pillow)
        handle.write("".join(f"{name}{spec}\n" for name, spec in REQUIREMENTS.items()) + "pillow\nav\n")
    with open(os.path.join(folder, "README.md"), "w", encoding="utf-8") as handle:
        handle.write(card)
    write_export_manifest(folder)


def main(argv: list[str] | None = None) -> None:
    (args,) = HfArgumentParser(ExportArgs).parse_args_into_dataclasses(argv)
    names = export(args)
    print(f"exported {len(names)} files to {args.output_dir}: {', '.join(names)}")


if __name__ == "__main__":
    main()
