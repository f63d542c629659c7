"""Task-oriented feature encoding at one split (Shao & Zhang 2020, two-step encoding + learned quantisation; and
BottleNet++ with --bottlenet): for a few encoder settings, trained end to end from the profile's base model, prints
the test accuracy, the bits per image of the real ANS bitstream beside the ideal (cross-entropy under the fitted
model), the empirical entropy and the fixed-length size, and the encoder's FLOPs against the whole network's.

Run: python bench/bench_encoding.py [--data PATH] [--profile smoke] [--split conv4_x] [--setting "d=16,bits=2" ...]
     [--epochs E] [--train-images N] [--test-images N] [--bottlenet]
A setting is comma-separated EncodingConfig fields (d, bits, quantizer, codebook, groups, channels, stride, lr,
backbone, warmup, encoder). The base model comes from the cache (trained first when missing)."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
if str(PROJECT_ROOT) not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT))

import pandas as pd  # noqa: E402
import torch  # noqa: E402

from engine.coding.encoders import feature_shape  # noqa: E402
from engine.coding.learned import EncodedTraining, EncodingConfig, train_encoded  # noqa: E402
from engine.data import load_data, subset  # noqa: E402
from engine.methods.bottlenet_pp import RATIOS, bottleneck_channels  # noqa: E402
from engine.models import split  # noqa: E402
from engine.paths import cache_dir  # noqa: E402
from engine.profile import count_flops  # noqa: E402
from engine.profiles import PROFILES  # noqa: E402
from engine.train import load_or_train_base  # noqa: E402

DEFAULT_DATA = PROJECT_ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
DEFAULT_SETTINGS = (
    "d=16,bits=2",
    "d=32,bits=2",
    "d=32,bits=1",
    "d=64,bits=1",
    "d=32,bits=2,quantizer=uniform",
    "d=32,quantizer=vector,codebook=256",
    "d=32,quantizer=vector,codebook=256,groups=4",
)


def parse_setting(text: str) -> dict[str, object]:
    """"d=16,bits=2,quantizer=vector" -> typed EncodingConfig fields."""
    types = {f.name: f.type for f in dataclasses.fields(EncodingConfig)}
    out: dict[str, object] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, _, value = part.partition("=")
        if key not in types:
            raise SystemExit(f"unknown setting {key!r}; known: {', '.join(types)}")
        kind = str(types[key])
        out[key] = int(value) if "int" in kind else float(value) if "float" in kind else value
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--profile", default="smoke")
    parser.add_argument("--split", default="conv4_x")
    parser.add_argument("--setting", action="append", help="EncodingConfig fields, repeatable")
    parser.add_argument("--epochs", type=int, help="encoder training epochs (default: the profile's budget)")
    parser.add_argument("--train-images", type=int, help="cap on training images (default: the profile's)")
    parser.add_argument("--test-images", type=int, help="cap on test images (default: the profile's)")
    parser.add_argument("--bottlenet", action="store_true", help="add BottleNet++ at its compression ratios")
    parser.add_argument("--threads", type=int, default=min(2, torch.get_num_threads()))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    profile = PROFILES.get(args.profile)
    full = load_data(args.data)
    limited = profile.train_limit or profile.test_limit
    base_data = subset(full, profile.train_limit, profile.test_limit) if limited else full
    base = profile.base_config(base_data.fingerprint)
    model, ckpt = load_or_train_base(base, base_data, cache_dir())
    train_limit = args.train_images or profile.train_limit
    test_limit = args.test_images or profile.test_limit
    data = subset(full, train_limit, test_limit) if train_limit or test_limit else full
    epochs = args.epochs or profile.encoding_epochs
    budget = EncodedTraining(epochs=epochs, batch_size=profile.batch_size, seed=base.seed,
                             val_fraction=base.val_fraction, calibration_images=profile.calibration_images,
                             label_smoothing=base.label_smoothing, precision=base.precision)
    input_shape = (data.channels, *data.image_size)
    device, server = split(model, args.split)
    shape = feature_shape(device, input_shape)
    whole = count_flops(model.eval(), torch.zeros(1, *input_shape))
    print(f"profile {profile.name}, base {base.id} (width {base.width:g}, test accuracy "
          f"{ckpt['metrics']['test_accuracy']:.2%} on its own test set), split {args.split}: feature {list(shape)}, "
          f"8-bit raw {8 * shape[0] * shape[1] * shape[2]:,} bits; whole network {whole / 1e6:.2f} MFLOPs.")
    print(f"encoder training: {epochs} epoch(s) on {len(data.train_y):,} images (10 % held out), measured on "
          f"{len(data.test_y):,} test images; ANS fitted on {profile.calibration_images:,} training images.")

    settings = [(s, parse_setting(s)) for s in (args.setting or DEFAULT_SETTINGS)]
    if args.bottlenet:
        settings += [(f"BottleNet++ ratio {r}", {"encoder": "bottleneck", "channels": bottleneck_channels(shape[0], r),
                                                 "stride": 2, "quantizer": "uniform", "bits": 8}) for r in RATIOS]
    rows = []
    for name, fields in settings:
        start = time.perf_counter()
        res = train_encoded(device, server, data, args.split, EncodingConfig(**fields), budget, time_device=False)
        m = res.metrics
        rows.append({
            "setting": name,
            "accuracy": f"{m['accuracy']:.2%}",
            "bits actual": f"{m['bits_actual']:,.1f}",
            "bits ideal": f"{m['bits_ideal']:,.1f}",
            "bits entropy": f"{m['bits_entropy']:,.1f}",
            "bits raw": f"{m['bits_raw']:,.0f}",
            "encoder kFLOPs": f"{m['encoder_flops'] / 1e3:,.1f}",
            "encoder %": f"{100 * m['encoder_flops_fraction']:.3f}",
            "enc+dec %": f"{100 * m['codec_flops_fraction']:.3f}",
            "seconds": f"{time.perf_counter() - start:.0f}",
        })
        print(f"  {name}: accuracy {m['accuracy']:.2%}, bits {m['bits_actual']:.1f} actual / {m['bits_ideal']:.1f} "
              f"ideal", file=sys.stderr)
    print()
    print(pd.DataFrame(rows).to_markdown(index=False))
    print()
    print("bits actual: mean length of the per-image ANS bitstreams (each decoded back and checked equal to the "
          "symbols sent); ideal: cross-entropy under the fitted model; entropy: sum of per-position empirical "
          "entropies of the test symbols; raw: fixed-length symbols. Encoder % is of the whole network's FLOPs.")


if __name__ == "__main__":
    main()
