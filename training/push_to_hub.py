"""Upload a folder written by `training.export` to the Hugging Face Hub, in one commit.

    python -m training.push_to_hub --folder exports/tte-2b --repo_id org/tte-2b --private --revision v1 \
        --commit_message "TTE-2B, unified, MMEB-V2 run 3"
    python -m training.push_to_hub --folder exports/tte-2b --repo_id org/tte-2b --dry_run   # list, upload nothing

The folder is checked first (only the files an export writes, none missing). The repository is created if needed
(`--private` applies only then: an existing repository keeps its visibility), and so is the branch `--revision`.
The token comes from `HF_TOKEN` or `hf auth login`; `--endpoint` (or `HF_ENDPOINT`) points at another Hub server.
"""

import os
from dataclasses import dataclass, field

from huggingface_hub import CommitOperationAdd, HfApi
from transformers import HfArgumentParser

from training.export import check_export_folder


@dataclass
class PushArgs:
    folder: str = field(metadata={"help": "Folder written by training.export."})
    repo_id: str = field(metadata={"help": "Target model repository, e.g. 'org/tte-2b'."})
    revision: str | None = field(default=None, metadata={"help": "Branch to commit to (created from main if new)."})
    private: bool = field(default=False, metadata={"help": "Create the repository as private (new repositories only)."})
    commit_message: str = field(default="Upload TTE model", metadata={"help": "Commit title."})
    endpoint: str | None = field(default=None, metadata={"help": "Hub URL; default HF_ENDPOINT or huggingface.co."})
    dry_run: bool = field(default=False, metadata={"help": "List what would be uploaded, and upload nothing."})


def describe_upload(args: PushArgs, names: list[str]) -> str:
    """The upload plan: target, then one line per file with its size."""
    lines = [f"repo {args.repo_id} (model, {'private' if args.private else 'public'} if created), "
             f"branch {args.revision or 'main'}, message {args.commit_message!r}:"]  # fmt: skip
    lines += [f"  {name}  {os.path.getsize(os.path.join(args.folder, name)):,} bytes" for name in names]
    return "\n".join(lines)


def push(args: PushArgs) -> str:
    """Create the repository and branch if needed and commit every file of the folder; returns the commit URL."""
    names = check_export_folder(args.folder)
    print(describe_upload(args, names))
    if args.dry_run:
        return ""
    api = HfApi(endpoint=args.endpoint)
    api.create_repo(args.repo_id, private=args.private, exist_ok=True)
    if args.revision is not None:
        api.create_branch(args.repo_id, branch=args.revision, exist_ok=True)
    operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=os.path.join(args.folder, name))
                  for name in names]  # fmt: skip
    commit = api.create_commit(args.repo_id, operations, commit_message=args.commit_message, revision=args.revision)
    return commit.commit_url


def main(argv: list[str] | None = None) -> None:
    (args,) = HfArgumentParser(PushArgs).parse_args_into_dataclasses(argv)
    url = push(args)
    print(f"uploaded: {url}" if url else "dry run: nothing uploaded")


if __name__ == "__main__":
    main()
