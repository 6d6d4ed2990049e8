"""Fine-tuning on synthetic phantoms: does the pipeline learn, and does pre-training help?

Usage:
    python benchmarks/finetune_phantoms.py --work DIR [--pretrained MODEL] [--device auto]
        [--size 224] [--n-pretrain 4000] [--n-finetune 4000] [--quick]

Stages (each reuses its output folder when it is already complete):
1. phantoms: ``--n-pretrain`` images (seed 1) for pre-training and ``--n-finetune`` (seed 3,
   split 80/10/10 into train/val/test, one patient per image) for fine-tuning, at ``--size``;
2. pre-training of the ``tiny`` preset with :func:`maco_cxr.pretraining.pretrain.pretrain` on the
   first set with the demo's recipe (reports without negations, read whole; vocabulary learnt
   from them, plain MAE target at ``--size``, rec + con, initial temperature 0.1, no flip),
   unless ``--pretrained`` names a model (e.g. the demo's ``model/maco-tiny-phantoms``);
3. classification of the six phantom findings with
   :func:`maco_cxr.tasks.finetune.finetune_classifier`, by default
   AdamW (lr 1e-3, wd 0.05, layer decay 0.75, clip 1.0, warm-up + cosine) with the recipe's
   RandomResizedCrop + flip, but a crop of 50-100 % of the area (``--crop-scale``; the
   recipe's 8 % often crops a phantom's finding out of view); ``--optimizer sgd`` runs the
   official SGD recipe instead. ``--batch`` is the global batch of a step (as
   ``optim.batch_size``). Every run has the same seed:
   - full fine-tuning on 100 % of the training images from the pre-trained encoder;
   - 1 % of the training images (seeded), full fine-tuning and linear probing, from the
     pre-trained encoder and from a random initialisation of the same architecture.
It prints a table of best validation and test mean AUCs with per-class test AUCs, and the
``maco-cxr`` command of every run; results also go to ``DIR/results-TAG.json``. Expectations:
test mean AUC >= 0.9 for the 100 % run, and pre-trained > random at 1 %.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from maco_cxr.config import load_config
from maco_cxr.data.datasets import build_dataset
from maco_cxr.data.synthetic import write_synthetic_dataset
from maco_cxr.data.tokenizer import ReportTokenizer
from maco_cxr.pretraining.config import PretrainAugment, PretrainConfig, PretrainData, PretrainOptim, PretrainRuntime
from maco_cxr.pretraining.pretrain import pretrain
from maco_cxr.tasks.demo import DemoConfig, demo_model_config
from maco_cxr.tasks.finetune import ClassifyConfig, finetune_classifier

RUNS: list[dict[str, Any]] = [
    {"name": "pretrained-100%-finetune", "init": "pretrained", "fraction": 100, "mode": "finetune"},
    {"name": "pretrained-1%-finetune", "init": "pretrained", "fraction": 1, "mode": "finetune"},
    {"name": "random-1%-finetune", "init": "random", "fraction": 1, "mode": "finetune"},
    {"name": "pretrained-1%-probe", "init": "pretrained", "fraction": 1, "mode": "linear_probe"},
    {"name": "random-1%-probe", "init": "random", "fraction": 1, "mode": "linear_probe"},
]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, required=True, help="folder for data, models and runs")
    parser.add_argument("--pretrained", type=Path, help="use this MaCo model instead of pre-training one")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--size", type=int, default=224, help="image side for every stage")
    parser.add_argument("--n-pretrain", type=int, default=4000)
    parser.add_argument("--n-finetune", type=int, default=4000)
    parser.add_argument("--seed-pretrain", type=int, default=1, help="phantom seed of the pre-training set")
    parser.add_argument("--seed-finetune", type=int, default=3, help="phantom seed of the fine-tuning set")
    parser.add_argument("--pretrain-steps", type=int, default=DemoConfig.steps, help="the demo's steps")
    parser.add_argument("--pretrain-batch", type=int, default=32, help="the demo's 32")
    parser.add_argument("--pretrain-lr", type=float, default=DemoConfig.lr, help="the demo's lr")
    parser.add_argument(
        "--batch", type=int, default=96, help="fine-tuning batch, global over the processes (the recipe's 96)"
    )
    parser.add_argument(
        "--optimizer",
        choices=("sgd", "adamw"),
        default="adamw",
        help="adamw (with --layer-decay: the adamw_lld recipe) or sgd (the official "
        "recipe, momentum 0.9, clip 1.0; give --lr, --weight-decay 0 and --layer-decay none)",
    )
    parser.add_argument("--lr", type=float, default=1e-3, help="lr of every fine-tuning run")
    parser.add_argument("--weight-decay", type=float, default=0.05)
    parser.add_argument("--layer-decay", type=lambda v: None if v.lower() == "none" else float(v), default=0.75)
    parser.add_argument("--tag", default="adamw", help="name of this recipe's runs and results file")
    parser.add_argument("--only", nargs="+", choices=[r["name"] for r in RUNS], help="run only these")
    parser.add_argument(
        "--crop-scale",
        type=float,
        nargs=2,
        default=(0.5, 1.0),
        help="RandomResizedCrop area range (the recipe's is 0.08 1; the default keeps the "
        "small phantom findings in view)",
    )
    parser.add_argument("--steps-full", type=int, default=2000, help="steps of the 100 %% run")
    parser.add_argument("--steps-low", type=int, default=300, help="steps of the 1 %% runs")
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--workers", type=int, default=8, help="loader and phantom-drawing processes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a few images and steps at 64 px: checks that the script runs, not the numbers",
    )
    return parser.parse_args()


def phantoms(out: Path, n: int, seed: int, size: int, workers: int, negations: bool = True) -> tuple[Path, list[str]]:
    command = [
        "maco-cxr",
        "synth",
        "--out",
        str(out),
        "--n",
        str(n),
        "--seed",
        str(seed),
        "--size",
        str(size),
        "--workers",
        str(workers),
        *([] if negations else ["--no-negations"]),
    ]
    stamp = out / "phantom_config.json"
    if stamp.is_file() and (out / "manifest.csv").is_file():
        made = json.loads(stamp.read_text())
        if (made["n"], made["seed"], made["size"], made.get("negations", True)) == (n, seed, size, negations):
            return out, command
    write_synthetic_dataset(out, n, seed, size, negations=negations, workers=workers)
    return out, command


def pretrain_tiny(args: argparse.Namespace, data: Path) -> Path:
    """The demo's recipe (:func:`maco_cxr.tasks.demo.demo_model_config`, whole reports, no flip)."""
    out = args.work / "pretrain"
    final = out / "run" / "final"
    if (final / "model.safetensors").is_file():
        return final
    reports = [r.report or "" for r in build_dataset("manifest", data).records]
    tokenizer = ReportTokenizer.from_corpus_words(reports)
    tokenizer_path = out / "tokenizer.json"
    tokenizer_path.parent.mkdir(parents=True, exist_ok=True)
    tokenizer.save(tokenizer_path)
    config = PretrainConfig(
        model=demo_model_config(tokenizer_path, tokenizer.vocab_size, args.size),
        data=PretrainData(
            source="manifest", path=str(data), kind="manifest", split=None, workers=args.workers, text="full"
        ),
        optim=PretrainOptim(
            lr=args.pretrain_lr,
            max_steps=args.pretrain_steps,
            warmup_steps=30,
            batch_size=args.pretrain_batch,
            accum_steps=1,
        ),
        augment=PretrainAugment(enabled=True, flip_p=0.0),
        runtime=PretrainRuntime(
            device=args.device,
            seed=args.seed,
            output_dir=str(out / "run"),
            log_every=10,
            save_every=args.pretrain_steps,
            keep_last=1,
            resume="auto",
        ),
    )
    return pretrain(config).model_dir


def finetune_run(
    args: argparse.Namespace, spec: dict[str, Any], data: Path, model: Path
) -> tuple[dict[str, Any], list[str]]:
    source = str(model) if spec["init"] == "pretrained" else "none"
    steps = args.steps_full if spec["fraction"] == 100 else args.steps_low
    out = args.work / f"runs-{args.tag}" / spec["name"]
    overrides = [
        "model.preset=tiny",
        f"model.img_size={args.size}",
        f"optim.batch_size={args.batch}",
        f"optim.name={args.optimizer}",
        f"optim.lr={args.lr}",
        f"optim.weight_decay={args.weight_decay}",
        f"optim.layer_decay={'null' if args.layer_decay is None else args.layer_decay}",
        f"optim.steps={steps}",
        f"optim.warmup_steps={min(50, steps // 10)}",
        f"evaluation.every={min(args.eval_every, steps)}",
        f"data.workers={args.workers}",
        f"runtime.seed={args.seed}",
        f"augment.crop_scale=[{args.crop_scale[0]}, {args.crop_scale[1]}]",
    ]
    command = [
        "maco-cxr",
        "finetune",
        "--model",
        source,
        "--dataset",
        "manifest",
        "--root",
        str(data),
        "--fraction",
        str(spec["fraction"]),
        "--mode",
        spec["mode"],
        "--device",
        args.device,
        "--out",
        str(out),
        *overrides,
    ]
    cfg = load_config(
        ClassifyConfig,
        None,
        [
            f"model.source={source}",
            "data.kind=manifest",
            f"data.root={data}",
            f"data.fraction={spec['fraction']}",
            f"model.mode={spec['mode']}",
            f"runtime.device={args.device}",
            f"runtime.out={out}",
            *overrides,
        ],
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return dict(finetune_classifier(cfg).summary), command


def main() -> None:
    args = parse_args()
    if args.quick:
        args.size, args.n_pretrain, args.n_finetune = 64, 96, 400
        args.pretrain_steps, args.pretrain_batch, args.batch = 4, 16, 16
        args.steps_full, args.steps_low, args.eval_every, args.workers = 20, 10, 10, 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args.work.mkdir(parents=True, exist_ok=True)
    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device
    args.device = "cpu" if device == "auto" else device
    hardware = (
        torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU ({torch.get_num_threads()} threads)"
    )
    timings: dict[str, float] = {}
    commands: dict[str, list[str]] = {}

    start = time.perf_counter()
    ft_data, commands["phantoms-finetune"] = phantoms(
        args.work / "phantoms-finetune", args.n_finetune, args.seed_finetune, args.size, args.workers
    )
    if args.pretrained is None:
        pre_data, commands["phantoms-pretrain"] = phantoms(
            args.work / "phantoms-pretrain",
            args.n_pretrain,
            args.seed_pretrain,
            args.size,
            args.workers,
            negations=False,
        )
    timings["phantoms"] = time.perf_counter() - start

    start = time.perf_counter()
    model = args.pretrained if args.pretrained is not None else pretrain_tiny(args, pre_data)
    timings["pretrain"] = time.perf_counter() - start

    results = {}
    for spec in RUNS:
        if args.only and spec["name"] not in args.only:
            continue
        start = time.perf_counter()
        metrics, commands[spec["name"]] = finetune_run(args, spec, ft_data, model)
        timings[spec["name"]] = time.perf_counter() - start
        counts, test = metrics["data"]["counts"], metrics["test"]
        results[spec["name"]] = {
            **spec,
            "train_images": counts["train"],
            "test_images": counts["test"],
            "best_val_auc": metrics["val_best"]["mean_auc"],
            "best_step": metrics["best_step"],
            "steps": metrics["steps"],
            "test_mean_auc": test["mean_auc"],
            "test_mean_auc_ci95": test.get("mean_auc_ci95"),
            "per_class_auc": test["per_class_auc"],
        }
        print(
            f"{spec['name']}: test mean AUC {test['mean_auc']:.4f}, best val {metrics['val_best']['mean_auc']:.4f} "
            f"at step {metrics['best_step']}, {timings[spec['name']]:.0f} s",
            flush=True,
        )
        payload = {
            "hardware": hardware,
            "args": {k: str(v) for k, v in vars(args).items()},
            "model": str(model),
            "results": results,
            "timings_s": timings,
            "commands": {k: shlex.join(v) for k, v in commands.items()},
        }
        (args.work / f"results-{args.tag}.json").write_text(json.dumps(payload, indent=2))

    print(
        f"\nphantom fine-tuning ({args.tag}: {args.optimizer} lr {args.lr}, layer decay {args.layer_decay}) on "
        f"{hardware}; size {args.size}, {args.n_finetune} fine-tuning phantoms (80/10/10), model {model}"
    )
    print(f"{'run':<28}{'train':>7}{'steps':>7}{'best val':>10}{'test AUC':>10}{'time s':>9}")
    for name, r in results.items():
        print(
            f"{name:<28}{r['train_images']:>7}{r['steps']:>7}{r['best_val_auc']:>10.4f}"
            f"{r['test_mean_auc']:>10.4f}{timings[name]:>9.0f}"
        )
    classes = list(next(iter(results.values()))["per_class_auc"])
    print("\nper-class test AUC")
    print(f"{'run':<28}" + "".join(f"{c[:12]:>13}" for c in classes))
    for name, r in results.items():
        print(f"{name:<28}" + "".join(f"{r['per_class_auc'][c]:>13.4f}" for c in classes))
    print(
        f"\nphantoms {timings['phantoms']:.0f} s, pre-training {timings['pretrain']:.0f} s (the demo's recipe, "
        "maco_cxr.tasks.demo.demo_model_config; `maco-cxr demo` saves such a model as model/maco-tiny-phantoms)"
    )
    print("\ncommands:")
    for name, command in commands.items():
        print(f"  [{name}] {shlex.join(command)}")


if __name__ == "__main__":
    main()
