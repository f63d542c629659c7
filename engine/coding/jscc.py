"""Learning-driven joint source-channel coding (JSCC) at a split (Shao & Zhang 2020, Sec. "Performance of
Learning-Driven JSCC over Noisy Channels"): the two-step encoder's d outputs go straight into a non-trainable channel
layer (`engine.coding.channels`: k = d/2 complex AWGN uses, or n = d bits through a BSC), then the decoder and the
server part; its reference, learned source coding, puts learned codewords and an entropy coder in the channel's
place. The device part stays frozen: its split features are computed once and cached, and accuracy over a channel is
the mean over seeded realisations at each condition of the mismatch curve."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import inspect
import logging
import math
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from engine.coding.base import CodedSplit, CodingEnv, Deployed, FeatureCoding, NotTrained, register_coding
from engine.coding.channels import CHANNELS, Channel, build_channel
from engine.coding.encoders import ENCODERS, EncodedSplit, feature_shape
from engine.coding.learned import deploy_encoded, frozen_features
from engine.coding.quantizers import ScalarCodebook
from engine.config import MAX_EPOCHS, VariantConfig, config_from_knobs, config_id
from engine.data import ImageData, train_val_split
from engine.entropy import CODECS, EntropyCodec, decode_payload, empirical_entropy_bits, encode_payloads
from engine.errors import UserError
from engine.profiles import PROFILES, profile_of
from engine.provenance import training_environment
from engine.train import seeded
from engine.training import (
    Hooks,
    Loop,
    Optimizer,
    Progress,
    Scheduler,
    load_checkpoint,
    pick_device,
    run_loop,
    save_checkpoint,
)

log = logging.getLogger(__name__)

KNOB_PREFIX = "jscc_"
NOISELESS = "none"  # channel knob of the separate-coding reference: learned source coding, ideal channel coding
DEFAULT_GRIDS: dict[str, tuple[float, ...]] = {"awgn": (0.0, 5.0, 10.0, 15.0, 20.0),
                                               "bsc": (0.01, 0.05, 0.1, 0.15, 0.2)}
FEATURE_DIR = "features"
_EVAL_BATCH = 1000
_INIT_IMAGES = 2048
_T = 2.0  # distillation temperature
MAX_USES = 1 << 16  # channel uses (or bits, or latent dimensions) per image: past any split's feature size


# ------------------------------------------------------------------------------------------------------ config


@dataclass(frozen=True)
class JsccConfig:
    """Knobs of a JSCC variant (prefix `jscc_`). `uses`: complex channel uses k (AWGN), bits n (BSC), or latent
    dimensions d of the source-coding reference (`channel="none"`, `bits` learned codewords per dimension)."""

    channel: str = "awgn"  # a CHANNELS name, or "none"
    uses: int = 16
    bits: int = 2  # channel "none": bits per latent dimension (2**bits learned codewords)
    condition: float | None = None  # nominal SNR (dB) / p: trained at it without a range, `accuracy` reported at it
    train_range: tuple[float, float] | None = None  # draw each training image's SNR / p uniformly from this range
    eval_conditions: tuple[float, ...] | None = None  # the mismatch curve; None: DEFAULT_GRIDS of the channel
    realisations: int = 3  # seeded channel realisations per evaluation
    channels: int | None = None  # encoder conv channels; None: a quarter of the feature's
    server: str = "frozen"  # frozen | train (the server part fine-tuned with the decoder)
    epochs: int = 2
    train_images: int | None = None  # training images whose features train the coder; None: all
    batch_size: int = 256
    lr: float = 3e-3
    distill: float = 0.5  # weight of distillation from the uncoded split's logits (Hinton et al. 2015); 0: CE only
    codec: str = "ans"  # channel "none": the entropy coder

    def __post_init__(self) -> None:
        if self.channel != NOISELESS and self.channel not in CHANNELS:
            raise UserError(f"unknown channel {self.channel!r}; choose one of: {', '.join(CHANNELS)}, none")
        if not (1 <= self.uses <= MAX_USES and 1 <= self.realisations <= 1000 and 1 <= self.epochs <= MAX_EPOCHS
                and 1 <= self.batch_size <= 1 << 16 and 0 < self.lr < math.inf):
            raise UserError(f"jscc needs uses from 1 to {MAX_USES:,}, realisations 1 to 1,000, epochs 1 to "
                            f"{MAX_EPOCHS:,}, batch size 1 to 65,536 and a finite lr > 0")
        if not 0.0 <= self.distill <= 1.0:
            raise UserError(f"jscc distill is a weight in [0, 1], got {self.distill}")
        if self.server not in ("frozen", "train"):
            raise UserError(f"jscc server must be 'frozen' or 'train', got {self.server!r}")
        if self.train_images is not None and self.train_images < 1:
            raise UserError(f"jscc train_images must be >= 1, got {self.train_images}")
        if self.channel == NOISELESS:
            if self.codec not in CODECS:
                raise UserError(f"unknown codec {self.codec!r}; choose one of: {', '.join(CODECS)}")
            ScalarCodebook(1, self.bits)  # validates bits
        else:
            cls = CHANNELS.get(self.channel)
            for c in (self.nominal, *(self.train_range or ()), *self.grid):
                cls.check_condition(float(c))

    @property
    def nominal(self) -> float:
        if self.channel == NOISELESS:
            return math.nan
        return float(CHANNELS.get(self.channel).default_condition if self.condition is None else self.condition)

    @property
    def grid(self) -> tuple[float, ...]:
        """The conditions of the mismatch curve (the nominal one included)."""
        if self.channel == NOISELESS:
            return ()
        grid = self.eval_conditions if self.eval_conditions is not None else DEFAULT_GRIDS.get(self.channel, ())
        return tuple(sorted({float(c) for c in (*grid, self.nominal)}))

    @classmethod
    def from_knobs(cls, knobs: Mapping[str, Any] | Iterable[tuple[str, Any]], prefix: str = KNOB_PREFIX,
                   **defaults: Any) -> JsccConfig:
        """The config from a variant's `jscc_*` knobs (others ignored); `defaults` fill the rest."""
        return config_from_knobs(cls, knobs, prefix, "jscc", **defaults)

    def knobs(self, prefix: str = KNOB_PREFIX) -> dict[str, Any]:
        """Every field as a `jscc_*` knob (the config is recorded whole in the row)."""
        return {prefix + f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def training_key(self) -> dict[str, Any]:
        """The fields that decide the trained model (evaluation knobs excluded)."""
        skip = {"eval_conditions", "realisations"} | ({"condition"} if self.train_range is not None else set())
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in skip}


# ------------------------------------------------------------------------------------------------------ features


@dataclass
class SplitFeatures:
    """Split features (float16) and labels of the training subset, the validation and the test images."""

    train_x: Tensor
    train_y: Tensor
    val_x: Tensor
    val_y: Tensor
    test_x: Tensor
    test_y: Tensor
    key: str


def module_fingerprint(module: nn.Module) -> str:
    """SHA-256 (16 hex digits) of a module's structure and weights: which device part computed the features."""
    h = hashlib.sha256(repr(module).encode())
    for name, value in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def split_features(device: nn.Module, data: ImageData, val_fraction: float, seed: int,
                   train_images: int | None = None, cache: Path | None = None,
                   progress: Progress | None = None) -> SplitFeatures:
    """The frozen device part's features of the first `train_images` training images (the seeded order of
    `train_val_split`), of the validation and of the test images; cached under `<cache>/features/`."""
    train_x, train_y, val_x, val_y = train_val_split(data, val_fraction, seed)
    if train_images is not None:
        train_x, train_y = train_x[:train_images], train_y[:train_images]
    key = config_id({"data": data.fingerprint, "val_fraction": val_fraction, "seed": seed, "train": len(train_y),
                     "device": module_fingerprint(device), "test": len(data.test_y)})
    path = cache / FEATURE_DIR / f"{key}.pt" if cache is not None else None
    if path is not None and (hit := load_checkpoint(path)) is not None:
        return SplitFeatures(**hit, key=key)
    start = time.perf_counter()
    dev = pick_device()
    part = copy.deepcopy(device).to(dev).eval()
    mean, std = data.mean.to(dev), data.std.to(dev)
    if progress:
        progress(0.0, f"split features of {len(train_y) + len(val_y) + len(data.test_y)} images")
    feats = {"train_x": frozen_features(part, train_x.to(dev), mean, std).cpu(), "train_y": train_y.clone(),
             "val_x": frozen_features(part, val_x.to(dev), mean, std).cpu(), "val_y": val_y.clone(),
             "test_x": frozen_features(part, data.test_x.to(dev), mean, std).cpu(), "test_y": data.test_y.clone()}
    log.info("split features %s computed in %.1f s", key, time.perf_counter() - start)
    if path is not None:
        save_checkpoint(feats, path)
    return SplitFeatures(**feats, key=key)


# ------------------------------------------------------------------------------------------------------ model


def build_jscc(device: nn.Module, server: nn.Module, input_shape: tuple[int, int, int], jc: JsccConfig,
               seed: int = 0) -> EncodedSplit:
    """The two-step encoder sized to the channel (d = uses x reals per use), the channel layer (or, for
    `channel="none"`, learned scalar codewords) and the complementary decoder, around the given parts."""
    shape = feature_shape(device, input_shape)
    if jc.channel == NOISELESS:
        encoder, decoder = ENCODERS.get("two_step")(shape, jc.channels, jc.uses, None)
        return EncodedSplit(device, encoder, ScalarCodebook(jc.uses, jc.bits), decoder, server)
    channel = build_channel(jc.channel, jc.nominal, jc.train_range, seed)
    encoder, decoder = ENCODERS.get("two_step")(shape, jc.channels, jc.uses * channel.reals_per_use, None)
    return EncodedSplit(device, encoder, None, decoder, server, channel)


def _channel(model: EncodedSplit) -> Channel | None:
    return model.channel if isinstance(model.channel, Channel) else None


def _f32(x: Tensor, dev: torch.device) -> Tensor:
    return x.to(dev, torch.float32, non_blocking=True).contiguous(memory_format=torch.channels_last)


class _JsccTraining(Hooks):
    """`train_jscc`'s hooks: AdamW with a one-cycle LR over cached features, CE mixed with distillation from the
    uncoded features' logits, the reference's codewords placed at the warm-up step, channel noise from `seed`."""

    def __init__(self, model: EncodedSplit, feats: SplitFeatures, jc: JsccConfig, seed: int, label_smoothing: float,
                 dev: torch.device, steps_per_epoch: int) -> None:
        self.model, self.feats, self.jc, self.seed, self.dev = model, feats, jc, seed, dev
        self.steps_per_epoch = steps_per_epoch
        self.train_server = jc.server == "train"
        self.loss_fn = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        # the reference trains unquantised for its first fifth
        self.warmup = int(0.2 * jc.epochs * steps_per_epoch) if model.quantizer is not None else -1

    def build(self) -> tuple[nn.Module, Optimizer, Scheduler]:
        model, jc = self.model, self.jc
        model.to(self.dev)
        self.teacher = _teacher_logits(model.server_part, self.feats.train_x, self.dev) if jc.distill > 0 else None
        model.device_part.requires_grad_(False)
        model.server_part.requires_grad_(self.train_server)
        params = [*model.encoder.parameters(), *model.decoder.parameters()]
        if model.quantizer is not None:
            params += list(model.quantizer.parameters())
        groups = [{"params": params, "lr": jc.lr}]
        if self.train_server:  # the pretrained server part moves at a tenth of the coder's rate
            groups.append({"params": list(model.server_part.parameters()), "lr": jc.lr / 10})
        optimizer = torch.optim.AdamW(groups, weight_decay=1e-4)
        scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=[g["lr"] for g in groups],
                                                        total_steps=jc.epochs * self.steps_per_epoch,
                                                        pct_start=0.15, cycle_momentum=False)
        channel = _channel(model)
        if channel is not None:
            channel.reseed(self.seed)
        return model, optimizer, scheduler

    def start_epoch(self, epoch: int) -> None:
        self.model.device_part.eval()
        self.model.server_part.train(self.train_server)

    def batches(self, epoch: int) -> Iterator[Tensor]:
        perm = torch.randperm(len(self.feats.train_y), generator=self.generator)
        for i in range(self.steps_per_epoch):
            yield perm[i * self.jc.batch_size:(i + 1) * self.jc.batch_size]

    def before_step(self, step: int) -> None:
        model = self.model
        if model.quantizer is not None:
            if step == self.warmup:
                _place_codewords(model, self.feats, self.dev)
                model.train()  # the device part too: it is unused here
                model.server_part.train(self.train_server)
            model.quantizer.enabled = step >= self.warmup

    def loss(self, idx: Tensor) -> Tensor:
        jc, dev = self.jc, self.dev
        xb, yb = _f32(self.feats.train_x[idx], dev), self.feats.train_y[idx].to(dev)
        logits, qloss = self.model.decode(self.model.encoder(xb))
        loss = self.loss_fn(logits, yb) + qloss
        if self.teacher is None:
            return loss
        soft = nn.functional.kl_div(nn.functional.log_softmax(logits / _T, 1),
                                    nn.functional.log_softmax(self.teacher[idx].to(dev) / _T, 1),
                                    reduction="batchmean", log_target=True)
        return (1 - jc.distill) * loss + jc.distill * _T * _T * soft + jc.distill * qloss


def train_jscc(model: EncodedSplit, feats: SplitFeatures, jc: JsccConfig, seed: int = 0,
               label_smoothing: float = 0.1, progress: Progress | None = None) -> dict[str, Any]:
    """AdamW with a one-cycle LR on cross-entropy mixed (weight `jc.distill`) with distillation from the logits the
    server part gives the uncoded features (Hinton et al. 2015, temperature 2), plus the codebook loss of the
    source-coding reference, over cached features. The device part is unused, the server part frozen (eval mode)
    unless `jc.server == "train"`. The channel draws its training noise from `seed`. The reference trains
    unquantised for its first fifth, then its codewords are placed on the latents (k-means) and quantisation
    switches on (straight-through).

    Args:
        model: a `build_jscc` split, trained in place (left on the training device, gradients off).
        feats: the cached split features it trains on.
        jc: the variant's knobs (epochs, batch size, lr, server, distill).
        seed: seeds the batch order, torch's global generator and the channel's training noise.
        label_smoothing: of the cross-entropy.
        progress: called with (fraction done, message).
    Returns:
        The row's training columns: jscc_train_seconds, _steps, _images, _device, jscc_trained_on.
    """
    dev = pick_device()
    n = len(feats.train_y)
    hooks = _JsccTraining(model, feats, jc, seed, label_smoothing, dev, max(1, math.ceil(n / jc.batch_size)))
    # Unlike encoder training, never under autocast ("fp32"), not checkpointed (a killed run starts over) and
    # without per-epoch validation or epoch reports: kept as they were, so the figures stay the same.
    loop = Loop("jscc training", dev, jc.epochs, hooks.steps_per_epoch, seed, precision="fp32", progress=progress,
                report_every=20, report_epochs=False)
    done = run_loop(loop, hooks)
    if model.quantizer is not None:
        model.quantizer.enabled = True
    model.requires_grad_(False)
    return {"jscc_train_seconds": done.seconds, "jscc_train_steps": loop.total_steps,
            "jscc_train_images": n, "jscc_train_device": str(dev), "jscc_trained_on": [training_environment(dev)]}


@torch.no_grad()
def _teacher_logits(server: nn.Module, x: Tensor, dev: torch.device) -> Tensor:
    """The server part's logits for the uncoded training features (before any fine-tuning), on the CPU."""
    was = server.training
    server.eval()
    out = torch.cat([server(_f32(xb, dev)).float().cpu() for xb in x.split(_EVAL_BATCH)])
    server.train(was)
    return out


@torch.no_grad()
def _place_codewords(model: EncodedSplit, feats: SplitFeatures, dev: torch.device) -> None:
    # The reference's codebook is always a ScalarCodebook, whose placement draws nothing: unlike encoder training's
    # _place_codewords, no seed is passed (a VectorCodebook would draw its k-means start from seed 0).
    model.eval()
    y = torch.cat([model.encoder(_f32(xb, dev)).float().cpu() for xb in feats.train_x[:_INIT_IMAGES].split(500)])
    model.quantizer.init_from(y)


# ------------------------------------------------------------------------------------------------------ evaluation


def realisation_seed(seed: int, r: int) -> int:
    """The noise seed of realisation r: the same realisations at every condition (common random numbers), and
    none of them the training noise's seed."""
    return 1_000_003 * (seed + 1) + r


@torch.no_grad()
def channel_accuracy(model: EncodedSplit, x: Tensor, y: Tensor, condition: float | None = None,
                     realisations: int = 1, seed: int = 0) -> list[float]:
    """Top-1 accuracy over all of (x, y) split features, once per seeded channel realisation at `condition`
    (a noiseless model: once, quantised)."""
    model.eval()
    dev = next(model.parameters()).device
    channel = _channel(model)
    runs = realisations if channel is not None else 1
    out = []
    for r in range(runs):
        if channel is not None:
            channel.condition = float(condition)
            channel.reseed(realisation_seed(seed, r))
        correct = 0
        for xb, yb in zip(x.split(_EVAL_BATCH), y.split(_EVAL_BATCH), strict=True):
            logits, _ = model.decode(model.encoder(_f32(xb, dev)))
            correct += int((logits.argmax(1).cpu() == yb).sum())
        out.append(correct / max(1, len(y)))
    return out


@torch.no_grad()
def _symbols(model: EncodedSplit, x: Tensor) -> np.ndarray:
    dev = next(model.parameters()).device
    out = [model.quantizer.quantize(model.encoder(_f32(xb, dev)).float()).cpu() for xb in x.split(_EVAL_BATCH)]
    return torch.cat(out).numpy().astype(np.int64)


@torch.no_grad()
def source_coded(model: EncodedSplit, codec: EntropyCodec, x: Tensor, y: Tensor) -> dict[str, Any]:
    """The reference's test figures: each image's symbols sent as a real payload (the shorter of the fixed-length
    and the entropy-coded form), decoded back (a mismatch raises) and classified from the decoded symbols."""
    model.eval()
    dev = next(model.parameters()).device
    q = model.quantizer
    n = q.symbols_per_image
    symbols = _symbols(model, x)
    correct, actual = 0, []
    for lo in range(0, len(symbols), _EVAL_BATCH):
        sent = symbols[lo:lo + _EVAL_BATCH]
        streams = encode_payloads(codec, sent)
        received = np.stack([decode_payload(codec, s, n) for s in streams]).astype(np.int64).reshape(len(sent), n)
        if not np.array_equal(received, sent):
            raise RuntimeError("the entropy decoder did not return the symbols that were sent")
        logits = model.from_symbols(torch.from_numpy(received).to(dev))
        correct += int((logits.argmax(1).cpu() == y[lo:lo + _EVAL_BATCH]).sum())
        actual.append(np.array([p.bits for p in streams]))
    return {"accuracy": correct / max(1, len(y)), "bits_actual": float(np.concatenate(actual).mean()),
            "bits_ideal": float(codec.ideal_bits_per_image(symbols).mean()),
            "bits_entropy": float(sum(empirical_entropy_bits(symbols[:, j]) for j in range(n))),
            "bits_raw": float(q.raw_bits), "coding_cpu_seconds": codec.coding_seconds(symbols)}


# ------------------------------------------------------------------------------------------------------ one variant


@dataclass
class CodedResult:
    """A trained and measured variant: the model, the test accuracy at the nominal condition (source coding: over
    the real bitstreams), bits (NaN for JSCC: it sends channel uses, not bits) and the row's other columns."""

    model: EncodedSplit
    accuracy: float
    bits: dict[str, float]
    extra: dict[str, Any]
    codec: EntropyCodec | None = None  # the source-coding reference's entropy coder


def _train_or_load(device: nn.Module, server: nn.Module, input_shape: tuple[int, int, int], jc: JsccConfig,
                   feats: SplitFeatures, seed: int, label_smoothing: float, calibration: int, cache: Path | None,
                   progress: Progress | None,
                   may_train: bool = True) -> tuple[EncodedSplit, dict[str, Any], EntropyCodec | None, str]:
    with seeded(seed):  # the encoder's and decoder's initial weights
        model = build_jscc(copy.deepcopy(device).cpu(), copy.deepcopy(server).cpu(), input_shape, jc, seed)
    key = config_id({"features": feats.key, "jscc": jc.training_key(), "seed": seed,
                     "label_smoothing": label_smoothing, "calibration": calibration})
    path = cache / "models" / f"jscc-{key}.pt" if cache is not None else None
    done = load_checkpoint(path) if path is not None else None
    if done is not None:
        try:
            model.load_state_dict(done["state_dict"])
            codec = CODECS.get(done["codec"]["codec"]).from_state(done["codec"]) if done.get("codec") else None
            model.to(pick_device()).requires_grad_(False)
            return model, {"jscc_trained_on": None, **done["stats"]}, codec, key  # None: saved before it was recorded
        except (KeyError, RuntimeError, ValueError) as exc:
            log.warning("jscc checkpoint %s does not match its config (%s): retraining", key, str(exc)[:120])
    if not may_train:
        raise NotTrained(f"the jscc coder {key} is not trained in this cache yet: run the variant as a job first")
    stats = train_jscc(model, feats, jc, seed, label_smoothing, progress)
    codec = None
    if model.quantizer is not None:
        symbols = _symbols(model, feats.train_x[:calibration])
        cls = CODECS.get(jc.codec)
        extra = {"contexts": model.quantizer.contexts()} if "contexts" in inspect.signature(cls.fit).parameters else {}
        codec = cls.fit(symbols, model.quantizer.alphabet_size, **extra)
    if path is not None:
        save_checkpoint({"state_dict": {k: v.cpu() for k, v in model.state_dict().items()}, "stats": stats,
                         "codec": codec.state_dict() if codec is not None else None,
                         "config": dataclasses.asdict(jc)}, path)
    return model, stats, codec, key


def code_split(device: nn.Module, server: nn.Module, data: ImageData, jc: JsccConfig, *, seed: int = 0,
               val_fraction: float = 0.1, label_smoothing: float = 0.1, calibration: int = 2000,
               cache: Path | None = None, progress: Progress | None = None, measure: bool = True,
               may_train: bool = True) -> CodedResult:
    """Train (or load) one variant between copies of `device` (frozen) and `server` on cached split features and
    measure it: for a channel, validation and test accuracy of every seeded realisation at every condition of the
    mismatch curve; for the source-coding reference, the real bitstreams of every test image. `measure=False`
    returns the trained model alone (accuracy NaN); `may_train=False` raises `NotTrained` instead of training."""
    input_shape = (data.channels, *data.image_size)
    feats = split_features(device, data, val_fraction, seed, jc.train_images, cache, progress)
    model, stats, codec, key = _train_or_load(device, server, input_shape, jc, feats, seed, label_smoothing,
                                              calibration, cache, progress, may_train)
    if not measure:
        return CodedResult(model.cpu().eval(), math.nan, {}, {}, codec)
    start = time.perf_counter()
    extra: dict[str, Any] = {"channel": jc.channel, "jscc_model": key, "features_key": feats.key, **stats,
                             "encoder_d": int(model.encoder.d), "encoder_channels": int(model.encoder.map_shape[0]),
                             "val_images": len(feats.val_y)}
    if codec is not None:  # learned source coding: noiseless, so one measurement
        measured = source_coded(model, codec, feats.test_x, feats.test_y)
        accuracy = measured.pop("accuracy")
        extra.update(val_accuracy=channel_accuracy(model, feats.val_x, feats.val_y)[0], codec=type(codec).__name__,
                     symbols_per_image=model.quantizer.symbols_per_image, channel_uses=None,
                     bits_entropy=measured.pop("bits_entropy"))
        bits = measured
    else:
        channel = _channel(model)
        curve_val, curve_test, curve_std, runs = [], [], [], []
        for i, c in enumerate(jc.grid):
            if progress:
                progress(i / len(jc.grid), f"{jc.channel} {channel.condition_name}={c:g}: {jc.realisations} "
                                           "realisations")
            val = channel_accuracy(model, feats.val_x, feats.val_y, c, jc.realisations, seed)
            test = channel_accuracy(model, feats.test_x, feats.test_y, c, jc.realisations, seed)
            curve_val.append(float(np.mean(val)))
            curve_test.append(float(np.mean(test)))
            curve_std.append(float(np.std(test)))
            runs.append(test)
        at = jc.grid.index(jc.nominal)
        accuracy = curve_test[at]
        channel.condition = jc.nominal
        bits = {"bits_actual": math.nan, "bits_ideal": math.nan, "bits_raw": math.nan}
        extra.update(channel_uses=jc.uses, reals_per_use=channel.reals_per_use, condition_name=channel.condition_name,
                     condition=jc.nominal, train_range=list(jc.train_range) if jc.train_range else None,
                     realisations=jc.realisations, accuracy_std=curve_std[at], val_accuracy=curve_val[at],
                     curve_conditions=list(jc.grid), curve_accuracy=curve_test, curve_accuracy_std=curve_std,
                     curve_val_accuracy=curve_val, curve_accuracy_runs=runs)
    extra["jscc_eval_seconds"] = time.perf_counter() - start
    return CodedResult(model.cpu().eval(), float(accuracy), bits, extra, codec)


def jscc_defaults(profile: str) -> dict[str, Any]:
    """The training budget of a profile (its `fig5` budget), for knobs a variant leaves unset."""
    budget = PROFILES.get(profile).fig5
    return {"epochs": budget.epochs, "train_images": budget.train_images, "realisations": budget.realisations}


def jscc_result(device: nn.Module, server: nn.Module, cfg: VariantConfig, env: CodingEnv,
                measure: bool = False) -> CodedResult:
    """`code_split` for a variant: knobs from `cfg` (`jscc_*`, the profile's budget for the rest), seed and
    validation split of its base model, features and models cached under the env's cache.

    Args:
        device, server: the parts around the coder; cfg: the variant; env: data, profile, cache and progress;
        measure: measure on the whole test set too (else the trained model alone).
    Returns:
        the trained (or cached) coder and, when measured, its figures.
    """
    jc = JsccConfig.from_knobs(cfg.knobs, **jscc_defaults(profile_of(cfg.base).budget_name))
    return code_split(device, server, env.data, jc, seed=cfg.base.seed, val_fraction=cfg.base.val_fraction,
                      label_smoothing=cfg.base.label_smoothing, calibration=env.profile.calibration_images,
                      cache=env.cache, progress=env.progress, measure=measure, may_train=env.may_train)


@register_coding("jscc")
class Jscc(FeatureCoding):
    """Learning-driven joint source-channel coding: the two-step encoder's outputs sent straight through an AWGN or
    BSC channel layer (knobs `jscc_*`, `JsccConfig`); `jscc_channel="none"` is its separate-coding reference."""

    prefix = KNOB_PREFIX

    def check(self, cfg: VariantConfig, profile: str) -> None:
        """Every `jscc_*` knob read as `JsccConfig` reads it, over the profile's Fig. 5 budget."""
        JsccConfig.from_knobs(cfg.knobs, **jscc_defaults(profile))

    def measure(self, device: nn.Module, server: nn.Module, cfg: VariantConfig, env: CodingEnv) -> CodedSplit:
        """The deployed device part maps an image to the encoder's output (channel symbols), the server part maps
        what the channel delivers (at the nominal condition) to logits (see `FeatureCoding.measure`)."""
        result = jscc_result(device, server, cfg, env, measure=True)
        deployed_device, deployed_server = result.model.deployed_parts()
        return CodedSplit(deployed_device.eval(), deployed_server.eval(), result.accuracy,
                          float(result.extra["val_accuracy"]), result.bits, result.extra)

    def deploy(self, device: nn.Module, server: nn.Module, cfg: VariantConfig, env: CodingEnv) -> Deployed:
        """The trained coder's parts (see `FeatureCoding.deploy`)."""
        result = jscc_result(device, server, cfg, env)
        return deploy_encoded(result.model, result.codec)
