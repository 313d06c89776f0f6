"""Exercise 3: the attention mask, relative position bias plus padding (mpnet.py, MPNet.attention_mask).

    python -m exercises check mask
"""
import torch

from mpnet import relative_position_bucket


def attention_mask(self, attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, L) 0/1 padding mask -> one additive (B, H, L, L) term that every layer adds to its scores.

    `self` is the MPNet module: self.relative_bias is the learnt (32 buckets, 12 heads) table and
    self.cfg holds relative_attention_num_buckets and relative_attention_max_distance.

    Contract:
      - entry [b, h, q, k] = relative_bias[bucket(k - q), h], plus a very large negative number
        (torch.finfo(dtype).min) when key k of sentence b is padding;
      - offsets are taken over plain positions 0..L-1;
      - the result has the dtype asked for (it is added to scores of that dtype).

    Hints:
      - idx = torch.arange(L); idx[None, :] - idx[:, None] is the (L, L) grid of key - query offsets.
      - Indexing the (32, 12) table with an (L, L) tensor of buckets gives (L, L, 12); permute it.
      - The padding term only depends on the key: shape it (B, 1, 1, L) and let broadcasting do the rest.
    """
    raise NotImplementedError
