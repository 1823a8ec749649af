"""Train the 8x8 digits classifier behind the "digits" FID features and save it to the cache.

Trains `sdegen.metrics.DigitsClassifier` on the digits TRAIN split (1500 images), reports its
accuracy on the held-out TEST split (297 images) and writes the weights with that record as
safetensors metadata, atomically, to --out (default: $SDEGEN_CACHE/digits_classifier.safetensors,
SDEGEN_CACHE defaulting to ~/.cache/sdegen). Deterministic given --seed on one machine.

    python benchmarks/digits_classifier.py            # 15-30 s on one CPU thread
"""

from __future__ import annotations

import json

import torch

from sdegen.assembly import harness
from sdegen.metrics import (
    default_digits_classifier_path,
    save_digits_classifier,
    train_digits_classifier,
)
from sdegen.metrics.digits import DEFAULT_STEPS


def main(argv: list[str] | None = None) -> dict:
    p = harness.parser(__doc__)
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    args = harness.parse(
        p,
        argv,
        out=None,
        out_help="weights file (default: the cache)",
        seed=0,
        threads=1,
        replot=False,
    )
    torch.set_num_threads(args.threads)
    out = args.out if args.out is not None else default_digits_classifier_path()
    model, record = train_digits_classifier(seed=args.seed, steps=args.steps)
    path = save_digits_classifier(model, record, out)
    report = {"path": str(path), "config": model.config, **record.__dict__}
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
