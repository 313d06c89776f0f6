"""Exercise 10: in-batch negatives, the loss of a pair task with positive pairs only (heads.py,
docs/contrastive.md).

    python -m exercises check in_batch
"""
import torch
import torch.nn.functional as F


def in_batch_negatives_loss(anchors: torch.Tensor, positives: torch.Tensor,
                            scores: torch.Tensor | None = None, scale: float = 20.0) -> torch.Tensor:
    """(B, D) anchor embeddings, (B, D) their positives' -> the batch's loss, a scalar tensor.

    Contract:
      - anchor i's positive is positives[i]; every other row of positives is one of its negatives;
      - s[i, j] = scale * cosine(anchors_i, positives_j) (cosine: these embeddings are not normalised);
      - loss = the mean over anchors i of -log(exp(s[i, i]) / sum over j of exp(s[i, j])): anchor i
        picks its own positive out of the batch's B;
      - scores is not used (every pair is a positive): it is there so that both pair losses take the
        same arguments; it backpropagates into both embeddings.

    Hints:
      - F.normalize each side, then one matrix product gives every cosine at once.
      - Each row of s is a B-way classification whose right answer is i: which PyTorch loss is that?
    """
    raise NotImplementedError
