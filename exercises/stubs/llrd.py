"""Exercise 13: layer-wise learning-rate decay, as AdamW parameter groups (lr_groups.py).

    python -m exercises check llrd
"""
from heads import MultiTaskModel


def build(model: MultiTaskModel, spec: str, base_lr: float, head_lr: float | None = None,
          weight_decay: float = 0.01) -> list[dict]:
    """AdamW parameter groups for spec "llrd:D": a learning rate per depth, no decay where it harms.

    Contract:
      - depth: the embeddings and the relative position bias are depth 0, encoder layer i is
        depth i + 1, so the top of 12 layers is depth 12;
      - a backbone parameter at depth d gets lr = base_lr * D ** (12 - d): the top layer base_lr,
        each layer below D times less;
      - the heads get head_lr, or base_lr when head_lr is None;
      - biases, LayerNorm weights and the relative position bias get weight decay 0, every other
        parameter weight_decay;
      - every parameter of the model is in exactly one group, frozen ones included (gradual
        unfreezing turns them on later without a new optimizer).
      Each group is a dict with "params", "lr" and "weight_decay"; how you split them is up to you.

    Hints:
      - model.backbone.named_parameters() gives names like "layers.3.attn.q.weight",
        "embeddings.norm.bias", "relative_bias"; model.heads.named_parameters() the heads'.
      - The check tries llrd:0.9 and llrd:0.75, with and without head_lr.
    """
    raise NotImplementedError
