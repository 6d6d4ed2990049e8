"""`maco-cxr push`: upload a model or fine-tuned folder to the Hugging Face Hub with its card."""

from __future__ import annotations

import argparse

from maco_cxr.cli._paths import existing_path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "push",
        help="upload a model or fine-tuned folder to the Hugging Face Hub, with a model card",
        description="Upload DIR (a MaCo model folder or a fine-tuning run's best/ or final/) to the Hugging Face "
        "Hub repository ORG/NAME in one commit, with a generated model card (README.md with the Hub's metadata: "
        "library name, tags, licence, datasets, metrics). Needs huggingface_hub (pip install 'maco-cxr[hub]') and "
        "a token (huggingface-cli login or HF_TOKEN). --dry-run shows the files and the card without uploading. "
        "Load it back with maco_cxr.load('hf-hub:ORG/NAME') or --model hf-hub:ORG/NAME.",
    )
    parser.add_argument("folder", type=existing_path, metavar="DIR", help="the model folder to upload")
    parser.add_argument("repo_id", metavar="ORG/NAME", help="the Hub repository (created when absent)")
    parser.add_argument("--private", action="store_true", help="create the repository private")
    parser.add_argument("--revision", help="the branch to commit to (default: main)")
    parser.add_argument("--dry-run", action="store_true", help="print what would be uploaded, upload nothing")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from maco_cxr.push import push_to_hub

    plan = push_to_hub(args.folder, args.repo_id, private=args.private, revision=args.revision, dry_run=args.dry_run)
    verb = "would upload" if args.dry_run else "uploaded"
    print(f"{verb} {len(plan.files)} files to {plan.repo_id}: {', '.join(plan.files)}")
    if args.dry_run:
        print("--- README.md (the model card) ---")
        print(plan.card)
    elif plan.commit_url:
        print(f"commit: {plan.commit_url}")
    return 0
