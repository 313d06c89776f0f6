"""Exercise 2: the relative-position bucket (mpnet.py, section 2).

    python -m exercises check bucket
"""
import math

import torch


def relative_position_bucket(relative_position: torch.Tensor, num_buckets: int = 32,
                             max_distance: int = 128) -> torch.Tensor:
    """Key-minus-query offsets (any shape) -> bucket ids (same shape, integers), as T5 and MPNet do.

    Contract, for num_buckets = 32 and max_distance = 128 (the check also tries other values):
      - half of the buckets (0..15) are for keys to the left of the query or on it (offset <= 0),
        the other half (16..31) for keys to the right (offset > 0);
      - within a half, distances 0..7 (a quarter of all buckets) get a bucket each;
      - distances 8..127 share the remaining buckets 8..15 on a log scale:
        8 + floor(log(distance / 8) / log(128 / 8) * (16 - 8));
      - distances of 128 and more all fall in the last bucket of their half (15 or 31).

    Hints:
      - Work with distance = -relative_position; a key to the left then has distance > 0.
      - torch.log of 0 is -inf: clamp the distance to at least 1 before the log; those small
        distances take the exact branch anyway (torch.where picks per element).
    """
    raise NotImplementedError
