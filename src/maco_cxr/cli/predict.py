"""`maco-cxr predict`: any MaCo or fine-tuned model over files, folders or a list, resumably."""

from __future__ import annotations

import argparse
from pathlib import Path

from maco_cxr.cli import _model_args as common
from maco_cxr.cli._paths import existing_file, existing_path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "predict", help="predict over image files, folders or a list file (resumable)",
        description="Run a MaCo model (zero-shot --classes, --embeddings, grounding --phrase) or a fine-tuned "
        "model folder (classifier scores, segmenter masks, detector boxes) over PNG/JPEG/DICOM files, folders "
        "(recursive; hidden files ignored and counted) or a --list file (one path per line). Writes to --out: "
        "predictions.csv (one row per predicted file, sorted by path, with SOPInstanceUID, StudyInstanceUID, "
        "ViewPosition for DICOMs; PatientID only with --patient-id), failures.csv, skipped.csv (--frontal-only), "
        "embeddings.npy + embeddings_index.csv, maps/ (grounding .npy in the original pixel grid + overlay .png), "
        "masks/, detections.csv, summary.json. A killed run resumes when rerun with the same arguments: finished "
        "chunks are kept; other settings are refused.")
    parser.add_argument("inputs", nargs="*", type=existing_path, metavar="INPUT",
                        help="image files or folders (searched recursively)")
    parser.add_argument("--list", dest="list_file", type=existing_file, metavar="FILE",
                        help="a file listing one image path per line (relative paths: to the list's folder; "
                        "'#' starts a comment line)")
    common.add_model_arguments(parser)
    parser.add_argument("--out", required=True, type=Path, help="output folder (new, empty, or a run to resume)")
    parser.add_argument("--classes", nargs="+", metavar="NAME",
                        help="zero-shot classes: a class set (nih, chexpert, rsna, siim) or class names (give the "
                        "INPUTs before --classes, or end the names with --)")
    parser.add_argument("--prompts", default=None, metavar="SET|FILE",
                        help="prompt set 'default' or 'siim', or a YAML/JSON prompt file (default: 'siim' for "
                        "--classes siim, else 'default')")
    parser.add_argument("--embeddings", action="store_true",
                        help="also write the global image embeddings (embeddings.npy + embeddings_index.csv)")
    parser.add_argument("--phrase", dest="phrases", action="append", default=[], metavar="TEXT",
                        help="a phrase to ground on every image (repeatable): maps/*.npy + overlay PNGs")
    parser.add_argument("--frontal-only", action="store_true",
                        help="keep DICOMs whose ViewPosition is PA or AP; others go to skipped.csv (files without "
                        "the tag, e.g. PNG/JPEG, are kept)")
    parser.add_argument("--patient-id", action="store_true",
                        help="also write the DICOM PatientID (patient data: off unless asked)")
    parser.add_argument("--chunk-size", type=int, default=256, metavar="N",
                        help="files per committed part of the resume journal (default 256)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from maco_cxr.errors import ConfigError
    from maco_cxr.tasks.predict import predict

    if not args.inputs and args.list_file is None:
        raise ConfigError("give image files or folders, or --list FILE")
    result = predict(args.model, args.inputs, args.out, list_file=args.list_file, classes=args.classes,
                     prompts=args.prompts, embeddings=args.embeddings, phrases=args.phrases,
                     frontal_only=args.frontal_only, patient_id=args.patient_id, batch_size=args.batch_size,
                     workers=args.workers, device=args.device, chunk_size=args.chunk_size,
                     progress=not args.no_progress, text_heads=args.text_heads, vision_heads=args.vision_heads)
    counts = result.summary["counts"]
    print(f"{result.n_inputs} files: {result.n_predicted} predicted, {result.n_failed} failed, {result.n_skipped} "
          f"skipped views, {counts['hidden_ignored']} hidden entries ignored")
    if result.n_done_before:
        print(f"resumed: {result.n_done_before} files were done by an earlier run")
    print(f"{counts['processed_now']} files in {result.seconds:.1f} s ({result.images_per_second:.1f} images/s, "
          f"model load {result.summary['timings']['load_seconds']:.1f} s)")
    if result.n_failed:
        print(f"unreadable files are listed in {result.out / 'failures.csv'}")
    print(f"wrote {result.out / 'predictions.csv'} and summary.json")
    return 0
