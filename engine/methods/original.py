"""`original`: the unmodified network with split-point selection only, the paper's first baseline (Shao & Zhang
2020, Fig. 3). The feature is quantised to 8 bits uniformly (range calibrated on training features) and
Huffman-coded with a code built from training features, as in the paper's comparison."""

from __future__ import annotations

import math
import time

import torch
from torch import nn

from engine.coding import FEATURE_CODINGS, Deployed
from engine.config import BaseModelConfig, VariantConfig
from engine.entropy import empirical_entropy_bits
from engine.methods.base import METHODS, Chooser, RunContext, base_row, check_knob_names, knob_number
from engine.models import END_POINTS, split
from engine.profile import label_bits, profile_split
from engine.profiles import profile_of
from engine.train import predict


class Original:
    bits = 8

    def variants(self, base: BaseModelConfig, splits: list[str]) -> list[VariantConfig]:
        """8-bit + Huffman at every split, then at the inner splits each other uniform bit depth `three_step`
        crosses its snapshots with (the profile's codings), so a split's comparison is not one of quantisation
        alone; the end points send the PNG or the label, whatever the depth."""
        depths = [d for d in profile_of(base).uniform_bits() if d != self.bits]
        return ([VariantConfig.make("original", s, base, bits=self.bits) for s in splits]
                + [VariantConfig.make("original", s, base, bits=d) for d in depths for s in splits
                   if s not in END_POINTS])

    def suggest(self, chooser: Chooser, base: BaseModelConfig, split: str) -> VariantConfig:
        """A search's choice at `split`: the uniform bit depth among the profile's search space (`SearchSpace.bits`);
        the end points have none to choose."""
        if split in END_POINTS:
            return VariantConfig.make("original", split, base, bits=self.bits)
        bits = chooser.suggest_categorical("original.bits", sorted(profile_of(base).search.bits, reverse=True))
        return VariantConfig.make("original", split, base, bits=int(bits))

    def check(self, cfg: VariantConfig, profile: str) -> None:
        """One knob: `bits` of the uniform quantiser (1 to 16)."""
        check_knob_names(cfg, ["bits"])
        knob_number("bits", cfg.knob("bits", self.bits), int, 1, 16)

    def run(self, cfg: VariantConfig, ctx: RunContext) -> dict:
        start = time.perf_counter()
        model, _ = ctx.base(cfg.base)
        data = ctx.data
        input_shape = (data.channels, *data.image_size)
        prof = profile_split(model, cfg.split, input_shape, data.num_classes)
        if cfg.split in ("server_only", "device_only"):
            preds = predict(model, data.test_x, data.mean, data.std)
            acc = float((preds == data.test_y).float().mean())
            val_x, val_y = ctx.validation_images(cfg.base)
            val = float((predict(model, val_x, data.mean, data.std) == val_y).float().mean())
            if cfg.split == "server_only":
                png = ctx.png_bits()
                bits = {"bits_actual": png, "bits_ideal": png, "bits_raw": 8 * math.prod(input_shape)}
            else:  # what the protocol carries (the label in ceil(log2 classes) bits), the ideal log2(classes) beside it
                bits = {"bits_actual": float(label_bits(data.num_classes)), "bits_ideal": math.log2(data.num_classes),
                        "bits_raw": float(label_bits(data.num_classes)),
                        "bits_entropy": empirical_entropy_bits(preds.numpy())}
        else:
            acc, val, bits = self._measure_feature_coding(cfg, ctx)
        return base_row(cfg, ctx, accuracy=acc, deployed_val_accuracy=val, eval_seconds=time.perf_counter() - start,
                        **prof, **bits)

    @staticmethod
    def _measure_feature_coding(cfg: VariantConfig, ctx: RunContext) -> tuple[float, float, dict]:
        """Quantise and Huffman-code the split's feature for every test image (the coding "none" on the unpruned
        parts); test and validation accuracy from the decoded feature."""
        model, _ = ctx.base(cfg.base)
        coded = FEATURE_CODINGS.get("none").measure(*split(model, cfg.split), cfg, ctx)
        return coded.accuracy, coded.val_accuracy, {**coded.bits, **coded.extra}


    def deploy(self, cfg: VariantConfig, ctx: RunContext) -> Deployed:
        """The base model cut at the split, 8-bit + Huffman; the end points send the input PNG or the label."""
        model, _ = ctx.base(cfg.base)
        model = model.eval()
        if cfg.split == "server_only":
            return Deployed(None, model, "png")
        if cfg.split == "device_only":
            classes = ctx.data.num_classes
            return Deployed(_Label(model), OneHotLogits(classes), "label", symbols_per_image=1, alphabet_size=classes)
        device, server = split(model, cfg.split)
        return FEATURE_CODINGS.get("none").deploy(device, server, cfg, ctx)


class _Label(nn.Module):
    """device_only: the whole model on the device, sending its predicted label [B, 1]."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).argmax(1, keepdim=True)


class OneHotLogits(nn.Module):
    """device_only's server (and the null session's): the received label [B, 1] as one-hot logits."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        self.classes = classes

    def forward(self, label: torch.Tensor) -> torch.Tensor:
        return nn.functional.one_hot(label[:, 0].long(), self.classes).float()


METHODS.add("original", Original())
