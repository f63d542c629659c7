"""Learned feature encodings, step 3 of Shao & Zhang 2020 ("task-oriented feature encoding"): an encoder, quantiser
and decoder trained for task accuracy between the device and server parts (the two-step encoder, BottleNet++'s), the
entropy model fitted on training symbols, and every test image sent as a real bitstream, decoded back and checked.
`train_encoded` copies the parts it is given, resumes an interrupted run and loads a finished one."""

from __future__ import annotations

import copy
import dataclasses
import inspect
import logging
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from engine import intermediate
from engine.coding.base import FEATURE_CODINGS, CodedSplit, CodingEnv, Deployed, FeatureCoding, register_coding
from engine.coding.encoders import ENCODERS, EncodedSplit, default_channels, feature_shape
from engine.coding.quantizers import QUANTIZERS, LatentQuantizer, ScalarCodebook, UniformRounding, VectorCodebook
from engine.config import BaseModelConfig, VariantConfig, config_from_knobs
from engine.data import ImageData, augment_batch, iterate_batches, normalize, train_val_split
from engine.entropy import CODECS, EntropyCodec, decode_payload, empirical_entropy_bits, encode_payloads
from engine.entropy.payload import MIN_PAYLOAD_BITS, symbol_bits
from engine.errors import UserError
from engine.profile import count_flops, profile_parts
from engine.train import seeded
from engine.training import (
    Hooks,
    Loop,
    Optimizer,
    Progress,
    Scheduler,
    autocast,
    load_checkpoint,
    pick_device,
    run_loop,
    save_checkpoint,
)

log = logging.getLogger(__name__)

KNOB_PREFIX = "enc_"
BACKBONES = {"finetune": (True, True), "frozen": (False, False), "server": (False, True), "device": (True, False)}
_INIT_IMAGES = 2048  # training images whose latents place the codewords when quantisation is switched on
_EVAL_BATCH = 500
# a checkpoint's bits_actual: the shorter payload form in bits ("payload": in whole bytes; else re-measured)
_BITS_MEASURED = "payload-bits"


@dataclass(frozen=True)
class EncodingConfig:
    """Knobs of the feature encoding. Defaults: the paper's two-step encoder (a quarter of the channels, the map
    reduced to <= 8x8, FC to d = 32) with 2-bit learned scalar codewords per dimension and ANS coding."""

    encoder: str = "two_step"  # two_step | bottleneck (BottleNet++)
    channels: int | None = None  # conv output channels; None: a quarter of the feature's
    d: int = 32  # FC output dimensions (two_step); 0: no FC, the conv map itself is quantised
    stride: int | None = None  # conv kernel = stride; None: two_step shrinks the map to <= 8x8, bottleneck 2
    quantizer: str = "scalar"  # scalar (2**bits learned codewords per dimension) | vector | uniform | none
    bits: int = 2  # scalar / uniform: bits per dimension
    codebook: int = 256  # vector: codewords per codebook
    groups: int = 1  # vector: slices of the latent, each with its own codebook (1: one symbol per image)
    beta: float = 0.25  # commitment weight
    codec: str = "ans"  # entropy coder from CODECS
    backbone: str = "finetune"  # finetune | frozen | server (device frozen) | device (server frozen)
    epochs: int | None = None  # None: the profile's encoding_epochs
    lr: float = 5e-3  # encoder, decoder and codewords; the backbone trains at a tenth of it
    warmup: float = 0.2  # fraction of the steps trained unquantised before the codewords are placed on data

    def __post_init__(self) -> None:
        if self.encoder not in ENCODERS:
            raise UserError(f"unknown encoder {self.encoder!r}; choose one of: {', '.join(ENCODERS)}")
        if self.quantizer != "none" and self.quantizer not in QUANTIZERS:
            raise UserError(f"unknown quantizer {self.quantizer!r}; choose one of: {', '.join(QUANTIZERS)}, none")
        if self.codec not in CODECS:
            raise UserError(f"unknown codec {self.codec!r}; choose one of: {', '.join(CODECS)}")
        if self.backbone not in BACKBONES:
            raise UserError(f"backbone must be one of {', '.join(BACKBONES)}, got {self.backbone!r}")
        if self.d < 0 or not 0.0 <= self.warmup < 1.0 or self.lr <= 0 or (self.epochs is not None and self.epochs < 1):
            raise UserError("need d >= 0, 0 <= warmup < 1, lr > 0 and epochs >= 1")

    @classmethod
    def from_knobs(cls, knobs: Mapping[str, Any] | Iterable[tuple[str, Any]], prefix: str = KNOB_PREFIX,
                   **defaults: Any) -> EncodingConfig:
        """The config from a variant's `enc_*` knobs (other knobs are ignored); `defaults` fill the rest."""
        return config_from_knobs(cls, knobs, prefix, "encoding", **defaults)

    def knobs(self, prefix: str = KNOB_PREFIX) -> dict[str, Any]:
        """The fields that differ from the defaults, as `enc_*` knobs for `VariantConfig.make`."""
        default = EncodingConfig()
        return {prefix + f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if getattr(self, f.name) != getattr(default, f.name)}


TRAINING_FIELDS = ("epochs", "backbone")  # the fields of `EncodingConfig` that say how it trains, not what it is


@dataclass(frozen=True)
class EncodedTraining:
    """The training budget and data handling (seeded; validation and calibration images come from the training set)."""

    epochs: int = 1
    batch_size: int = 128
    seed: int = 0
    val_fraction: float = 0.1
    # the seed of the train/validation split, None: `seed`. A variant's is its base model's: a replicate (another
    # training seed) must train on the images the base model trained on and never on those it holds out
    split_seed: int | None = None
    calibration_images: int = 2000
    label_smoothing: float = 0.1
    precision: str = "auto"  # engine.config.PRECISIONS: the base model's

    @property
    def data_seed(self) -> int:
        """The seed of the train/validation split."""
        return self.seed if self.split_seed is None else self.split_seed


@dataclass
class EncodedResult:
    """The trained split, its entropy codec, the coding metrics (accuracy, bits, encoder FLOPs, training) and the
    `profile_parts` figures of the deployed parts; `row()` is both, flat, for `base_row`."""

    model: EncodedSplit  # trained, eval mode, on the CPU
    codec: EntropyCodec
    metrics: dict[str, Any] = field(default_factory=dict)
    profile: dict[str, Any] = field(default_factory=dict)

    def row(self) -> dict[str, Any]:
        return {**self.profile, **self.metrics}


# ------------------------------------------------------------------------------------------------------ building


def build_quantizer(enc: EncodingConfig, latent_shape: tuple[int, ...]) -> LatentQuantizer | None:
    """The quantiser for a latent: learned codewords on the tanh range (-1, 1) of the two-step encoder, or fixed
    levels on the sigmoid range (0, 1) of BottleNet++ (one entropy model per channel there)."""
    n = math.prod(latent_shape)
    lo, hi = (0.0, 1.0) if enc.encoder == "bottleneck" else (-1.0, 1.0)
    if enc.quantizer == "none":
        return None
    if enc.quantizer == "scalar":
        return ScalarCodebook(n, enc.bits, enc.beta, lo, hi)
    if enc.quantizer == "vector":
        return VectorCodebook(n, enc.codebook, enc.groups, enc.beta)
    contexts = "channel" if enc.encoder == "bottleneck" else "position"
    return UniformRounding(latent_shape, enc.bits, lo, hi, contexts)


def build_encoded(device: nn.Module, server: nn.Module, input_shape: tuple[int, int, int],
                  enc: EncodingConfig) -> EncodedSplit:
    """An untrained encoder, quantiser and decoder around the given parts (used as they are, not copied)."""
    shape = feature_shape(device, input_shape)
    if enc.encoder == "two_step":
        encoder, decoder = ENCODERS.get("two_step")(shape, enc.channels, enc.d, enc.stride)
    else:
        channels = default_channels(shape[0]) if enc.channels is None else enc.channels
        encoder, decoder = ENCODERS.get(enc.encoder)(shape, channels, enc.stride or 2)
    return EncodedSplit(device, encoder, build_quantizer(enc, tuple(encoder.latent_shape)), decoder, server)


# ------------------------------------------------------------------------------------------------------ training


def _param_groups(model: EncodedSplit, enc: EncodingConfig) -> list[dict]:
    train_device, train_server = BACKBONES[enc.backbone]
    model.device_part.requires_grad_(train_device)
    model.server_part.requires_grad_(train_server)
    new = [*model.encoder.parameters(), *model.decoder.parameters(), *model.channel.parameters()]
    quant = list(model.quantizer.parameters()) if model.quantizer is not None else []
    backbone = [p for part in (model.device_part, model.server_part) for p in part.parameters() if p.requires_grad]
    groups = [{"params": new, "lr": enc.lr, "weight_decay": 1e-4},
              {"params": quant, "lr": enc.lr, "weight_decay": 0.0},
              {"params": backbone, "lr": enc.lr / 10, "weight_decay": 1e-4}]
    return groups


def _set_train_mode(model: EncodedSplit, enc: EncodingConfig) -> None:
    """Train mode, except frozen backbone parts, whose BN statistics stay as trained."""
    train_device, train_server = BACKBONES[enc.backbone]
    model.train()
    model.device_part.train(train_device)
    model.server_part.train(train_server)


@torch.no_grad()
def _place_codewords(model: EncodedSplit, images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
                     seed: int) -> None:
    model.eval()
    y = torch.cat([model.latent(normalize(xb, mean, std)) for xb in images.split(_EVAL_BATCH)]).cpu()
    q = model.quantizer
    if isinstance(q, VectorCodebook):
        q.init_from(y, seed=seed)
    elif q is not None:
        q.init_from(y)


@torch.no_grad()
def _accuracy(model: EncodedSplit, x: torch.Tensor, y: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> float:
    model.eval()
    dev = next(model.parameters()).device
    correct = 0
    for xb, yb in zip(x.split(_EVAL_BATCH), y.split(_EVAL_BATCH), strict=True):
        with autocast(dev):
            logits, _ = model(normalize(xb.to(dev), mean, std))
        correct += int((logits.argmax(1).cpu() == yb).sum())
    return correct / max(1, len(y))


@torch.no_grad()
def frozen_features(device: nn.Module, images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
                    batch_size: int = _EVAL_BATCH) -> torch.Tensor:
    """A frozen (eval-mode) device part's features of uint8 `images`, in float16 on the images' device: computed once
    instead of at every training step (half precision halves the memory; training upcasts each batch)."""
    dev = images.device
    out = [device(normalize(xb, mean.to(dev), std.to(dev))).to(torch.float16) for xb in images.split(batch_size)]
    return torch.cat(out) if out else torch.empty(0, dtype=torch.float16, device=dev)


class _EncoderTraining(Hooks):
    """`_fit`'s hooks: AdamW with a one-cycle LR (warm-up 15 %) on CE + quantiser loss; batches of augmented images,
    or of the frozen device part's features computed once; quantisation switched on after `enc.warmup` of the
    steps with the codewords placed on data; validation after every epoch."""

    def __init__(self, model: EncodedSplit, data: ImageData, enc: EncodingConfig, budget: EncodedTraining,
                 dev: torch.device, split: tuple[torch.Tensor, ...], epochs: int, steps_per_epoch: int) -> None:
        self.model, self.enc, self.budget, self.dev = model, enc, budget, dev
        self.train_x, self.train_y, self.val_x, self.val_y = split
        self.mean, self.std = data.mean.to(dev), data.std.to(dev)
        self.loss_fn = nn.CrossEntropyLoss(label_smoothing=budget.label_smoothing)
        self.train_device = BACKBONES[enc.backbone][0]
        self.epochs, self.steps_per_epoch = epochs, steps_per_epoch
        self.warmup_steps = int(enc.warmup * epochs * steps_per_epoch)
        self.val_acc = float("nan")

    def build(self) -> tuple[nn.Module, Optimizer, Scheduler]:
        self.model.to(self.dev)
        groups = _param_groups(self.model, self.enc)
        optimizer = torch.optim.AdamW(groups)
        scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=[g["lr"] for g in groups],
                                                        total_steps=self.epochs * self.steps_per_epoch,
                                                        pct_start=0.15, cycle_momentum=False)
        return self.model, optimizer, scheduler

    def prepare(self) -> None:
        self.x_dev, self.y_dev = self.train_x.to(self.dev), self.train_y.to(self.dev)
        # A frozen device part computes the same feature at every step: compute it once (without augmentation), and
        # train the encoder, decoder (and server part) on those features.
        self.inputs = self.x_dev if self.train_device else frozen_features(self.model.device_part.eval(), self.x_dev,
                                                                           self.mean, self.std)

    def start_epoch(self, epoch: int) -> None:
        _set_train_mode(self.model, self.enc)

    def batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return iterate_batches(self.inputs, self.y_dev, self.budget.batch_size, shuffle=True, generator=self.generator)

    def before_step(self, step: int) -> None:
        if self.model.quantizer is not None:
            if step == self.warmup_steps:
                _place_codewords(self.model, self.x_dev[:_INIT_IMAGES], self.mean, self.std, self.budget.seed)
                _set_train_mode(self.model, self.enc)
            self.model.quantizer.enabled = step >= self.warmup_steps

    def loss(self, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        xb, yb = batch
        model = self.model
        if self.train_device:  # augmented under autocast, as it always was
            xb = normalize(augment_batch(xb, self.generator), self.mean, self.std)
            logits, qloss = model(xb.contiguous(memory_format=torch.channels_last))
        else:
            logits, qloss = model.decode(model.encoder(xb.float()))
        return self.loss_fn(logits, yb) + qloss

    def end_epoch(self, epochs_done: int) -> bool:
        if self.model.quantizer is not None:  # validated as trained so far
            self.model.quantizer.enabled = epochs_done * self.steps_per_epoch > self.warmup_steps
        return False

    def validate(self, epochs_done: int) -> str:
        self.val_acc = _accuracy(self.model, self.val_x, self.val_y, self.mean, self.std)
        intermediate.report(intermediate.ENCODER_EPOCH, epochs_done, self.val_acc)
        return f"val acc {self.val_acc:.4f}"


def _fit(model: EncodedSplit, data: ImageData, enc: EncodingConfig, budget: EncodedTraining,
         partial: Path | None, progress: Progress | None) -> dict[str, Any]:
    """The training loop: AdamW, one-cycle LR, CE + quantiser loss, quantisation switched on after the warm-up with
    the codewords placed on data; resumable at epoch boundaries from `partial`."""
    dev = pick_device()
    split = train_val_split(data, budget.val_fraction, budget.data_seed)
    epochs = int(enc.epochs or budget.epochs)
    steps_per_epoch = math.ceil(len(split[0]) / budget.batch_size)
    hooks = _EncoderTraining(model, data, enc, budget, dev, split, epochs, steps_per_epoch)
    loop = Loop("encoder training", dev, epochs, steps_per_epoch, budget.seed, precision=budget.precision,
                checkpoint=partial, progress=progress, label="encoder ")
    done = run_loop(loop, hooks)
    if model.quantizer is not None:
        model.quantizer.enabled = True
    return {"encode_val_accuracy": hooks.val_acc, "encode_train_seconds": done.seconds, "encode_epochs": epochs,
            "encode_train_images": len(split[0]), "encode_train_device": str(dev),
            "encode_trained_on": done.trained_on,
            "encode_train_inputs": "augmented images" if hooks.train_device else "frozen device features"}


def fit_codec(model: EncodedSplit, images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
              codec: str) -> EntropyCodec:
    """The entropy model of the symbols, fitted on training images (one context per symbol position or channel)."""
    q = model.quantizer
    if q is None:
        raise ValueError("no quantiser, no symbols to code")
    symbols = _symbols(model, images, mean, std)
    cls = CODECS.get(codec)
    extra = {"contexts": q.contexts()} if "contexts" in inspect.signature(cls.fit).parameters else {}
    return cls.fit(symbols, q.alphabet_size, **extra)


def _symbols(model: EncodedSplit, images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> np.ndarray:
    model.eval()
    dev = next(model.parameters()).device
    out = [model.symbols(normalize(xb.to(dev), mean.to(dev), std.to(dev))).cpu() for xb in images.split(_EVAL_BATCH)]
    return torch.cat(out).numpy().astype(np.int64)


# ------------------------------------------------------------------------------------------------------ measuring


def fixed_bits_floor(enc: EncodingConfig) -> int:
    """The least the fixed-length form of an encoding's symbols can take, known before it is trained: a vector
    quantiser's codeword indices, a scalar or uniform one's `d` dimensions (at least one dimension for a conv map),
    `MIN_PAYLOAD_BITS` for unquantised values (never sent as symbols).

    Args:
        enc: the encoding's knobs.

    Returns:
        Bits, at least `MIN_PAYLOAD_BITS`.
    """
    if enc.quantizer == "vector":
        return max(MIN_PAYLOAD_BITS, enc.groups * symbol_bits(max(2, enc.codebook)))
    if enc.quantizer in ("scalar", "uniform"):
        return max(MIN_PAYLOAD_BITS, max(1, enc.d) * enc.bits)
    return MIN_PAYLOAD_BITS


def is_learned(encoder: Any) -> bool:
    """Whether the coding an `encoder` knob names is a learned encoding (its knobs are `enc_*`)."""
    return FEATURE_CODINGS.get(str(encoder)).prefix == KNOB_PREFIX


def reaches_no_further(a: EncodingConfig, b: EncodingConfig, default_epochs: int) -> bool:
    """Whether encoding `a` is expected to keep no more of the task than `b`: its fixed-length form holds no more
    bits (`fixed_bits_floor`), it trains no part of the model that `b` keeps frozen, and no more epochs. A rule of
    thumb, not a bound (in the quick grids, on one snapshot, neither the 16-codeword codebook nor d = 16 lost less
    than d = 32 at 2 bits fine-tuned 4 epochs).

    Args:
        a, b: the two encodings; default_epochs: the epochs of one that does not say (the profile's).
    Returns:
        True when `a` is no larger and trained no more than `b`.
    """
    parts_a, parts_b = BACKBONES[a.backbone], BACKBONES[b.backbone]
    return (fixed_bits_floor(a) <= fixed_bits_floor(b)
            and all(x <= y for x, y in zip(parts_a, parts_b, strict=True))
            and (a.epochs or default_epochs) <= (b.epochs or default_epochs))


@torch.no_grad()
def measure_encoded(model: EncodedSplit, codec: EntropyCodec, data: ImageData, split: str,
                    time_device: bool = True) -> tuple[dict[str, Any], dict[str, Any]]:
    """Every test image's symbols sent as a real payload (`engine.entropy.payload`: the shorter of the fixed-length
    and the entropy-coded form), decoded back (checked equal to what was sent: a mismatch raises) and classified from
    the decoded symbols. Bits: actual (the payload's bits, mean), ideal (the cross-entropy under the codec's model),
    entropy (sum of the per-position empirical entropies of the test symbols) and raw (fixed-length). FLOPs: encoder
    and decoder alone, against the backbone's. Returns (metrics, the
    `profile_parts` figures of the deployed parts: encoder on the device, decoder on the server, and the transmitted
    latent as the feature)."""
    q = model.quantizer
    if q is None:
        raise ValueError("measure_encoded needs a quantiser; a JSCC split is measured over its channel")
    model.eval()
    dev = next(model.parameters()).device
    mean, std = data.mean.to(dev), data.std.to(dev)
    n = q.symbols_per_image
    correct, actual, ideal, sent = 0, [], [], []
    for xb, yb in zip(data.test_x.split(_EVAL_BATCH), data.test_y.split(_EVAL_BATCH), strict=True):
        symbols = model.symbols(normalize(xb.to(dev), mean, std)).cpu().numpy().astype(np.int64)
        streams = encode_payloads(codec, symbols)
        received = np.stack([decode_payload(codec, s, n) for s in streams]).astype(np.int64).reshape(len(symbols), n)
        if not np.array_equal(received, symbols):
            raise RuntimeError("the entropy decoder did not return the symbols that were sent")
        logits = model.from_symbols(torch.from_numpy(received).to(dev))
        correct += int((logits.argmax(1).cpu() == yb).sum())
        actual.append(np.array([p.bits for p in streams]))
        ideal.append(codec.ideal_bits_per_image(symbols))
        sent.append(symbols)
    sent_all = np.concatenate(sent)
    input_shape = (data.channels, *data.image_size)
    cpu_model = copy.deepcopy(model).cpu().eval()
    x = torch.zeros(1, *input_shape)
    feature = cpu_model.device_part(x)
    latent = cpu_model.encoder(feature)
    encoder_flops = count_flops(cpu_model.encoder, feature)
    cq = cpu_model.quantizer
    decoder_flops = count_flops(cpu_model.decoder, cq.dequantize(cq.quantize(latent)))
    backbone_flops = count_flops(cpu_model.device_part, x) + count_flops(cpu_model.server_part, feature)
    prof = profile_parts(*cpu_model.deployed_parts(), split, input_shape, data.num_classes, time_device)
    latent_shape = list(latent.shape[1:])
    prof.update(feature_shape=latent_shape, feature_numel=n, bits_fp32=32 * math.prod(latent_shape),
                bits_8bit=8 * math.prod(latent_shape))
    return {
        "accuracy": correct / len(data.test_y),
        "bits_actual": float(np.concatenate(actual).mean()),
        "bits_ideal": float(np.concatenate(ideal).mean()),
        "bits_entropy": float(sum(empirical_entropy_bits(sent_all[:, j]) for j in range(n))),
        "bits_raw": float(q.raw_bits),
        "bitstream_verified": True,
        "coding_cpu_seconds": codec.coding_seconds(sent[0]),  # batch 1, image by image, on the first test images
        "codec": type(codec).__name__,
        "symbols_per_image": n,
        "alphabet_size": q.alphabet_size,
        "split_feature_shape": list(feature.shape[1:]),
        "feature_bits_8bit": 8 * int(feature[0].numel()),
        "encoder_flops": encoder_flops,
        "decoder_flops": decoder_flops,
        "backbone_flops": backbone_flops,
        "encoder_flops_fraction": encoder_flops / backbone_flops,
        "codec_flops_fraction": (encoder_flops + decoder_flops) / backbone_flops,
    }, prof


@torch.no_grad()
def encoded_val_accuracy(model: EncodedSplit, env: CodingEnv, base: BaseModelConfig) -> float:
    """Top-1 accuracy of the validation images classified from their symbols, as `measure_encoded` classifies the
    test images (the entropy code it verifies is lossless, so the symbols are what the server decodes).

    Args:
        model: the trained encoded split; env: the data; base: the base model whose validation split is used.
    Returns:
        the fraction of validation images classified right (NaN for none).
    """
    val_x, val_y = env.validation_images(base)
    model.eval()
    dev = next(model.parameters()).device
    mean, std = env.data.mean.to(dev), env.data.std.to(dev)
    correct = 0
    for xb, yb in zip(val_x.split(_EVAL_BATCH), val_y.split(_EVAL_BATCH), strict=True):
        logits = model.from_symbols(model.symbols(normalize(xb.to(dev), mean, std)))
        correct += int((logits.argmax(1).cpu() == yb).sum())
    return correct / len(val_y) if len(val_y) else float("nan")


# ------------------------------------------------------------------------------------------------------ entry points


def train_encoded(device: nn.Module, server: nn.Module, data: ImageData, split: str, enc: EncodingConfig,
                  budget: EncodedTraining, checkpoint: Path | None = None,
                  progress: Progress | None = None, time_device: bool = True) -> EncodedResult:
    """Train an encoder/quantiser/decoder between copies of `device` and `server` (fine-tuning them or not, per
    `enc.backbone`), fit the entropy model on training symbols and measure the result on the whole test set.
    With `checkpoint`, an interrupted run resumes at its last finished epoch and a finished one is loaded."""
    input_shape = (data.channels, *data.image_size)
    with seeded(budget.seed):  # the encoder's and decoder's initial weights
        model = build_encoded(copy.deepcopy(device).cpu(), copy.deepcopy(server).cpu(), input_shape, enc)
    if model.quantizer is None:
        raise UserError("train_encoded measures source-coded bits: choose a quantizer (JSCC uses the channel issue)")
    done = load_checkpoint(checkpoint) if checkpoint is not None else None
    if done is not None:
        try:
            if done.get("split_seed", budget.seed) != budget.data_seed:  # trained on another split: not this one
                raise ValueError(f"its training split's seed is {done.get('split_seed', budget.seed)}, not "
                                 f"{budget.data_seed}")
            model.load_state_dict(done["state_dict"])
            codec = CODECS.get(done["codec"]["codec"]).from_state(done["codec"])
            metrics = {"encode_trained_on": None, **done["metrics"]}  # None: saved before it was recorded
            result = EncodedResult(model.eval(), codec, metrics, dict(done["profile"]))
            if done.get("bits_measured") != _BITS_MEASURED:
                _remeasure_bits(result, data, split, {**done, "metrics": metrics}, checkpoint)
            return result
        except (KeyError, RuntimeError, ValueError) as exc:
            log.warning("encoded checkpoint %s does not match its config (%s): retraining", checkpoint.name,
                        str(exc)[:120])
    partial = checkpoint.with_suffix(".partial.pt") if checkpoint is not None else None
    stats = _fit(model, data, enc, budget, partial, progress)
    train_x, _, _, _ = train_val_split(data, budget.val_fraction, budget.data_seed)
    codec = fit_codec(model, train_x[: budget.calibration_images], data.mean, data.std, enc.codec)
    metrics, profile = measure_encoded(model, codec, data, split, time_device)
    model = model.cpu().eval()
    metrics.update(stats, encoder=enc.encoder, encoder_channels=int(model.encoder.map_shape[0]),
                   encoder_d=int(getattr(model.encoder, "d", 0)), encoder_stride=int(model.encoder.stride),
                   quantizer=enc.quantizer, backbone=enc.backbone, calibration_images=min(budget.calibration_images,
                                                                                          len(train_x)))
    if checkpoint is not None:
        save_checkpoint({"state_dict": {k: v.cpu() for k, v in model.state_dict().items()},
                         "codec": codec.state_dict(), "metrics": metrics, "profile": profile,
                         "config": dataclasses.asdict(enc), "bits_measured": _BITS_MEASURED,
                         "split_seed": budget.data_seed}, checkpoint)
        partial.unlink(missing_ok=True)
        partial.with_suffix(partial.suffix + ".sha256").unlink(missing_ok=True)
    return EncodedResult(model, codec, metrics, profile)


def _remeasure_bits(result: EncodedResult, data: ImageData, split: str, done: dict[str, Any],
                    checkpoint: Path) -> None:
    """Replace the `bits_actual` of a checkpoint measured by an earlier payload rule (the shorter form counted in
    whole bytes, or the entropy-coded form alone; every other figure stays) and save it back."""
    metrics, _ = measure_encoded(result.model, result.codec, data, split, time_device=False)
    result.metrics["bits_actual"] = metrics["bits_actual"]
    save_checkpoint({**done, "metrics": result.metrics, "bits_measured": _BITS_MEASURED}, checkpoint)


def run_encoded(cfg: VariantConfig, env: CodingEnv, device: nn.Module, server: nn.Module,
                enc: EncodingConfig | None = None, progress: Progress | None = None) -> EncodedResult:
    """`train_encoded` for a variant: knobs from `cfg.knobs` (`enc_*`) unless `enc` is given, the budget from the
    profile, the seed and validation split of the base model, the checkpoint under the cache keyed by `cfg.id`.

    Args:
        cfg: the variant; env: data, profile, cache and progress; device, server: the parts around the encoder;
        enc: an encoding that replaces the `enc_*` knobs (BottleNet++ builds its own); progress: overrides env's.
    Returns:
        the trained (or cached) encoded split, measured on the whole test set.
    """
    enc = enc if enc is not None else EncodingConfig.from_knobs(cfg.knobs)
    budget = EncodedTraining(epochs=env.profile.encoding_epochs,
                             batch_size=env.profile.batch_size, seed=cfg.training_seed, split_seed=cfg.base.seed,
                             val_fraction=cfg.base.val_fraction, calibration_images=env.profile.calibration_images,
                             label_smoothing=cfg.base.label_smoothing, precision=cfg.base.precision)
    checkpoint = env.cache / "models" / f"encoded-{cfg.id}.pt"
    if not checkpoint.exists():
        env.require_training(f"the {enc.encoder} encoder of {cfg.method} at {cfg.split}")
    return train_encoded(device, server, env.data, cfg.split, enc, budget, checkpoint, progress or env.progress)


def deploy_encoded(model: EncodedSplit, codec: EntropyCodec | None) -> Deployed:
    """The deployed parts of a trained encoded split: image -> symbols, symbols -> logits; a split without a
    quantiser (JSCC) sends the encoder's real values and names its channel."""
    model = model.eval()
    q = model.quantizer
    device, server = model.deployed_parts()
    if q is None:
        channel = model.channel
        spec = {"name": getattr(channel, "name", type(channel).__name__), **dict(getattr(channel, "spec", {}))}
        return Deployed(device.eval(), nn.Sequential(model.decoder, model.server_part).eval(), "analog",
                        channel=None if isinstance(channel, nn.Identity) else spec)
    tables = {"kind": type(q).__name__, "alphabet_size": int(q.alphabet_size),
              "symbols_per_image": int(q.symbols_per_image),
              **{k: v.detach().cpu().tolist() for k, v in q.state_dict().items()}}
    return Deployed(device.eval(), server.eval(), "entropy", codec, tables, int(q.symbols_per_image),
                    int(q.alphabet_size))


@register_coding("two_step")
class LearnedEncoding(FeatureCoding):
    """The paper's two-step encoder (conv channel reduction + FC dimension reduction) with learned quantisation
    codewords and an entropy coder, trained for the task between the parts (knobs `enc_*`, `EncodingConfig`)."""

    prefix = KNOB_PREFIX

    def check(self, cfg: VariantConfig, profile: str) -> None:
        """Every `enc_*` knob read as `EncodingConfig` reads it."""
        EncodingConfig.from_knobs(cfg.knobs)

    def canonical(self, knobs: Mapping[str, Any]) -> dict[str, Any]:
        """The `enc_*` knobs that differ from `EncodingConfig`'s defaults (d = 32 spelt out or left out is one
        encoder), the others unchanged; how it trains (`TRAINING_FIELDS`), where given, stays spelt out even at its
        default, as the grid's variants carry it, so that a search's choice is the grid's id."""
        cfg = EncodingConfig.from_knobs(knobs)
        spelt = {self.prefix + f: getattr(cfg, f) for f in TRAINING_FIELDS if self.prefix + f in knobs}
        return {**{k: v for k, v in knobs.items() if not k.startswith(self.prefix)}, **cfg.knobs(), **spelt}

    def min_bits(self, cfg: VariantConfig) -> float:
        """The fewest bits a payload of this encoding can hold, whatever the encoder learns: the shorter of one byte
        (an entropy-coded stream is whole bytes) and the least its fixed-length form can take (`fixed_bits_floor`)."""
        return float(min(8, fixed_bits_floor(EncodingConfig.from_knobs(cfg.knobs))))

    def measure(self, device: nn.Module, server: nn.Module, cfg: VariantConfig, env: CodingEnv) -> CodedSplit:
        """Train (or load) the encoding and code every test image (see `FeatureCoding.measure`)."""
        result = run_encoded(cfg, env, device, server)
        deployed_device, deployed_server = result.model.deployed_parts()
        metrics = dict(result.metrics)
        accuracy = float(metrics.pop("accuracy"))
        bits = {k: float(metrics.pop(k)) for k in ("bits_actual", "bits_ideal", "bits_raw")}
        val = encoded_val_accuracy(result.model, env, cfg.base)
        return CodedSplit(deployed_device.eval(), deployed_server.eval(), accuracy, val, bits, metrics)

    def deploy(self, device: nn.Module, server: nn.Module, cfg: VariantConfig, env: CodingEnv) -> Deployed:
        """The trained encoding's parts (see `FeatureCoding.deploy`)."""
        result = run_encoded(cfg, env, device, server)
        return deploy_encoded(result.model, result.codec)
