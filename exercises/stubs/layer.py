"""Exercise 5: one post-LN encoder layer (mpnet.py, Layer.forward).

    python -m exercises check layer
"""
import torch
import torch.nn.functional as F


def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, L, D) token states -> (B, L, D), one BERT-style layer.

    `self` is the Layer module, with self.attn (call it as self.attn(x, mask)),
    self.attn_norm, self.ffn_in (768 -> 3072), self.ffn_out (3072 -> 768), self.ffn_norm and
    self.dropout.

    Contract (post-LN, as MPNet was pre-trained):
      x = LayerNorm(x + Attention(x))
      x = LayerNorm(x + W2 GELU(W1 x))
    with the exact (erf) GELU and dropout on each block's output before the residual add (it does
    nothing in eval mode, which is how the check runs).

    Hints:
      - Post-LN normalises after the residual add; pre-LN, x + f(LN(x)), is a different model.
      - F.gelu's default is the exact GELU; approximate="tanh" is not.
    """
    raise NotImplementedError
