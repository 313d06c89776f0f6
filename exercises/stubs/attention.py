"""Exercise 4: scaled dot-product attention, written out (mpnet.py, SelfAttention.attend).

    python -m exercises check attention
"""
import math

import torch


def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(head_dim) + mask) v, for every sentence and head at once.

    q, k, v: (B, H, L, head_dim), padded positions are zero rows; mask: (B, H, L, L) additive, the
    relative position bias plus a very large negative number at padded keys (exercise 3).
    Returns (B, H, L, head_dim). `self` is the SelfAttention module (self.dropout_p, self.training).

    Contract: the same numbers as F.scaled_dot_product_attention(q, k, v, attn_mask=mask) in eval
    mode. Write it without that function: that is the point of the exercise.

    Hints:
      - k.transpose(-1, -2) turns (..., L, d) into (..., d, L), so q @ k^T is (B, H, L, L): one score
        per (query, key).
      - Each query's weights over the keys sum to 1: which dimension does the softmax run over?
      - Dropout on the weights applies only in training (F.dropout(w, self.dropout_p, self.training));
        the check runs in eval mode.
    """
    raise NotImplementedError
