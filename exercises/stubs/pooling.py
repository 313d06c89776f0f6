"""Exercise 6: mean pooling (mpnet.py, section 6).

    python -m exercises check pooling
"""
import torch


def mean_pool(tokens: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, L, D) token embeddings, (B, L) 0/1 mask -> (B, D): the mean of each sentence's real tokens.

    Contract:
      - only positions with attention_mask == 1 count, <s> and </s> included (sentence-transformers
        pools them too);
      - padded positions may hold anything: other models leave values there, so do not rely on zeros;
      - a sentence with no real token must not divide by zero.

    Hints:
      - Turn the mask into (B, L, 1) of the tokens' dtype and multiply.
      - Divide by the number of real tokens per sentence, clamped to a tiny positive value.
    """
    raise NotImplementedError
