"""SPOILERS: the bug each drill puts into a copy of mpnet.py. Do the drills before reading on.

Each bug is one exact text replacement in mpnet.py (tests/test_exercises.py checks that each still
applies once, so a change to mpnet.py cannot silently turn a drill into a no-op). `function` is where
the bug sits, as the answer names it: python -m exercises drill N --answer mpnet.py:FUNCTION.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Bug:
    function: str   # qualified name in mpnet.py; a method's class name is accepted too
    old: str        # text of mpnet.py, found exactly once
    new: str        # what the drill puts there
    what: str       # the bug, told after a right answer


BUGS = [
    Bug("Layer.forward",
        "        x = self.attn_norm(x + self.dropout(self.attn(x, mask)))\n"
        "        # exact erf GELU (approximate=\"none\"), not the tanh approximation\n"
        "        return self.ffn_norm(x + self.dropout(self.ffn_out(F.gelu(self.ffn_in(x)))))",
        "        x = x + self.dropout(self.attn(self.attn_norm(x), mask))\n"
        "        # exact erf GELU (approximate=\"none\"), not the tanh approximation\n"
        "        return x + self.dropout(self.ffn_out(F.gelu(self.ffn_in(self.ffn_norm(x)))))",
        "pre-LN, x + f(LN(x)), in a model trained post-LN, LN(x + f(x))"),
    Bug("mean_pool",
        "    return (tokens * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)",
        "    return (tokens * mask).sum(dim=1) / tokens.shape[1]",
        "the mean divides by every position of the padded batch, padding counted, not by the real tokens"),
    Bug("Layer.forward",
        "F.gelu(self.ffn_in(x))",
        "F.gelu(self.ffn_in(x), approximate=\"tanh\")",
        "the tanh approximation of GELU instead of the exact (erf) one"),
    Bug("Embeddings.__init__",
        "        self.norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)\n        self.dropout",
        "        self.norm = nn.LayerNorm(cfg.hidden_size, eps=1e-12)\n        self.dropout",
        "the embeddings' LayerNorm with eps 1e-12 (BERT's value) instead of the checkpoint's 1e-5"),
    Bug("position_ids_from",
        "    return torch.cumsum(is_real, dim=1) * is_real + padding_idx",
        "    return torch.cumsum(is_real, dim=1) * is_real",
        "position ids counted from 1 with padding at 0: every token reads the position row one before its own"),
    Bug("Tokenizer.__init__",
        "        self.tok.enable_truncation(max_length)\n",
        "",
        "truncation left at tokenizer.json's 128 tokens instead of sentence-transformers' 384"),
    Bug("MPNet.attention_mask",
        "relative_position_bucket(idx[None, :] - idx[:, None],",
        "relative_position_bucket(idx[:, None] - idx[None, :],",
        "the relative offsets taken as query - key, not key - query: the bias of left and right swapped"),
    Bug("checkpoint_names",
        "            names[f\"{src}attention.attn.q.{p}\"] = f\"{dst}attn.q.{p}\"\n"
        "            names[f\"{src}attention.attn.k.{p}\"] = f\"{dst}attn.k.{p}\"",
        "            names[f\"{src}attention.attn.q.{p}\"] = f\"{dst}attn.k.{p}\"\n"
        "            names[f\"{src}attention.attn.k.{p}\"] = f\"{dst}attn.q.{p}\"",
        "the checkpoint's query and key weights loaded into each other's places"),
]
