"""Every profile with all its budgets and grids, in one place: the base model's training recipe, each method's
default knobs, the Fig. 5 plan and the sweep grid. Methods, the sweep and the noisy-channel runner read their
budgets from here, keyed by profile name; nothing else holds a per-profile number."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from engine.config import BaseModelConfig, size_schedule
from engine.registry import Registry

# PruneBudget's knobs that a variant carries only when not at these values: added after variants were stored, so
# that those variants keep their ids
BUDGET_NEUTRAL: dict[str, Any] = {"distill": 0.0, "allocation": "uniform"}


@dataclass(frozen=True)
class PruneBudget:
    """`three_step`'s pruning run: `levels` snapshots, each `ramp_iterations` + `hold_iterations` mask iterations of
    `iteration_steps` fine-tuning steps (Shao & Zhang 2020's incremental pruning)."""

    target: float
    levels: int
    iteration_steps: int
    ramp_iterations: int
    hold_iterations: int
    lr: float
    batch_size: int
    distill: float = 0.0  # share of the distillation term in the fine-tuning loss (0: labels alone)
    # per-group targets: "uniform" (the paper's: every group to `target`) or "sensitivity" (chosen on validation
    # images for the same device FLOPs, `engine.prune.allocation`)
    allocation: str = "uniform"

    def knobs(self) -> dict[str, Any]:
        """The budget as variant knobs; `distill` and `allocation` only when not their defaults, so that variants of
        budgets without them keep their ids."""
        return {k: v for k, v in dataclasses.asdict(self).items()
                if k not in BUDGET_NEUTRAL or v != BUDGET_NEUTRAL[k]}


@dataclass(frozen=True)
class TwoStepBudget:
    """`two_step_pruning` (Shi et al. 2019): step-1 rounds shared by every split, then step 2 per split."""

    step1_levels: tuple[float, ...]
    step1_steps: int
    step2: float
    step2_steps: int
    lr: float
    batch_size: int

    def knobs(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Fig5Budget:
    """The variants of Fig. 5: JSCC channel uses per channel (each trained over the whole condition range), the
    source-coding reference's (d, bits), the evaluation grids, and the training budget."""

    awgn_uses: tuple[int, ...]
    bsc_bits: tuple[int, ...]
    source: tuple[tuple[int, int], ...]
    snr_db: tuple[float, ...]
    p: tuple[float, ...]
    epochs: int
    train_images: int | None
    realisations: int
    server: str = "train"  # JsccConfig.server: the server part fine-tuned with the decoder (at a tenth of its lr)
    batch_size: int = 256

    def conditions(self, channel: str) -> tuple[float, ...]:
        return self.snr_db if channel == "awgn" else self.p

    def uses(self, channel: str) -> tuple[int, ...]:
        return self.awgn_uses if channel == "awgn" else self.bsc_bits


@dataclass(frozen=True)
class MethodGrid:
    """The variants of one method in a sweep: its splits (None: the paper's split points) and knob values, each
    crossed with the variants the method itself proposes."""

    splits: tuple[str, ...] | None = None
    knobs: tuple[tuple[str, tuple[Any, ...]], ...] = ()

    @staticmethod
    def of(splits: Iterable[str] | None = None, **knobs: Iterable[Any]) -> MethodGrid:
        return MethodGrid(None if splits is None else tuple(splits),
                          tuple(sorted((k, tuple(v)) for k, v in knobs.items())))


@dataclass(frozen=True)
class Grid:
    """A profile's sweep: the grid of each named method, and `default` for any other registered method."""

    profile: str
    default: MethodGrid = field(default_factory=MethodGrid)
    methods: tuple[tuple[str, MethodGrid], ...] = ()

    def for_method(self, name: str) -> MethodGrid:
        return dict(self.methods).get(name, self.default)


@dataclass(frozen=True)
class SearchSpace:
    """What a search (`python -m engine search`) chooses among for `three_step` beside the split point: each a
    categorical axis, so that trials that share a pruning run share its checkpoint and a configuration measured before
    (by the grid or another study) is read from the results store, not trained again. A pruning run is (target, hold)
    with the budget's other knobs; its variants pick a snapshot level (or none: unpruned) and a coding."""

    targets: tuple[float, ...] = ()  # the run's channel sparsity at its last level (): the budget's target only
    holds: tuple[int, ...] = ()  # iterations each level holds its sparsity while fine-tuning (): the budget's
    outputs: tuple[float, ...] = ()  # activation-pruning targets of the split output besides the body's
    bits: tuple[int, ...] = (8, 4)  # uniform quantisation + Huffman
    enc_d: tuple[int, ...] = (16, 32)  # the two-step encoder's channels ...
    enc_bits: tuple[int, ...] = (1, 2)  # ... and its scalar quantiser's bits
    codebooks: tuple[int, ...] = (16,)  # codewords of the learned vector codebook
    # how else a learned encoder may train besides the profile's own setting, (epochs, backbone) as in
    # `Profile.encoding_knobs`: the grid crosses its codings at a cheap setting, so a search that may choose it reads
    # the grid's rows from the results store
    enc_training: tuple[tuple[int, str], ...] = ()


BOTTLENET_RATIOS = (16, 64, 256)  # BottleNet++'s element-count compression ratios


def codings(*knob_sets: dict[str, Any]) -> tuple[tuple[tuple[str, Any], ...], ...]:
    """Knob sets of codings, frozen for a profile (`Profile.codings`)."""
    return tuple(tuple(sorted(k.items())) for k in knob_sets)


@dataclass(frozen=True)
class Profile:
    """A training/evaluation budget: smoke (tests, seconds), quick (CPU default), quick-bf16 (quick on a CPU with
    native bf16), paper-cpu (the paper's width on a CPU with native bf16), paper (GPU). Besides the base model's
    recipe it holds every method's budget and the sweep grid."""

    name: str
    width: float
    epochs: int
    batch_size: int
    lr: float
    prune: PruneBudget
    two_step: TwoStepBudget
    fig5: Fig5Budget
    grid: Grid
    train_limit: int | None = None  # cap on training images (before the validation split)
    test_limit: int | None = None  # cap on test images for reported figures
    calibration_images: int = 2000  # training images used to fit quantisers and entropy models
    encoding_epochs: int = 1  # training epochs of a learned feature encoder (the `enc_epochs` knob of its variants)
    # what trains with the encoder (the `enc_backbone` knob): "finetune" both parts; "server" keeps the device part
    # frozen, so its features are computed once and only the encoder, decoder and server part train on them
    encoding_backbone: str = "finetune"
    bottlenet_ratios: tuple[int, ...] = BOTTLENET_RATIOS
    # the codings `three_step` crosses with every pruning snapshot that holds its threshold, and with the unpruned
    # split (the paper's brute force over split, sparsity and compression); each a set of knobs
    codings: tuple[tuple[tuple[str, Any], ...], ...] = ()
    # activation-pruning targets of the split output (`three_step`'s `output` knob), each a pruning run of its own
    # beside the budget's, where the transmitted channels are pruned harder than the body
    output_sparsities: tuple[float, ...] = ()
    scales: tuple[float, ...] = ()  # progressive resizing of the base model (BaseModelConfig.scales); one per epoch
    precision: str = "auto"  # training precision (BaseModelConfig.precision)
    ema: float = 0.0  # weight averaging of the base model (BaseModelConfig.ema): 0 none
    budgets: str = ""  # the profile whose budgets this one shares (its name keys them); "" for this one's own
    search: SearchSpace = field(default_factory=SearchSpace)  # what a search chooses among

    @property
    def budget_name(self) -> str:
        """The name under which this profile's method budgets and sweep grid are known."""
        return self.budgets or self.name

    def uniform_bits(self) -> list[int]:
        """The bit depths of the uniform + Huffman codings this profile crosses (`codings` with encoder "none")."""
        return sorted({int(dict(c).get("bits", 8)) for c in self.codings if dict(c).get("encoder") == "none"})

    def encoding_knobs(self) -> dict[str, int | str]:
        """The knobs a learned encoder's variants carry for this profile's budget."""
        return {"enc_epochs": self.encoding_epochs, "enc_backbone": self.encoding_backbone}

    def base_config(self, dataset: str, *, width: float | None = None, seed: int = 0, model: str = "resnet18",
                    weights: str = "", weights_path: str = "") -> BaseModelConfig:
        """The base model this profile trains on `dataset` (a data fingerprint), recording the profile's name.

        Args:
            dataset: the data's fingerprint; width, seed: the model's width multiplier (None: the profile's) and
            seed; model: a model reference (`engine.models.model_factory`); weights, weights_path: the sha256 and
            path of trained weights to start from ("": train the base model).
        Returns:
            the base model's config.
        """
        return BaseModelConfig(
            model=model,
            weights=weights,
            weights_path=weights_path,
            dataset=dataset,
            width=self.width if width is None else width,
            seed=seed,
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            scales=self.scales,
            precision=self.precision,
            ema=self.ema,
            profile=self.name,
        )


PROFILES: Registry[Profile] = Registry("profile")

# smoke: seconds per variant (tests); the sweep covers the end points and one mid split.
PROFILES.add("smoke", Profile(
    "smoke", width=0.125, epochs=1, batch_size=128, lr=0.1, train_limit=1200, test_limit=400, calibration_images=200,
    encoding_epochs=1, encoding_backbone="server",
    codings=codings({"encoder": "none", "bits": 4}, {"encoder": "two_step", "enc_d": 8, "enc_bits": 1}),
    prune=PruneBudget(0.5, levels=3, iteration_steps=2, ramp_iterations=1, hold_iterations=1, lr=0.02, batch_size=64),
    two_step=TwoStepBudget((0.25, 0.5), step1_steps=4, step2=0.5, step2_steps=3, lr=0.02, batch_size=64),
    fig5=Fig5Budget(awgn_uses=(2, 8), bsc_bits=(8, 32), source=((8, 1), (16, 2)), snr_db=(0.0, 10.0), p=(0.02, 0.1),
                    epochs=1, train_images=None, realisations=2, server="frozen"),
    grid=Grid("smoke", MethodGrid.of(["conv4_x"]),
              (("original", MethodGrid.of(["server_only", "conv4_x", "device_only"])),)),
    search=SearchSpace(outputs=(0.8,), bits=(8, 4), enc_d=(8, 32), enc_bits=(1, 2), codebooks=(16,)),
))
# quick: width 0.25 in 11-15 minutes on 2 CPU cores (BENCHMARKS.md), with progressive resizing: 8 epochs each at
# half, three quarters and all of the data's size (16, 24 and 32 pixels on CIFAR-10), one one-cycle schedule over
# the 24. Pruning: 2 levels x 1,024 steps of 128 images per split to channel sparsity 0.16 and 0.32, each group's
# target chosen from its measured sensitivity for the FLOPs the uniform target would give (at conv4_x 1.39x and
# 2.13-2.17x fewer device FLOPs; about 6 min per run on 2 threads): the earlier 3 levels x 256 steps to 0.48 left
# 2.10x at 4 points below the base, this one holds 2x within 2 (BENCHMARKS.md, "Per-group targets"); labels only
# (distillation did not help); each level fine-tuned from lr 0.04 down a cosine (Renda et al. 2020's point that
# fine-tuning at a larger rate recovers more: at 0.01 the 2x level sat on the threshold, at 0.04 it held by a point,
# BENCHMARKS.md "The grid in bf16 with the three changes"). 2-step pruning: 2 rounds x 120 steps shared by all
# splits, then 40 steps per split and round; BottleNet++: two ratios. Learned encoders (BottleNet++'s too) train 4
# epochs with the whole model fine-tuned: the recipe under which a 2x pruned snapshot coded at d = 32, 2 bits held
# the threshold, where 2 epochs on a frozen device part lost 1.2-1.6 points. Fig. 5: about 2.5 min per model on 2
# cores, trained on every training image's cached features. The sweep covers every coarse split point of every
# method; it crosses the holding snapshots and the unpruned split with 4-bit + Huffman, the two-step encoder at
# d = 16, 2 bits at the cheap setting (2 epochs on the frozen device part's cached features) and a 16-codeword
# codebook in 2 epochs with the whole model fine-tuned (on the frozen device part a 4-bit code reached the threshold
# at conv4_x only in 4 epochs, by 0.04 points; fine-tuned, 2 epochs hold by 0.36), so that the crossing costs
# minutes, not hours.
CHEAP_ENCODING = {"enc_epochs": 2, "enc_backbone": "server"}
CODEBOOK_ENCODING = {"enc_epochs": 2, "enc_backbone": "finetune"}
PROFILES.add("quick", Profile(
    "quick", width=0.25, epochs=24, batch_size=128, lr=0.15, encoding_epochs=4, encoding_backbone="finetune",
    scales=size_schedule((0.5, 8), (0.75, 8), (1.0, 8)), bottlenet_ratios=(64, 256),
    codings=codings({"encoder": "none", "bits": 4},
                    {"encoder": "two_step", "enc_d": 16, "enc_bits": 2, **CHEAP_ENCODING},
                    {"encoder": "two_step", "enc_quantizer": "vector", "enc_codebook": 16, **CODEBOOK_ENCODING}),
    output_sparsities=(0.8,),
    prune=PruneBudget(0.32, levels=2, iteration_steps=16, ramp_iterations=2, hold_iterations=62, lr=0.04,
                      batch_size=128, allocation="sensitivity"),
    # a search: runs to 0.32 or 0.48 with 30 or 62 held iterations per level, the output at 0.8 or 0.9 or as the
    # body; codings at 8, 4 or 2 bits, the two-step encoder at d = 8, 16, 32 and 1 or 2 bits, codebooks of 16 to 256,
    # a learned encoder trained at the profile's setting or either of the crossing's
    search=SearchSpace(targets=(0.32, 0.48), holds=(30, 62), outputs=(0.8, 0.9), bits=(8, 4, 2), enc_d=(8, 16, 32),
                       enc_bits=(1, 2), codebooks=(16, 64, 256),
                       enc_training=tuple((e["enc_epochs"], e["enc_backbone"]) for e in (CHEAP_ENCODING,
                                                                                           CODEBOOK_ENCODING))),
    two_step=TwoStepBudget((0.25, 0.5), step1_steps=120, step2=0.5, step2_steps=40, lr=0.01, batch_size=128),
    fig5=Fig5Budget(awgn_uses=(4, 8, 16, 32), bsc_bits=(16, 32, 64, 128), source=((8, 1), (16, 2), (32, 2)),
                    snr_db=(0.0, 10.0, 20.0), p=(0.01, 0.1, 0.2), epochs=2, train_images=None, realisations=2,
                    batch_size=128),
    grid=Grid("quick"),
))
# quick-bf16: the quick recipe and budgets under bf16 autocast, for a CPU with native bf16 (AVX-512 BF16 or AMX),
# where it trains about 1.6x faster at the same accuracy (BENCHMARKS.md); elsewhere slower than quick
PROFILES.add("quick-bf16", dataclasses.replace(PROFILES.get("quick"), name="quick-bf16", precision="bf16",
                                               budgets="quick"))
# paper-cpu: the paper's model (width 1.0) on a CPU with native bf16 (AVX-512 BF16 or AMX), its base model in about
# an hour on 2 cores with AMX (56-61 min; BENCHMARKS.md, "Width 1.0 on a CPU"): 13 one-cycle epochs at full size
# (16 mostly low-resolution epochs reached the same validation accuracy, 87.7 against 87.4 %, in more minutes),
# batch 128 at lr 0.15 as quick, with a moving average of the weights kept where it scores higher on validation:
# 87.4 % test, short of the paper's 95 % (the model underfits in 13 passes). Without AMX it takes longer: about 97
# minutes with AVX-512 BF16 only, 127 in fp32. The budgets are quick's shape scaled to a model 16x the FLOPs:
# pruning runs of 2 levels x 512 steps (about 3 epochs in all) to channel sparsity 0.25 and 0.5 (a wide model has
# more channels to spare; the paper prunes its own to 0.75), learned encoders and Fig. 5's models 1-2 epochs on
# cached features, so that the crossed grid takes hours, not days, and resumes across interruptions (the queue)
PROFILES.add("paper-cpu", Profile(
    "paper-cpu", width=1.0, epochs=13, batch_size=128, lr=0.15, precision="bf16", ema=0.999, encoding_epochs=2,
    encoding_backbone="server", bottlenet_ratios=(64, 256),
    codings=codings({"encoder": "none", "bits": 4},
                    {"encoder": "two_step", "enc_d": 16, "enc_bits": 2, **CHEAP_ENCODING},
                    {"encoder": "two_step", "enc_quantizer": "vector", "enc_codebook": 16, **CHEAP_ENCODING}),
    output_sparsities=(0.85,),
    prune=PruneBudget(0.5, levels=2, iteration_steps=16, ramp_iterations=2, hold_iterations=30, lr=0.04,
                      batch_size=128, allocation="sensitivity"),
    search=SearchSpace(targets=(0.5, 0.75), holds=(14, 30), outputs=(0.85, 0.95), bits=(8, 4, 2), enc_d=(8, 16, 32),
                       enc_bits=(1, 2), codebooks=(16, 64, 256),
                       enc_training=((CHEAP_ENCODING["enc_epochs"], CHEAP_ENCODING["enc_backbone"]),)),
    two_step=PROFILES.get("quick").two_step,  # Shi et al.'s baseline at quick's budget
    fig5=Fig5Budget(awgn_uses=(4, 16, 64), bsc_bits=(16, 64, 256), source=((16, 2), (32, 2)),
                    snr_db=(0.0, 10.0, 20.0), p=(0.01, 0.1, 0.2), epochs=1, train_images=None, realisations=2,
                    batch_size=128),
    grid=Grid("paper-cpu"),
))
# paper: the paper's model (width 1.0) in its ~95 % regime on one GPU: 60 one-cycle epochs at batch 512 (lr scaled
# linearly from 0.1 at 128); pruning with the paper code's 150-step mask iterations; the full Fig. 5 grid
PROFILES.add("paper", Profile(
    "paper", width=1.0, epochs=60, batch_size=512, lr=0.4, encoding_epochs=60,
    codings=codings({"encoder": "none", "bits": 4}, {"encoder": "two_step", "enc_d": 16, "enc_bits": 1},
                    {"encoder": "two_step", "enc_d": 32, "enc_bits": 2}, {"encoder": "two_step", "enc_d": 64,
                                                                         "enc_bits": 2},
                    {"encoder": "two_step", "enc_quantizer": "vector", "enc_codebook": 16},
                    {"encoder": "two_step", "enc_quantizer": "vector", "enc_codebook": 256}),
    output_sparsities=(0.85, 0.95),
    search=SearchSpace(targets=(0.5, 0.75, 0.9), holds=(4, 8), outputs=(0.85, 0.95), bits=(8, 4, 2),
                       enc_d=(8, 16, 32, 64), enc_bits=(1, 2), codebooks=(16, 256)),
    prune=PruneBudget(0.75, levels=5, iteration_steps=150, ramp_iterations=4, hold_iterations=4, lr=0.01,
                      batch_size=128),
    two_step=TwoStepBudget((0.25, 0.5, 0.75), step1_steps=1500, step2=0.5, step2_steps=600, lr=0.01, batch_size=128),
    fig5=Fig5Budget(awgn_uses=(1, 2, 4, 8, 16, 32, 64), bsc_bits=(4, 8, 16, 32, 64, 128, 256),
                    source=((4, 1), (8, 1), (8, 2), (16, 1), (16, 2), (32, 2), (64, 2)),
                    snr_db=(-5.0, 0.0, 5.0, 10.0, 15.0, 20.0), p=(0.0, 0.01, 0.05, 0.1, 0.15, 0.2, 0.3),
                    epochs=30, train_images=None, realisations=10),
    grid=Grid("paper"),
))


def recipe_of(base: BaseModelConfig) -> str | None:
    """The profile whose recipe, for the base model's data, model, weights, width and seed, is exactly `base`.

    Args:
        base: a base model's config.
    Returns:
        the profile's name, or None when no profile trains it.
    """
    return next((n for n in PROFILES if PROFILES.get(n).base_config(
        base.dataset, width=base.width, seed=base.seed, model=base.model, weights=base.weights,
        weights_path=base.weights_path) == base), None)


def profile_of(base: BaseModelConfig) -> Profile:
    """The profile a base model was trained for: the one its config records; for a config saved before profiles
    were recorded, the one whose training budget it matches (quick when none does).

    Args:
        base: the base model's config.
    Returns:
        the profile whose budgets its variants follow.
    """
    if base.profile:
        return PROFILES.get(base.profile)
    for name in PROFILES:
        p = PROFILES.get(name)
        if (p.epochs, p.batch_size, p.lr, p.scales, p.precision, p.ema) == \
                (base.epochs, base.batch_size, base.lr, base.scales, base.precision, base.ema):
            return p
    return PROFILES.get("quick")
