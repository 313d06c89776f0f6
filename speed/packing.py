"""Packing: the per-token layers skip the padding. One call after load, like quant.quantize():

    pack(encoder.model)          # speed.load_encoder and speed.training.speed_up do it for you

The plain model (mpnet.py) runs every layer on the padded (B, L, D) grid, as the reference does.
But only attention mixes tokens; the linear maps, LayerNorm, GELU and dropout, most of the work,
treat each token on its own. So the packed model keeps only the T real tokens, as one (T, D)
matrix, and puts them back on the padded grid just around the attention product:

    embeddings (B, L, D) --pack--> (T, D) --q, k, v--> pad to (B, H, L, d) --attend--> pack --o--> (T, D)
    ... 12 layers ...                                                      --unpack--> (B, L, D), 0 at padding

No parameter changes, nor its name: a checkpoint loads either way, and the packed model computes the
plain model's numbers on the real tokens to rounding (tests/test_packing.py). With length-sorted
batches little padding is left to skip; with unsorted ones, much more (docs/encoding-speed.md).

The packed model also runs a range of its layers from given states (PackedMPNet.forward's start,
stop and packed): how speed/feature_cache.py computes a frozen bottom once and reuses it.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from mpnet import MPNet, SelfAttention


@dataclass
class Packing:
    """What the packed layers receive in place of the mask: the mask itself and where the T real
    tokens sit in the padded (B, L) grid. Layer.forward passes it on to attention untouched."""
    mask: torch.Tensor  # the additive (B, H, L, L) attention mask
    keep: torch.Tensor  # (T,) the real tokens' indices into the flattened B * L grid
    B: int
    L: int

    def pack(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, D) -> (T, D), the real tokens only."""
        return x.flatten(0, 1).index_select(0, self.keep)

    def unpack(self, x: torch.Tensor) -> torch.Tensor:
        """(T, D) -> (B, L, D), zeros at padded positions."""
        return x.new_zeros(self.B * self.L, x.shape[-1]).index_copy(0, self.keep, x).view(self.B, self.L, -1)


class PackedSelfAttention(SelfAttention):
    """SelfAttention on packed (T, D) tokens: q, k and v go onto the padded grid for attend()."""

    def forward(self, x: torch.Tensor, packing: Packing) -> torch.Tensor:
        B, L, D = packing.B, packing.L, x.shape[-1]

        def to_heads(t: torch.Tensor) -> torch.Tensor:  # (T, D) -> padded (B, heads, L, head_dim)
            return packing.unpack(t).view(B, L, self.n_heads, D // self.n_heads).transpose(1, 2)

        q, k, v = to_heads(self.q(x)), to_heads(self.k(x)), to_heads(self.v(x))
        y = self.attend(q, k, v, packing.mask)
        return self.o(packing.pack(y.transpose(1, 2).reshape(B, L, D)))


class PackedMPNet(MPNet):
    """MPNet whose layers run on the real tokens only (see above)."""

    def forward(self, input_ids: torch.Tensor | None, attention_mask: torch.Tensor, start: int = 0,
                stop: int | None = None, packed: torch.Tensor | None = None) -> torch.Tensor:
        """Token embeddings (B, L, hidden); rows at padded positions are zero.

        start, stop, packed: run only layers [start, stop), starting from `packed`, the (T, hidden)
        real-token states that enter layer `start` (input_ids is then not read)."""
        B, L = attention_mask.shape
        keep = attention_mask.flatten().nonzero().squeeze(1)
        if packed is None:  # (B, L, D) -> (T, D), the real tokens only
            packed = self.embeddings(input_ids).flatten(0, 1).index_select(0, keep)
        packing = Packing(self.attention_mask(attention_mask, packed.dtype), keep, B, L)
        for layer in self.layers[start:stop]:
            packed = layer(packed, packing)
        return packing.unpack(packed)


def pack(model: MPNet) -> MPNet:
    """Make the model packed, in place (the same parameters and names); returns it. Twice is once.
    Attention classes that already derive from PackedSelfAttention (the training path's) stay."""
    if not isinstance(model, PackedMPNet):
        model.__class__ = PackedMPNet  # a subclass that adds no state: only forward() changes
    for layer in model.layers:
        if not isinstance(layer.attn, PackedSelfAttention):
            layer.attn.__class__ = PackedSelfAttention
    return model
