"""The feature-coding interface: how a split feature travels from the device part to the server part (step 3 of
Shao & Zhang 2020, "task-oriented feature encoding", and the baselines' codings). A coding knows nothing of methods:
it gets the device and server parts a method built (pruned or not), the variant's config and a `CodingEnv`, and
returns what it measured (`CodedSplit`) or what it deploys (`Deployed`)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from engine.config import BaseModelConfig, VariantConfig
from engine.data import ImageData, train_val_split
from engine.errors import UserError
from engine.profiles import Profile
from engine.registry import Registry
from engine.training import Progress


@dataclass
class CodingEnv:
    """What a coding needs besides the parts and the variant: the data (cut to the profile), the profile's budgets,
    the cache its trained coders are kept in, and where to report progress."""

    data: ImageData
    profile: Profile
    cache: Path
    progress: Progress | None = None
    may_train: bool = True  # False where nothing may train (a dashboard page): a missing trained part is NotTrained

    def require_training(self, what: str) -> None:
        """Raise `NotTrained` naming `what` when this environment may not train."""
        if not self.may_train:
            raise NotTrained(f"{what} is not trained in this cache yet: run the variant as a job first")

    def calibration_images(self, base: BaseModelConfig) -> torch.Tensor:
        """The first training images (never validation or test) used to fit quantisers and entropy models.

        Args:
            base: the base model whose validation split the images are kept out of.
        Returns:
            uint8 images [N, C, H, W], N = the profile's `calibration_images` at most.
        """
        train_x, _, _, _ = train_val_split(self.data, base.val_fraction, base.seed)
        return train_x[: self.profile.calibration_images]

    def validation_images(self, base: BaseModelConfig) -> tuple[torch.Tensor, torch.Tensor]:
        """The held-out validation images every choice is made on (never trained on, never the test set).

        Args:
            base: the base model whose `val_fraction` and seed draw the split.
        Returns:
            uint8 images [N, C, H, W] and their labels [N].
        """
        _, _, val_x, val_y = train_val_split(self.data, base.val_fraction, base.seed)
        return val_x, val_y


class NotTrained(UserError):
    """A trained part is missing where nothing may train (the dashboard's script run): the variant must be run as a
    job first."""


@dataclass
class CodedSplit:
    """What a feature coding measured: the device and server parts as deployed (encoder and decoder included), the
    test and validation accuracy through the coded feature (choices read the latter), and the bits per image."""

    device: nn.Module
    server: nn.Module
    accuracy: float
    val_accuracy: float
    bits: dict[str, float]  # bits_actual (the real bitstream, mean per test image), bits_ideal, bits_raw
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Deployed:
    """What a variant deploys on each side of the link (eval mode, CPU, batch 1 is enough): `device` maps a normalised
    image to the symbols it sends ([B, n] integers in [0, alphabet)), `server` maps received symbols to logits. The
    `coding` says what travels: "entropy" (symbols coded by `codec`), "png" (the input image; `device` is None and
    `server` takes the normalised image), "label" (the device's argmax, `server` turns it into one-hot logits) or
    "analog" (the encoder's real values, for JSCC; `channel` names the channel the server applies before decoding).
    `quantizer` holds the quantiser's tables as plain JSON."""

    device: nn.Module | None
    server: nn.Module
    coding: str = "entropy"
    codec: Any = None  # an engine.entropy.EntropyCodec for "entropy"
    quantizer: dict[str, Any] = field(default_factory=dict)
    symbols_per_image: int = 0
    alphabet_size: int = 0
    channel: dict[str, Any] | None = None


class FeatureCoding(ABC):
    """One way to send a split feature. Subclasses name the knobs they read (`knobs`, and every knob starting with
    `prefix`), check them before anything is queued, measure a variant on the whole test set through a real
    bitstream (or channel), and build its deployed parts; trained coders are cached, so `deploy` after `measure`
    trains nothing."""

    prefix: ClassVar[str] = ""  # the coding's own knobs start with it ("" for none)

    def check(self, cfg: VariantConfig, profile: str) -> None:  # noqa: B027 - a coding without knobs checks nothing
        """Raise a UserError for a knob of this coding that its run could not use.

        Args:
            cfg: the variant; the coding reads the knobs that start with its `prefix`.
            profile: the profile budget's name, for the defaults of knobs the variant leaves unset.
        """

    def canonical(self, knobs: Mapping[str, Any]) -> dict[str, Any]:
        """A variant's knobs with this coding's own written one way (a knob at its default left out), so that one
        configuration has one id however it was spelt.

        Args:
            knobs: a variant's knobs.
        Returns:
            the same configuration's knobs in canonical form (unchanged by a coding without defaults to drop).
        """
        return dict(knobs)

    def min_bits(self, cfg: VariantConfig) -> float:
        """A lower bound on the bits per image any variant `cfg` of this coding sends, known before it is trained or
        measured (0 where nothing tighter is proven). The sweep skips a variant whose bounds a measured row already
        beats (`engine.pareto.provably_dominated`).

        Args:
            cfg: the variant.
        Returns:
            bits per image that no outcome of its training can undercut.
        """
        return 0.0

    @abstractmethod
    def measure(self, device: nn.Module, server: nn.Module, cfg: VariantConfig, env: CodingEnv) -> CodedSplit:
        """Fit the coding between the parts (training data only), then code every test and validation image.

        Args:
            device: the device part up to the split (pruned channels removed where the method pruned).
            server: the server part after the split.
            cfg: the variant, whose knobs configure the coding and whose id keys its cached coder.
            env: data, profile, cache and progress.
        Returns:
            the deployed parts, the test and validation accuracy through the coded feature and the bits per image.
        """

    @abstractmethod
    def deploy(self, device: nn.Module, server: nn.Module, cfg: VariantConfig, env: CodingEnv) -> Deployed:
        """The parts the variant deploys on each side of the link, from the cached coder (fitted now if missing).

        Args:
            device, server, cfg, env: as for `measure`.
        Returns:
            the deployed device and server programs with the coding's tables.
        """


FEATURE_CODINGS: Registry[FeatureCoding] = Registry("feature coding")


def register_coding(name: str) -> Callable[[type[FeatureCoding]], type[FeatureCoding]]:
    """Class decorator: register an instance of the coding under `name` (the `encoder` knob's value)."""

    def wrap(cls: type[FeatureCoding]) -> type[FeatureCoding]:
        FEATURE_CODINGS.add(name, cls())
        return cls

    return wrap
