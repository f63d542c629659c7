"""Times the vectorised Huffman encoder (and the decoder, image by image) on synthetic ReLU-like 8-bit features
(default: 10,000 images x 16,384 symbols, the largest split of a test-set evaluation).
Run: python -m bench.bench_codecs [--images N] [--dim D]."""

from __future__ import annotations

import argparse
import time

import numpy as np

from engine.entropy import CODECS, empirical_entropy_bits


def relu_like_symbols(images: int, dim: int, seed: int = 0) -> np.ndarray:
    """About half zeros (ReLU), the rest geometric-like small levels with a long tail, as uint8."""
    rng = np.random.default_rng(seed)
    out = np.empty((images, dim), dtype=np.uint8)
    for i in range(0, images, 500):  # in blocks, to bound the float temporaries
        block = rng.exponential(12.0, size=(min(500, images - i), dim))
        block[rng.random(block.shape) < 0.5] = 0.0
        out[i:i + 500] = np.minimum(np.round(block), 255)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=16_384)
    parser.add_argument("--codec", default="huffman")
    parser.add_argument("--fit-images", type=int, default=2_000)
    args = parser.parse_args()

    t0 = time.perf_counter()
    symbols = relu_like_symbols(args.images, args.dim)
    train = relu_like_symbols(args.fit_images, args.dim, seed=1)
    print(f"generated {symbols.size:,} test + {train.size:,} training symbols in {time.perf_counter() - t0:.1f} s")

    t0 = time.perf_counter()
    codec = CODECS.get(args.codec).fit(train, 256)
    print(f"fit {args.codec}: {time.perf_counter() - t0:.2f} s")

    t0 = time.perf_counter()
    streams = codec.encode(symbols)
    dt = time.perf_counter() - t0
    actual = np.array([8 * len(s) for s in streams])
    print(f"encode: {dt:.2f} s, {symbols.size / dt / 1e6:.1f} M symbols/s, {sum(map(len, streams)) / 1e6:.1f} MB")

    t0 = time.perf_counter()
    computed = codec.bits_per_image(symbols)
    print(f"bits_per_image: {time.perf_counter() - t0:.2f} s, equals encoded sizes: {bool((computed == actual).all())}")

    t0 = time.perf_counter()
    ideal = codec.ideal_bits_per_image(symbols)
    print(f"ideal_bits_per_image: {time.perf_counter() - t0:.2f} s")

    codec.decode(streams[0], args.dim)  # builds the decoder's tables
    times, exact = [], True
    for stream, row in zip(streams[:200], symbols[:200], strict=False):
        t0 = time.perf_counter()
        decoded = codec.decode(stream, args.dim)
        times.append(time.perf_counter() - t0)
        exact &= bool((decoded == row).all())
    print(f"decode, one image at a time (as a server does): median {1e3 * float(np.median(times)):.2f} ms per image "
          f"over {len(times)}, {args.dim / float(np.median(times)) / 1e6:.1f} M symbols/s, exact: {exact}")

    sample = symbols[: min(1000, len(symbols))]
    print(f"bits/image: actual {actual.mean():,.0f}, ideal {ideal.mean():,.0f}, raw {8 * args.dim:,}; "
          f"empirical entropy {empirical_entropy_bits(sample):.3f} bits/symbol (first {len(sample)} images)")


if __name__ == "__main__":
    main()
