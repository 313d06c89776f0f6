"""Exercise 1: position ids from padding (mpnet.py, section 2).

    python -m exercises check position_ids
"""
import torch


def position_ids_from(input_ids: torch.Tensor, padding_idx: int) -> torch.Tensor:
    """(B, L) token ids -> (B, L) integer position ids, one row of the position table per token.

    Contract:
      - real tokens are numbered padding_idx + 1, padding_idx + 2, ... from the left;
      - every padding token (id == padding_idx) gets padding_idx itself;
      - padding_idx is a parameter: all-mpnet-base-v2 uses 1, so its first real token reads row 2.

    Hints:
      - `input_ids.ne(padding_idx)` marks the real tokens; a cumulative sum along the sentence counts them.
      - A count that is right for real tokens is wrong for the padding after them: multiply it away.
    """
    raise NotImplementedError
