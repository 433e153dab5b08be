"""Upload a folder written by `training.export` (or the demo Space, `space/`) to the Hugging Face Hub, in one commit.

    python -m training.push_to_hub --folder exports/tte-2b --repo_id org/tte-2b --private --revision v1 \
        --commit_message "TTE-2B, unified, MMEB-V2 run 3"
    python -m training.push_to_hub --folder exports/tte-2b --repo_id org/tte-2b --dry_run   # list, upload nothing
    python -m training.push_to_hub --folder space --repo_id org/tte-mini-demo --repo_type space --dry_run

The folder is checked first: a model folder holds only the files an export writes, none missing; a Space folder
holds its app, requirements and README (whose YAML names the Gradio SDK and the app file), plus `examples/`.
The repository is created if needed
(`--private` applies only then: an existing repository keeps its visibility), and so is the branch `--revision`.
The token comes from `HF_TOKEN` or `hf auth login`; `--endpoint` (or `HF_ENDPOINT`) points at another Hub server.
"""

import os
import re
from dataclasses import dataclass, field
from typing import Literal

from huggingface_hub import CommitOperationAdd, HfApi
from huggingface_hub.repocard import metadata_load
from transformers import HfArgumentParser

from training.export import check_export_folder


@dataclass
class PushArgs:
    folder: str = field(metadata={"help": "Folder written by training.export."})
    repo_id: str = field(metadata={"help": "Target repository, e.g. 'org/tte-2b'."})
    repo_type: Literal["model", "space"] = field(default="model", metadata={"help": "`model` (a training.export "
                                                 "folder) or `space` (the demo app, space/)."})  # fmt: skip
    revision: str | None = field(default=None, metadata={"help": "Branch to commit to (created from main if new)."})
    private: bool = field(default=False, metadata={"help": "Create the repository as private (new repositories only)."})
    commit_message: str = field(default="Upload TTE model", metadata={"help": "Commit title."})
    endpoint: str | None = field(default=None, metadata={"help": "Hub URL; default HF_ENDPOINT or huggingface.co."})
    dry_run: bool = field(default=False, metadata={"help": "List what would be uploaded, and upload nothing."})


SPACE_FILES = ("README.md", "app.py", "requirements.txt")
SPACE_EXAMPLE = re.compile(r"examples/[\w.-]+\.(png|jpg|jpeg|json)")


def space_card(folder: str) -> dict:
    """The YAML block of the Space's README."""
    card = metadata_load(os.path.join(folder, "README.md"))
    if card is None:
        raise ValueError(f"{folder}/README.md: no YAML block (---) at the top; a Space needs one")
    return card


def check_space_folder(folder: str) -> list[str]:
    """The Space folder's files (paths relative to it, sorted) after checking them.

    Raises:
        ValueError: naming missing, unexpected (caches, secrets, checkpoints...) files, or a README whose YAML does not
            name the Gradio SDK and an app file that exists.
    """
    if not os.path.isdir(folder):
        raise ValueError(f"{folder} is not a Space folder (it does not exist)")
    names = sorted(os.path.relpath(os.path.join(root, name), folder).replace(os.sep, "/")
                   for root, _, files in os.walk(folder) for name in files)  # fmt: skip
    missing = [name for name in SPACE_FILES if name not in names]
    if missing:
        raise ValueError(f"{folder}: a Space needs {missing}")
    unexpected = [name for name in names if name not in SPACE_FILES and not SPACE_EXAMPLE.fullmatch(name)]
    if unexpected:
        raise ValueError(f"{folder}: files a Space upload does not take: {unexpected} (allowed: {list(SPACE_FILES)} "
                         "and examples/*.png|jpg|json)")  # fmt: skip
    card = space_card(folder)
    if card.get("sdk") != "gradio" or card.get("app_file") not in names:
        raise ValueError(f"{folder}/README.md: the YAML must say sdk: gradio and name an app_file in the folder; "
                         f"it says sdk={card.get('sdk')!r}, app_file={card.get('app_file')!r}")  # fmt: skip
    return names


def describe_upload(args: PushArgs, names: list[str]) -> str:
    """The upload plan: target, then one line per file with its size."""
    lines = [f"repo {args.repo_id} ({args.repo_type}, {'private' if args.private else 'public'} if created), "
             f"branch {args.revision or 'main'}, message {args.commit_message!r}:"]  # fmt: skip
    lines += [f"  {name}  {os.path.getsize(os.path.join(args.folder, name)):,} bytes" for name in names]
    return "\n".join(lines)


def push(args: PushArgs) -> str:
    """Create the repository and branch if needed and commit every file of the folder; returns the commit URL."""
    names = check_space_folder(args.folder) if args.repo_type == "space" else check_export_folder(args.folder)
    print(describe_upload(args, names))
    if args.dry_run:
        return ""
    api = HfApi(endpoint=args.endpoint)
    space_sdk = "gradio" if args.repo_type == "space" else None
    api.create_repo(args.repo_id, repo_type=args.repo_type, private=args.private, space_sdk=space_sdk, exist_ok=True)
    if args.revision is not None:
        api.create_branch(args.repo_id, branch=args.revision, repo_type=args.repo_type, exist_ok=True)
    operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=os.path.join(args.folder, name))
                  for name in names]  # fmt: skip
    commit = api.create_commit(args.repo_id, operations, commit_message=args.commit_message, revision=args.revision,
                               repo_type=args.repo_type)  # fmt: skip
    return commit.commit_url


def main(argv: list[str] | None = None) -> None:
    (args,) = HfArgumentParser(PushArgs).parse_args_into_dataclasses(argv)
    url = push(args)
    print(f"uploaded: {url}" if url else "dry run: nothing uploaded")


if __name__ == "__main__":
    main()
