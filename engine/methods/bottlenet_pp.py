"""`bottlenet_pp`: BottleNet++ (Shao & Zhang 2020, "BottleNet++: An End-to-End Approach for Feature Compression in
Device-Edge Co-Inference Systems", ICC workshops), the paper's third baseline (Shao & Zhang 2020, Fig. 3). The device
part is the unpruned base model up to the split; a conv encoder (channel reduction, kernel 2 / stride 2 spatial
reduction, BN, sigmoid) feeds an 8-bit uniform quantiser, and a transposed-conv decoder restores the feature on the
server; everything is trained end to end (backbone fine-tuned unless `enc_backbone` says otherwise).

Knob `ratio`: the element-count compression of the split feature, C*H*W / (c*H/2*W/2), so the encoder keeps
c = max(1, round(4 C / ratio)) channels; ratios that give the same c at a split are one variant. The 8-bit symbols
are ANS-coded with one model per latent channel fitted on training symbols (`bits_actual`); `bits_raw` is the
fixed-length 8 bits per latent element that BottleNet++ itself sends."""

from __future__ import annotations

import time

from engine.coding import Deployed
from engine.coding.encoders import feature_shape
from engine.coding.learned import EncodedResult, EncodingConfig, deploy_encoded, encoded_val_accuracy, run_encoded
from engine.config import BaseModelConfig, VariantConfig
from engine.errors import UserError
from engine.methods.base import METHODS, RunContext, base_row, check_knob_names, knob_number, refuse_end_points
from engine.models import END_POINTS, build_model, example_input, split
from engine.profiles import BOTTLENET_RATIOS, profile_of

RATIOS = BOTTLENET_RATIOS


def bottleneck_channels(feature_channels: int, ratio: float) -> int:
    """Channels the encoder keeps for an element-count compression `ratio` (stride 2 already gives 4)."""
    if not ratio > 0:
        raise ValueError(f"ratio must be > 0, got {ratio}")
    return max(1, round(4 * feature_channels / ratio))


class BottleNetPP:
    def variants(self, base: BaseModelConfig, splits: list[str]) -> list[VariantConfig]:
        """One variant per split and distinct encoder width among the profile's ratios; not at the end points."""
        model = build_model(base.model, base.width, 10, 3).eval()
        shape = tuple(example_input(model).shape[1:])
        profile = profile_of(base)
        ratios = profile.bottlenet_ratios
        out = []
        for s in splits:
            if s in END_POINTS:
                continue
            channels = feature_shape(split(model, s)[0], shape)[0]
            seen: set[int] = set()
            for r in ratios:
                c = bottleneck_channels(channels, r)
                if c not in seen:
                    seen.add(c)
                    out.append(VariantConfig.make("bottlenet_pp", s, base, ratio=r, **profile.encoding_knobs()))
        return out

    @staticmethod
    def encoding(cfg: VariantConfig, feature_channels: int) -> EncodingConfig:
        """BottleNet++'s encoder for a variant: c channels from `ratio`, stride 2, sigmoid, 8-bit uniform levels;
        `enc_*` knobs (backbone, epochs, lr, codec) apply on top."""
        channels = bottleneck_channels(feature_channels, float(cfg.knob("ratio", RATIOS[0])))
        return EncodingConfig.from_knobs(cfg.knobs, encoder="bottleneck", channels=channels, stride=2,
                                         quantizer="uniform", bits=8)

    def check(self, cfg: VariantConfig, profile: str) -> None:
        """`ratio` (> 0) and the `enc_*` knobs of the encoder."""
        check_knob_names(cfg, ["ratio"], ["enc_"])
        refuse_end_points(cfg, "encodes a split feature")
        ratio = knob_number("ratio", cfg.knob("ratio", RATIOS[0]), float, 0.0)
        if ratio == 0:
            raise UserError("knob ratio must be > 0, got 0")
        self.encoding(cfg, feature_channels=64)

    def run(self, cfg: VariantConfig, ctx: RunContext) -> dict:
        start = time.perf_counter()
        result, shape = self._trained(cfg, ctx)
        latent = result.metrics["symbols_per_image"]
        feature = shape[0] * shape[1] * shape[2]
        row = result.row()
        val = encoded_val_accuracy(result.model, ctx, cfg.base)
        return base_row(cfg, ctx, **row, deployed_val_accuracy=val, compression_ratio=feature / latent,
                        compression_ratio_bits=32 * feature / row["bits_actual"],
                        eval_seconds=time.perf_counter() - start)

    def deploy(self, cfg: VariantConfig, ctx: RunContext) -> Deployed:
        result, _ = self._trained(cfg, ctx)
        return deploy_encoded(result.model, result.codec)

    def _trained(self, cfg: VariantConfig, ctx: RunContext) -> tuple[EncodedResult, tuple[int, int, int]]:
        """The variant's trained (or cached) encoding between the unpruned parts, and the split feature's shape."""
        if cfg.split in END_POINTS:
            raise ValueError(f"bottlenet_pp encodes a split feature; {cfg.split!r} has none")
        model, _ = ctx.base(cfg.base)
        device, server = split(model, cfg.split)
        shape = feature_shape(device, (ctx.data.channels, *ctx.data.image_size))
        return run_encoded(cfg, ctx, device, server, enc=self.encoding(cfg, shape[0])), shape


METHODS.add("bottlenet_pp", BottleNetPP())
