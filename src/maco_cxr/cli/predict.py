"""`maco-cxr predict`: any MaCo or fine-tuned model over files, folders or a list, resumably."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from maco_cxr.cli import _model_args as common
from maco_cxr.cli._paths import existing_file, existing_path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="predict over image files, folders or a list file (resumable)",
        description="Run a MaCo model (zero-shot --classes, --embeddings, grounding --phrase) or a "
        "fine-tuned model folder (classifier scores, segmenter masks, detector boxes) over PNG/JPEG/DICOM "
        "files, folders (recursive; hidden files ignored and counted) or a --list file (one path per line). "
        "Writes to --out: predictions.csv (one row per predicted file, sorted by path, with SOPInstanceUID, "
        "StudyInstanceUID, ViewPosition for DICOMs; PatientID only with --patient-id), failures.csv (files "
        "that should be images and do not decode), non_images.csv (files that are no images, skipped), "
        "skipped.csv (--frontal-only), embeddings.npy + embeddings_index.csv, maps/ (grounding .npy in the "
        "original pixel grid; overlay .png with --overlays), masks/, detections.csv, summary.json. A killed "
        "run resumes when rerun with the same arguments: finished chunks and failed files are kept "
        "(--retry-failed retries those), the maps and masks of inputs deleted since are removed; other "
        "settings are refused.",
    )
    parser.add_argument(
        "inputs", nargs="*", type=existing_path, metavar="INPUT", help="image files or folders (searched recursively)"
    )
    parser.add_argument(
        "--list",
        dest="list_file",
        type=existing_file,
        metavar="FILE",
        help="a file listing one image path per line (relative paths: to the list's folder; '#' starts a comment line)",
    )
    common.add_model_arguments(parser)
    parser.add_argument("--out", required=True, type=Path, help="output folder (new, empty, or a run to resume)")
    parser.add_argument(
        "--classes",
        nargs="+",
        metavar="NAME",
        help="zero-shot classes: a class set (nih, chexpert, rsna, siim) or class names "
        "(give the INPUTs before --classes, or end the names with --)",
    )
    parser.add_argument(
        "--prompts",
        default=None,
        metavar="SET|FILE",
        help="prompt set 'default' or 'siim', or a YAML/JSON prompt file (default: 'siim' "
        "for --classes siim, else 'default')",
    )
    parser.add_argument(
        "--embeddings",
        action="store_true",
        help="also write the global image embeddings (embeddings.npy + embeddings_index.csv)",
    )
    parser.add_argument(
        "--phrase",
        dest="phrases",
        action="append",
        default=[],
        metavar="TEXT",
        help="a phrase to ground on every image (repeatable): maps/*.npy",
    )
    parser.add_argument(
        "--overlays",
        action="store_true",
        help="also draw each grounding map over its image as maps/*.png (costs several times the map itself)",
    )
    parser.add_argument(
        "--frontal-only",
        action="store_true",
        help="keep DICOMs whose ViewPosition is PA or AP; others go to skipped.csv (files "
        "without the tag, e.g. PNG/JPEG, are kept)",
    )
    parser.add_argument(
        "--patient-id", action="store_true", help="also write the DICOM PatientID (patient data: off unless asked)"
    )
    parser.add_argument(
        "--retry-failed",
        action="store_true",
        help="when resuming, process again the files an earlier run could not read (default: keep their failures)",
    )
    parser.add_argument(
        "--chunk-size",
        type=int,
        default=256,
        metavar="N",
        help="files per committed part of the resume journal (default 256)",
    )
    parser.set_defaults(func=run)


def _swallowed_inputs(args: argparse.Namespace) -> list[str]:
    """Class names that are existing paths argparse put into --classes (``--classes A B folder``): a
    name with a path separator, or any existing path when no INPUT is left (so a class named like a
    folder of the working directory still works when the INPUTs come first)."""
    return [
        name
        for name in args.classes or ()
        if Path(name).exists() and (os.sep in name or "/" in name or not (args.inputs or args.list_file))
    ]


def run(args: argparse.Namespace) -> int:
    from maco_cxr.errors import ConfigError

    swallowed = _swallowed_inputs(args)
    if swallowed:
        what = "is an existing path" if len(swallowed) == 1 else "are existing paths"
        raise ConfigError(
            f"--classes: {', '.join(repr(name) for name in swallowed)} {what}, not class "
            "names: put INPUTs before --classes or end the list with -- (e.g. maco-cxr predict "
            "--classes A B -- FOLDER ...)"
        )
    if not args.inputs and args.list_file is None:
        raise ConfigError("give image files or folders, or --list FILE")
    from maco_cxr.tasks.predict import predict

    result = predict(
        args.model,
        args.inputs,
        args.out,
        list_file=args.list_file,
        classes=args.classes,
        prompts=args.prompts,
        embeddings=args.embeddings,
        phrases=args.phrases,
        overlays=args.overlays,
        frontal_only=args.frontal_only,
        patient_id=args.patient_id,
        retry_failed=args.retry_failed,
        batch_size=args.batch_size,
        workers=args.workers,
        device=args.device,
        chunk_size=args.chunk_size,
        progress=not args.no_progress,
        text_heads=args.text_heads,
        vision_heads=args.vision_heads,
    )
    counts = result.summary["counts"]
    print(
        f"{result.n_inputs} files: {result.n_predicted} predicted, {result.n_failed} failed, "
        f"{result.n_skipped} skipped views, {result.n_not_images} not images, "
        f"{counts['hidden_ignored']} hidden entries ignored"
    )
    if result.n_done_before:
        print(f"resumed: {result.n_done_before} files were done by an earlier run")
    if result.removed:
        print(
            f"removed {len(result.removed)} map/mask files of {counts['removed_inputs']} inputs that no "
            "longer exist (only files this run's journal wrote for them)"
        )
    print(
        f"{counts['processed_now']} files in {result.seconds:.1f} s ({result.images_per_second:.1f} "
        f"images/s, model load {result.summary['timings']['load_seconds']:.1f} s)"
    )
    if result.n_colour_converted:
        print(
            f"{result.n_colour_converted} colour images were reduced to grey with the PNG luma (their stored "
            "colour mode is in the 'colour' column)"
        )
    if result.n_not_images:
        print(f"files that are no images (skipped) are listed in {result.out / 'non_images.csv'}")
    if result.n_failed:
        print(f"unreadable files are listed in {result.out / 'failures.csv'}")
    if result.n_failed_not_retried:
        print(
            f"{result.n_failed_not_retried} of them failed in an earlier run and were not retried "
            "(--retry-failed retries them)"
        )
    print(f"wrote {result.out / 'predictions.csv'} and summary.json")
    return 0
