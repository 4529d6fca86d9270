"""Fine-tuning speed on the demo set: seconds per epoch and training images/s, full vs frozen body.

Runs a few epochs of each configuration on the demo training split (CUDA when available) and reports
the median epoch time. Prints a table and writes JSON (default ``benchmarks/results/train.json``).

    python benchmarks/train.py [--epochs 3] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "demo")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--device", default="")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "train.json")
    return parser


def main(args: argparse.Namespace) -> None:
    import torch

    from core.config import DataConfig, TrainConfig
    from core.pipeline import prepare
    from core.train import fine_tune

    prepared = prepare(DataConfig(root=args.data))
    n_train = len(prepared.split.train)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    rows = []
    for name, config in (
        ("full", TrainConfig(epochs=args.epochs, device=device)),
        ("frozen body", TrainConfig(epochs=args.epochs, device=device, freeze_body=True)),
    ):
        with tempfile.TemporaryDirectory() as run_dir:
            result = fine_tune(prepared.dataset.records, prepared.split, config, Path(run_dir) / "bench", resume=False)
        seconds = statistics.median(m.seconds for m in result.history)
        rows.append(
            {
                "config": name,
                "device": device,
                "epochs": args.epochs,
                "train_images": n_train,
                "median_epoch_s": seconds,
                "train_images_per_s": n_train / seconds,
                "epoch_s": [m.seconds for m in result.history],
                "final_test_accuracy": result.history[-1].test_accuracy,
                "train_config": dataclasses.asdict(config),
            }
        )
    print(
        f"fine-tuning efficientnet_lite0 on {device} ({platform.machine()}, {torch.get_num_threads()} threads), "
        f"{n_train} training images, median of {args.epochs} epochs (epoch time includes the test pass)"
    )
    print(f"{'config':<12} {'s/epoch':>8} {'img/s':>7} {'test acc':>8}")
    for row in rows:
        print(
            f"{row['config']:<12} {row['median_epoch_s']:>8.1f} {row['train_images_per_s']:>7.1f} {row['final_test_accuracy']:>8.1%}"
        )
    ratio = rows[0]["median_epoch_s"] / rows[1]["median_epoch_s"]
    print(f"full fine-tuning takes {ratio:.2f}x the time of a frozen-body epoch")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rows": rows, "full_over_frozen": ratio}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
