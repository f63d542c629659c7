"""ANS under per-context models: defined in the torch-free `engine.entropy.ans`, re-exported here."""

from engine.entropy.ans import AnsCodec

__all__ = ["AnsCodec"]
