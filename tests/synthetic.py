"""Hand-made result tables shared by tests of several kinds (no dataset)."""

from __future__ import annotations

W = 1e6


def synthetic_rows(base_id: str = "b0") -> list[dict]:
    """A hand-made Fig. 5 table: base 80 % test / 82 % validation, so thresholds 78 % / 80 % at a 2-point drop.
    The qualifying source-coding reference sends 24.5 bits with an ideal length of 14."""
    common = {"method": "three_step", "split": "conv4_x", "base_id": base_id, "base_test_accuracy": 0.80,
              "base_val_accuracy": 0.82, "png_bits": 18000.0, "device_flops": 1.0, "server_flops": 1.0}

    def jscc(channel: str, uses: int, conds: list[float], val: list[float], test: list[float]) -> dict:
        return {**common, "id": f"{channel}{uses}", "knobs": {"encoder": "jscc", "snapshot": "none",
                                                              "jscc_channel": channel, "jscc_uses": uses},
                "accuracy": test[0], "bits_actual": None, "curve_conditions": conds, "curve_val_accuracy": val,
                "curve_accuracy": test, "curve_accuracy_std": [0.01] * len(conds)}

    def source(d: int, bits: float, ideal: float, val: float, test: float) -> dict:
        return {**common, "id": f"sc{d}", "knobs": {"encoder": "jscc", "snapshot": "none", "jscc_channel": "none",
                                                    "jscc_uses": d, "jscc_bits": 1},
                "accuracy": test, "val_accuracy": val, "bits_actual": bits, "bits_ideal": ideal}

    snr = [0.0, 10.0, 20.0]
    p = [0.01, 0.1]
    return [
        jscc("awgn", 2, snr, [0.50, 0.79, 0.81], [0.50, 0.78, 0.80]),
        jscc("awgn", 8, snr, [0.75, 0.83, 0.84], [0.74, 0.82, 0.83]),
        jscc("awgn", 32, snr, [0.81, 0.84, 0.84], [0.80, 0.83, 0.83]),
        jscc("bsc", 16, p, [0.81, 0.79], [0.77, 0.77]),
        jscc("bsc", 64, p, [0.83, 0.81], [0.82, 0.80]),
        source(8, 10.0, 8.0, 0.78, 0.77),
        source(16, 24.5, 14.0, 0.81, 0.80),
        {**common, "id": "orig", "method": "original", "knobs": {"bits": 8}, "accuracy": 0.80,
         "bits_actual": 16000.0, "bits_ideal": 15000.0},
        {**common, "id": "pruned", "knobs": {"encoder": "jscc", "snapshot": 0, "jscc_channel": "awgn",
                                             "jscc_uses": 1}, "accuracy": 0.9, "curve_conditions": snr,
         "curve_val_accuracy": [1.0] * 3, "curve_accuracy": [1.0] * 3, "curve_accuracy_std": [0.0] * 3},
    ]


METHODS = ("original", "two_step_pruning", "bottlenet_pp", "three_step")
GOOD, BAD = 0.95, 0.50


def flipped_rows(base_id: str, **common: object) -> list[dict]:
    """Per method and split (conv3_x, conv4_x), a row good on validation only ("v-...") and a cheaper row good on
    test only ("t-..."): reading test accuracy instead of validation accuracy changes every choice. The base model:
    92 % validation, 55 % test."""
    rows = []
    for m, method in enumerate(METHODS):
        for s, split in enumerate(("conv3_x", "conv4_x")):
            flops = 1e8 * (1 + m + 2 * s)
            for kind, val, test, scale in (("v", GOOD, BAD, 1.0), ("t", BAD, GOOD, 0.5)):
                rows.append({"id": f"{kind}-{method}-{split}", "method": method, "split": split, "knobs": {"n": m},
                             "base_id": base_id, "base_val_accuracy": 0.92, "base_test_accuracy": 0.55,
                             "accuracy": test, "deployed_val_accuracy": val, "device_flops": flops * scale,
                             "server_flops": 1e8, "device_memory_bytes": 1e6, "bits_actual": 1e4 * scale * (1 + s),
                             "bits_ideal": 9e3 * scale * (1 + s), **common})
    return rows
