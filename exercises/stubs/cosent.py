"""Exercise 9: CoSENT, the loss of a pair task with gold scores (heads.py, docs/contrastive.md).

    python -m exercises check cosent
"""
import torch
import torch.nn.functional as F


def cosent_loss(first: torch.Tensor, second: torch.Tensor, scores: torch.Tensor,
                scale: float = 20.0) -> torch.Tensor:
    """(B, D) embeddings of the pairs' first sentences, (B, D) of their second ones, (B,) gold scores
    -> the batch's loss, a scalar tensor.

    Contract:
      - c_i = scale * cosine(first_i, second_i): cosine, so an embedding's length does not count
        (these embeddings are the mean-pooled ones, not normalised);
      - loss = log(1 + sum of exp(c_i - c_j) over every (i, j) with scores_i < scores_j): each term
        is a pair of pairs whose cosines should be ordered as their gold scores are;
      - a pair of pairs with equal scores adds nothing, so a batch where every score ties has loss 0;
      - it backpropagates into both embeddings.

    Hints:
      - c[:, None] - c[None, :] is the (B, B) matrix of c_i - c_j.
      - exp(40) is large; torch.logsumexp over the terms and one 0 (for the 1) never overflows.
        A term you leave out can be -inf before the logsumexp.
    """
    raise NotImplementedError
