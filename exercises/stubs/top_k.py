"""Exercise 11: top-k freezing (freeze.py).

    python -m exercises check top_k
"""
from freeze import backbone_groups, freeze_backbone, set_trainable
from heads import MultiTaskModel


def unfreeze_top(model: MultiTaskModel, k: int) -> None:
    """Train the heads and the top k encoder layers; freeze everything below.

    Contract:
      - the model arrives with every parameter trainable; afterwards exactly the heads and
        layers 12-k .. 11 have requires_grad=True;
      - the embeddings (with the relative position bias) are not a layer: they train only when
        nothing is frozen, never under top-k;
      - k outside 0..12 raises ValueError.

    Hints:
      - backbone_groups(model) lists (name, parameters) bottom to top: embeddings, layer.0 ... layer.11.
      - freeze_backbone(model) freezes the backbone and leaves the heads trainable.
      - Python slicing: what is groups[-0:]?
    """
    raise NotImplementedError
