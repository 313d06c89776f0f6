# %% [markdown]
# # all-mpnet-base-v2, one tensor at a time
#
# This file runs top to bottom (`python walkthrough.py`, about 10 seconds) and opens as a notebook
# (Jupyter with jupytext, or VS Code: each `# %%` line starts a cell). It takes one real sentence
# pair through every step of `mpnet.py`, prints the shapes and a few values, and computes the
# important steps again *by hand*, from the module's own weights. Every hand computation ends in an
# `assert` that it equals what the module computed, so this file is also a test (CI runs it).
#
# Read it beside `mpnet.py`: section numbers in the headings point at the code.

# %%
import copy
import math

import torch
import torch.nn.functional as F

from mpnet import SentenceEncoder, mean_pool, position_ids_from, relative_position_bucket

torch.set_printoptions(precision=4, sci_mode=False, linewidth=120)


def heading(title: str) -> None:
    """Each section's title in the output, so that it reads on a projector as it does here."""
    print(f"\n{'=' * 8} {title} {'=' * max(4, 80 - len(title))}"[:100])


encoder = SentenceEncoder.from_pretrained()  # fetches the weights on first use
model, tokenizer, cfg = encoder.model, encoder.tokenizer, encoder.model.cfg
pair = ["A man is playing a guitar.", "Someone plays an instrument."]
print(f"all-mpnet-base-v2: {cfg.num_hidden_layers} layers, {cfg.num_attention_heads} heads of "
      f"{cfg.hidden_size // cfg.num_attention_heads}, hidden size {cfg.hidden_size}, "
      f"{cfg.vocab_size:,} tokens in the vocabulary (the whole config: print(cfg))")

# %% [markdown]
# ## 1. Tokenisation (mpnet.py section 5)
#
# WordPiece splits text into sub-word pieces from a 30,527-entry vocabulary, after lower-casing.
# Each sentence is wrapped in `<s>` (id 0) and `</s>` (id 2). Nothing here is learnt: a tokenizer
# that differs from the one the model was trained with (other lower-casing, other special tokens)
# silently gives a different model, which is why the parity tests compare token ids first.

# %%
heading('1. Tokenisation (mpnet.py section 5)')
ids = tokenizer.encode(pair)
for sentence, row in zip(pair, ids):
    print(sentence)
    print("   ", [(tokenizer.tok.id_to_token(i), i) for i in row])

# %% [markdown]
# Sentences in a batch differ in length, so the shorter ones are right-padded with `<pad>` (id 1),
# and an attention mask marks which positions are real. The pad id matters beyond padding: a
# literal "<pad>" typed in the text becomes id 1 as well, and is then treated as padding by the
# position ids below (sentence-transformers does the same, so parity holds; it is a quirk to know).
#
# Truncation: the model has 514 position rows, but sentence-transformers caps a sentence at 384
# tokens (its `max_seq_length`), and so do we. The tokenizer.json file says 128; we override it.

# %%
batch = tokenizer.pad(ids)
print("input_ids     ", batch["input_ids"].shape, "\n", batch["input_ids"])
print("attention_mask", batch["attention_mask"].shape, "\n", batch["attention_mask"])
long_ids = tokenizer.encode(["word " * 1000])[0]
print(f"a 1000-word sentence keeps {len(long_ids)} tokens, the last one {tokenizer.tok.id_to_token(long_ids[-1])}")
assert len(long_ids) == 384 and long_ids[-1] == 2
print("a literal <pad> in the text:", tokenizer.encode(["hello <pad> world"])[0])

# %% [markdown]
# ## 2. Position ids (mpnet.py section 2)
#
# MPNet inherited RoBERTa's numbering: padding positions get `padding_idx` (1) and real tokens count
# up from `padding_idx + 1` (2). Rows 0 and 1 of the position table are never read by a real token;
# that is why there are 512 + 2 = 514 rows for 512 usable positions.

# %%
heading('2. Position ids (mpnet.py section 2)')
positions = position_ids_from(batch["input_ids"], cfg.pad_token_id)
print("position ids (padding keeps id 1; real tokens count from 2):\n", positions)
assert positions[0, 0] == 2 and (positions[batch["attention_mask"] == 0] == 1).all()

# %% [markdown]
# ## 3. Relative position buckets (mpnet.py section 2)
#
# Besides absolute positions, MPNet's attention adds a learned bias that depends on the *offset*
# between the key and the query. Offsets are grouped into 32 buckets: keys to the left use 0..15,
# keys to the right 16..31; within each half, offsets 0..7 get a bucket each, and larger ones share
# buckets on a log scale up to 128. Nearby words are told apart exactly; far ones only roughly.
# Here is the bucket of every (query, key) pair of a 12-token sentence:

# %%
heading('3. Relative position buckets (mpnet.py section 2)')
L = 12
idx = torch.arange(L)
buckets = relative_position_bucket(idx[None, :] - idx[:, None])  # rows: query, columns: key
print("      key " + " ".join(f"{k:3d}" for k in range(L)))
for q in range(L):
    print(f"query {q:2d} " + " ".join(f"{b:3d}" for b in buckets[q].tolist()))
assert buckets[5, 5] == 0 and buckets[5, 4] == 1 and buckets[5, 6] == 17  # self, one left, one right

# %% [markdown]
# ## 4. Embeddings (mpnet.py section 3)
#
# The token's row of the word table plus its position's row of the position table, then LayerNorm.
# There are no token-type (segment) embeddings in MPNet. By hand:

# %%
heading('4. Embeddings (mpnet.py section 3)')
emb = model.embeddings
by_hand = F.layer_norm(emb.word[batch["input_ids"]] + emb.position[positions], (cfg.hidden_size,),
                       emb.norm.weight, emb.norm.bias, cfg.layer_norm_eps)
with torch.no_grad():
    x0 = model.embeddings(batch["input_ids"])
print("embeddings", x0.shape, "first token, first values:", x0[0, 0, :6])
assert torch.allclose(by_hand, x0, atol=1e-6)

# %% [markdown]
# ## 5. One attention layer, by hand (mpnet.py section 3, `SelfAttention` and `Layer`)
#
# We take the first sentence alone (no padding, so every position is real) and compute layer 0.
#
# * q, k, v: three linear maps of the input, split into 12 heads of 64 dimensions.
# * scores = q kᵀ / √64 + bias, where bias is the learnt scalar of each (bucket, head): the same
#   table for all 12 layers, so `MPNet.attention_mask` builds it once per forward.
# * softmax over keys, then the weighted sum of v, heads concatenated, output map `o`.
# * Post-LN: LayerNorm(x + attention), then LayerNorm(x + W₂ GELU(W₁ x)).

# %%
heading('5. One attention layer, by hand (mpnet.py section 3, `SelfAttention` and `Layer`)')
one = tokenizer.pad(ids[:1])
mask = one["attention_mask"]
L = mask.shape[1]
with torch.no_grad():
    x = model.embeddings(one["input_ids"])  # (1, L, 768): one sentence, every position real
    layer, H, d = model.layers[0], cfg.num_attention_heads, cfg.hidden_size // cfg.num_attention_heads
    heads = lambda t: t[0].view(L, H, d).transpose(0, 1)  # (1, L, 768) -> (12, L, 64)
    q, k, v = heads(layer.attn.q(x)), heads(layer.attn.k(x)), heads(layer.attn.v(x))
    bias = model.relative_bias[relative_position_bucket(torch.arange(L)[None, :] - torch.arange(L)[:, None])]
    scores = q @ k.transpose(1, 2) / math.sqrt(d) + bias.permute(2, 0, 1)  # (12, L, L)
    weights = scores.softmax(dim=-1)
    attended = layer.attn.o((weights @ v).transpose(0, 1).reshape(1, L, cfg.hidden_size))
    print("q", tuple(q.shape), "scores", tuple(scores.shape), "attention output", tuple(attended.shape))
    print("head 0: where token 1 looks (weights over the keys):", weights[0, 1])

    module_mask = model.attention_mask(mask, x.dtype)
    assert torch.allclose(attended, layer.attn(x, module_mask), atol=1e-5)

    h = F.layer_norm(x + attended, (768,), layer.attn_norm.weight, layer.attn_norm.bias, cfg.layer_norm_eps)
    ffn = layer.ffn_out(F.gelu(layer.ffn_in(h)))  # exact (erf) GELU, 768 -> 3072 -> 768
    out = F.layer_norm(h + ffn, (768,), layer.ffn_norm.weight, layer.ffn_norm.bias, cfg.layer_norm_eps)
    assert torch.allclose(out, layer(x, module_mask), atol=1e-5)
print("layer 0 by hand equals the module")

# %% [markdown]
# The fused `scaled_dot_product_attention` in `SelfAttention` does exactly this in one kernel, with
# the bias and the padding mask folded into one additive term. Padded keys get the most negative
# float, so their softmax weight is exactly 0 and padding cannot leak into a real token.

# %% [markdown]
# ## 6. Twelve layers, mean pooling, normalisation, similarity (mpnet.py section 6)
#
# The layers repeat section 5 with their own weights. The sentence embedding is the *mean* of the
# real tokens' final states (`<s>` and `</s>` included, as sentence-transformers does; padding
# excluded), scaled to unit length, so that a dot product is the cosine similarity.

# %%
heading('6. Twelve layers, mean pooling, normalisation, similarity (mpnet.py section 6)')
with torch.no_grad():
    tokens = model(batch["input_ids"], batch["attention_mask"])  # (2, L, 768); padded rows unread
pooled = mean_pool(tokens, batch["attention_mask"])
by_hand = (tokens * batch["attention_mask"][..., None]).sum(1) / batch["attention_mask"].sum(1, keepdim=True)
embeddings = F.normalize(pooled, dim=-1)
print("tokens", tuple(tokens.shape), "-> pooled", tuple(pooled.shape), "-> norms", embeddings.norm(dim=-1))
assert torch.allclose(pooled, by_hand, atol=1e-6)
assert torch.allclose(embeddings, encoder.encode(pair), atol=1e-6)
cosine = float(embeddings[0] @ embeddings[1])
print(f"cosine similarity of {pair[0]!r} and {pair[1]!r}: {cosine:.4f}")
unrelated = float(encoder.encode(["A man is playing a guitar.", "The stock market fell sharply today."]).prod(0).sum())
print(f"... and of the guitar sentence with an unrelated one: {unrelated:.4f}")
assert cosine > unrelated

# %% [markdown]
# ### An aside, safe to skip: packing
#
# Only attention mixes tokens; the linear maps, LayerNorm, GELU and dropout treat each token on its
# own. So a faster model keeps only the real tokens, as one (T, 768) matrix, and puts them back on
# the padded grid just around the attention product. `speed/packing.py` swaps that in after load
# (`speed.load_encoder` and training's speed path do it), like int8: the same numbers, to rounding.

# %%
from speed.packing import pack

packed = pack(copy.deepcopy(model))
with torch.no_grad():
    packed_tokens = packed(batch["input_ids"], batch["attention_mask"])
real = batch["attention_mask"].bool()
print("packed against plain, real tokens: max |diff|", float((packed_tokens - tokens)[real].abs().max()))
assert torch.allclose(packed_tokens[real], tokens[real], atol=1e-5)

# %% [markdown]
# ## Pictures
#
# `python -m tools.plots readme` draws the bucket map, the learnt bias per head, attention maps and the
# learning rate per layer (docs/pictures.md). With matplotlib installed, the next cell draws the
# bucket map of section 3 here too; without it, the walkthrough skips the picture.

# %%
heading('Pictures')
try:
    import matplotlib.pyplot as plt
except ImportError:
    print("matplotlib is not installed: no pictures (pip install -r requirements-plots.txt)")
else:
    fig, ax = plt.subplots(figsize=(4, 3.5))
    shown = ax.imshow(buckets, cmap="viridis")
    ax.set(xlabel="key position", ylabel="query position", title="relative position bucket")
    fig.colorbar(shown)
    plt.show()
