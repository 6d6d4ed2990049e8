"""`maco-cxr download`: a named checkpoint into the download cache, verified (and converted once)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "download",
        help="fetch a named checkpoint (maco-base, mae-vit-base) into the cache",
        description="Download a named checkpoint from where its authors publish it into the cache "
        "($MACO_CXR_CACHE, else $XDG_CACHE_HOME/maco-cxr, else ~/.cache/maco-cxr), resuming a partial download, "
        "verify it (its SHA-256 where one is known, else its tensor shapes) and convert a MaCo model once to this "
        "package's format; maco_cxr.load(NAME) then uses it. Google Drive links need gdown "
        "(pip install 'maco-cxr[download]'). Offline (MACO_CXR_OFFLINE=1 or HF_HUB_OFFLINE=1) nothing is "
        "downloaded and the error says where to put the file by hand. --list shows every name with its source, "
        "licence and check.",
    )
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("name", nargs="?", help="a named checkpoint (see --list)")
    what.add_argument("--list", action="store_true", help="list the named checkpoints and where they come from")
    parser.add_argument("--url", help="download from this URL instead of the authors' link (a mirror)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from maco_cxr.cache import cache_dir
    from maco_cxr.hub import NAMED_CHECKPOINTS, checkpoint_file, named_checkpoint, named_model_dir

    if args.list:
        for entry in NAMED_CHECKPOINTS.values():
            print(f"{entry.name}: {entry.description}")
            print(f"  from {entry.url or entry.source}\n  licence: {entry.licence}\n  check: {entry.verified_by}")
        print(f"cache: {cache_dir()}")
        return 0
    entry = named_checkpoint(args.name)
    file = checkpoint_file(entry.name, url=args.url, progress=not args.no_progress)
    print(f"{entry.name}: {file} ({entry.verified_by}: verified)")
    if entry.kind == "maco":
        print(f"model: {named_model_dir(entry.name)} (maco_cxr.load({entry.name!r}) uses it)")
    else:
        print(f"pre-train from it with runtime.init_mae={entry.name}")
    print(f"licence: {entry.licence}")
    return 0
