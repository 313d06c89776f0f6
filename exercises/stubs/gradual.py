"""Exercise 12: the gradual unfreezing schedule (freeze.py, GradualUnfreezer.unfreeze_next).

    python -m exercises check gradual
"""
from freeze import set_trainable


def unfreeze_next(self) -> str | None:
    """Unfreeze the next layer group down and return its name; None once everything is unfrozen.

    `self` is a GradualUnfreezer: self.groups is backbone_groups(model), (name, parameters) bottom to
    top (embeddings, layer.0 ... layer.11), and self.unfrozen counts the groups unfrozen so far (0
    at the start, when only the heads train). train.py calls this every `self.every_steps` steps.

    Contract (ULMFiT): the first call unfreezes layer.11, the next layer.10, ..., the 13th the
    embeddings; every call after that returns None and changes nothing.

    Hint: count from the end of self.groups, and keep self.unfrozen up to date (catch_up() after a
    resume relies on it).
    """
    raise NotImplementedError
