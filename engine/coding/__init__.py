"""Every feature coding behind one interface (`FeatureCoding`), registered where it is defined: `none` (uniform
quantisation + Huffman), `two_step` (the learned two-step encoder with learned codewords + ANS) and `jscc` (joint
source-channel coding over AWGN or BSC). The coding layer knows nothing of methods; a method composes its device and
server parts (pruned or not) with any registered coding."""

from engine.coding.base import (
    FEATURE_CODINGS,
    CodedSplit,
    CodingEnv,
    Deployed,
    FeatureCoding,
    NotTrained,
    register_coding,
)

# isort: split
# each module registers its coding; in this order, the registry's (and the dashboard's) order
from engine.coding import uniform  # noqa: F401, I001
from engine.coding import learned  # noqa: F401
from engine.coding import jscc  # noqa: F401

__all__ = ["FEATURE_CODINGS", "CodedSplit", "CodingEnv", "Deployed", "FeatureCoding", "NotTrained", "register_coding"]
