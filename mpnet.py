"""MPNet sentence encoder (sentence-transformers/all-mpnet-base-v2) in plain PyTorch.

    python mpnet.py "A man is playing a guitar." "Someone plays an instrument."

The file reads top to bottom:
  1. MPNetConfig           - the hyper-parameters, read from the checkpoint's config.json
  2. relative_position_bucket, position_ids_from - the two index computations MPNet needs
  3. Embeddings, SelfAttention, Layer, MPNet - the encoder, returning token embeddings
  4. load_checkpoint       - an explicit name map from model.safetensors to this module
  5. Tokenizer             - tokenizer.json through the `tokenizers` library, 384-token truncation
  6. mean_pool, SentenceEncoder - pooling + L2 normalisation, the public encode() API
  7. main                  - the command line
"""
from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from weights.fetch import FILES, fetch, is_complete, may_fetch_into, weights_dir


# ----------------------------------------------------------------------------- 1. config
@dataclass
class MPNetConfig:
    # Defaults are all-mpnet-base-v2's values, which differ from the generic library
    # defaults in two places: layer_norm_eps is 1e-5 (not 1e-12) and there are 514
    # position embeddings (512 tokens + the 2 slots below the first real position).
    vocab_size: int = 30527
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 514
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128  # fixed in MPNet, not stored in config.json
    layer_norm_eps: float = 1e-5
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    pad_token_id: int = 1

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> "MPNetConfig":
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
        if raw.get("model_type") != "mpnet":
            raise ValueError(f"{path}: model_type is {raw.get('model_type')!r}, expected 'mpnet'")
        if raw.get("hidden_act", "gelu") != "gelu":
            raise ValueError(f"{path}: hidden_act {raw['hidden_act']!r} is not supported, "
                             f"only 'gelu'")
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in known})

    @classmethod
    def of_weights(cls) -> "MPNetConfig":
        """The fetched checkpoint's config.json; before the fetch, these defaults (the same)."""
        path = weights_dir() / "config.json"
        return cls.from_json(path) if path.is_file() else cls()


# ----------------------------------------------------------------------------- 2. indices
def position_ids_from(input_ids: torch.Tensor, padding_idx: int) -> torch.Tensor:
    """Absolute position ids, fairseq/RoBERTa style.

    Real tokens are numbered padding_idx+1, padding_idx+2, ...; padding tokens get
    padding_idx itself. MPNet inherited this from RoBERTa, whose position table
    reserves the rows up to padding_idx, so the first real token reads row 2, not
    row 0. That is why the table has 512 + 2 = 514 rows.
    """
    is_real = input_ids.ne(padding_idx).long()
    return torch.cumsum(is_real, dim=1) * is_real + padding_idx


def relative_position_bucket(relative_position: torch.Tensor, num_buckets: int = 32,
                             max_distance: int = 128) -> torch.Tensor:
    """Map key-minus-query offsets to bucket ids, as in T5 and MPNet (bidirectional).

    Half of the buckets are for keys to the left of the query, half for keys to
    the right. In each half, the first quarter of all buckets holds exact
    distances (0..7 for 32 buckets); the rest cover distances up to max_distance
    on a log scale, and everything further shares the last bucket.
    """
    half = num_buckets // 2
    distance = -relative_position                  # > 0: the key is left of the query
    bucket = (distance < 0).long() * half          # keys on the right use the upper half
    distance = distance.abs()
    exact = half // 2
    # clamp(min=1) only keeps log() finite; those small distances take the exact branch.
    log_ratio = torch.log(distance.clamp(min=1).float() / exact) / math.log(max_distance / exact)
    log_bucket = (exact + (log_ratio * (half - exact)).long()).clamp(max=half - 1)
    return bucket + torch.where(distance < exact, distance, log_bucket)


# ----------------------------------------------------------------------------- 3. model
def init_table(rows: int, dim: int) -> nn.Parameter:
    """A lookup table as a plain parameter read with F.embedding, BERT-style random init (only a
    random model keeps it). Not nn.Embedding: its init pulls in slow imports at start-up."""
    return nn.Parameter(nn.init.trunc_normal_(torch.empty(rows, dim), std=0.02))


class Embeddings(nn.Module):
    """Word + absolute position embeddings, then LayerNorm. MPNet has no token-type embeddings."""

    def __init__(self, cfg: MPNetConfig):
        super().__init__()
        self.padding_idx = cfg.pad_token_id
        self.word = init_table(cfg.vocab_size, cfg.hidden_size)
        self.position = init_table(cfg.max_position_embeddings, cfg.hidden_size)
        self.norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        positions = position_ids_from(input_ids, self.padding_idx)
        # padding_idx: the <pad> rows get no gradient when fine-tuning
        x = (F.embedding(input_ids, self.word, self.padding_idx)
             + F.embedding(positions, self.position, self.padding_idx))
        return self.dropout(self.norm(x))


class SelfAttention(nn.Module):
    """Multi-head self-attention; `mask` holds the relative position bias and the padding."""

    def __init__(self, cfg: MPNetConfig):
        super().__init__()
        self.n_heads = cfg.num_attention_heads
        self.q = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.k = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.v = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.o = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.dropout_p = cfg.attention_probs_dropout_prob

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x: (B, L, D) token states, mask: (B, H, L, L) additive -> (B, L, D)."""
        B, L, D = x.shape

        def to_heads(t: torch.Tensor) -> torch.Tensor:  # (B, L, D) -> (B, heads, L, head_dim)
            return t.view(B, L, self.n_heads, D // self.n_heads).transpose(1, 2)

        q, k, v = to_heads(self.q(x)), to_heads(self.k(x)), to_heads(self.v(x))
        y = self.attend(q, k, v, mask)
        return self.o(y.transpose(1, 2).reshape(B, L, D))

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               mask: torch.Tensor) -> torch.Tensor:
        """softmax(q k^T / sqrt(head_dim) + mask) v, per head; in training, dropout on the weights.

        `mask` holds the relative position bias and the padding (-inf-like) as one additive term,
        so PyTorch's scaled_dot_product_attention does it all in one call.
        """
        dropout_p = self.dropout_p if self.training else 0.0
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)


class Layer(nn.Module):
    """One post-LN encoder layer: x = LN(x + Attn(x)); x = LN(x + FFN(x)), as in BERT.

    Post-LN (normalising after the residual add) is what MPNet was pre-trained
    with; swapping to pre-LN would need retraining, not just reordering code.
    """

    def __init__(self, cfg: MPNetConfig):
        super().__init__()
        self.attn = SelfAttention(cfg)
        self.attn_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.ffn_in = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.ffn_out = nn.Linear(cfg.intermediate_size, cfg.hidden_size)
        self.ffn_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.attn_norm(x + self.dropout(self.attn(x, mask)))
        # exact erf GELU (approximate="none"), not the tanh approximation
        return self.ffn_norm(x + self.dropout(self.ffn_out(F.gelu(self.ffn_in(x)))))


class MPNet(nn.Module):
    """The bare encoder: (B, L) token ids + mask -> (B, L, hidden) token embeddings."""

    def __init__(self, cfg: MPNetConfig):
        super().__init__()
        self.cfg = cfg
        self.embeddings = Embeddings(cfg)
        self.layers = nn.ModuleList(Layer(cfg) for _ in range(cfg.num_hidden_layers))
        # One learned scalar per (bucket, head), shared by all layers.
        self.relative_bias = init_table(cfg.relative_attention_num_buckets, cfg.num_attention_heads)

    def attention_mask(self, attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Relative position bias (1, H, L, L) + padding (B, 1, 1, L) -> one additive (B, H, L, L).

        The bias depends only on the offsets between positions, not on the layer
        or the tokens, so it is computed once per forward and reused by all 12
        layers. Offsets are taken over plain 0..L-1 indices (not the padding-aware
        position ids): that is what the reference does, and with right padding
        the real tokens' offsets are the same either way.
        """
        L = attention_mask.shape[1]
        idx = torch.arange(L, device=attention_mask.device)
        buckets = relative_position_bucket(idx[None, :] - idx[:, None],
                                           self.cfg.relative_attention_num_buckets,
                                           self.cfg.relative_attention_max_distance)
        # (L, L, H) -> (1, H, L, L)
        bias = self.relative_bias[buckets].permute(2, 0, 1).unsqueeze(0).to(dtype)
        # Padded keys get the most negative finite value, so softmax gives them exactly 0.
        padding = (1.0 - attention_mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min
        return bias + padding

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Token embeddings (B, L, hidden) after the layers. Rows at padded positions hold values
        that nothing reads: no real token attends to them, and mean pooling leaves them out."""
        x = self.embeddings(input_ids)
        mask = self.attention_mask(attention_mask, x.dtype)
        for layer in self.layers:
            x = layer(x, mask)
        return x

    def set_attention_dropout(self, p: float) -> None:
        """Every layer's dropout on the attention probabilities becomes p (0: no masks to draw)."""
        self.cfg = replace(self.cfg, attention_probs_dropout_prob=p)
        for layer in self.layers:
            layer.attn.dropout_p = p


# ----------------------------------------------------------------------------- 4. loading
def checkpoint_names(cfg: MPNetConfig) -> dict[str, str]:
    """Checkpoint tensor name -> this module's parameter name, spelled out in full."""
    names = {
        "embeddings.word_embeddings.weight": "embeddings.word",
        "embeddings.position_embeddings.weight": "embeddings.position",
        "embeddings.LayerNorm.weight": "embeddings.norm.weight",
        "embeddings.LayerNorm.bias": "embeddings.norm.bias",
        "encoder.relative_attention_bias.weight": "relative_bias",
    }
    for i in range(cfg.num_hidden_layers):
        src, dst = f"encoder.layer.{i}.", f"layers.{i}."
        for p in ("weight", "bias"):
            names[f"{src}attention.attn.q.{p}"] = f"{dst}attn.q.{p}"
            names[f"{src}attention.attn.k.{p}"] = f"{dst}attn.k.{p}"
            names[f"{src}attention.attn.v.{p}"] = f"{dst}attn.v.{p}"
            names[f"{src}attention.attn.o.{p}"] = f"{dst}attn.o.{p}"
            names[f"{src}attention.LayerNorm.{p}"] = f"{dst}attn_norm.{p}"
            names[f"{src}intermediate.dense.{p}"] = f"{dst}ffn_in.{p}"
            names[f"{src}output.dense.{p}"] = f"{dst}ffn_out.{p}"
            names[f"{src}output.LayerNorm.{p}"] = f"{dst}ffn_norm.{p}"
    return names


# In the checkpoint but deliberately unused: the BERT-style pooler (sentence-transformers
# mean-pools instead) and a saved 0..513 index buffer that position_ids_from() replaces.
SKIPPED = {"pooler.dense.weight", "pooler.dense.bias", "embeddings.position_ids"}


def load_checkpoint(path: str | os.PathLike, cfg: MPNetConfig) -> MPNet:
    """Build MPNet and fill it from model.safetensors without copying the weights.

    The module is created on the meta device (no memory, no random init), and the
    tensors, which safetensors memory-maps, are assigned as the parameters.
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    try:
        with safe_open(path, framework="pt") as f:
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{path} is not a readable safetensors file ({e}). If it is truncated or "
                         f"corrupt, delete it and run `python weights/fetch.py`.") from e

    layers = {name.split(".")[2] for name in tensors if name.startswith("encoder.layer.")}
    if cfg.num_hidden_layers != len(layers):  # config.json must describe the file before it is used
        raise ValueError(f"{path} holds {len(layers)} layers, but config.json says "
                         f"{cfg.num_hidden_layers}")
    names = checkpoint_names(cfg)
    missing = sorted(set(names) - set(tensors))
    unexpected = sorted(set(tensors) - set(names) - SKIPPED)
    if missing or unexpected:
        raise ValueError(f"{path} does not look like an all-mpnet-base-v2 checkpoint: "
                         f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                         f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}")

    with torch.device("meta"):
        model = MPNet(cfg)
    expected = dict(model.named_parameters())
    state = {}
    for src, dst in names.items():
        t = tensors[src]
        if t.shape != expected[dst].shape or not t.is_floating_point():
            raise ValueError(f"{path}: {src} has shape {tuple(t.shape)} and dtype {t.dtype}, "
                             f"expected {tuple(expected[dst].shape)} floating point for {dst}")
        state[dst] = t
    assert set(state) == set(expected), "every parameter must be filled"
    model.load_state_dict(state, strict=True, assign=True)
    return model


# ----------------------------------------------------------------------------- 5. tokenizer
class Tokenizer:
    """WordPiece (lower-casing) via the `tokenizers` library, <s> ... </s> around each sentence."""

    def __init__(self, path: str | os.PathLike, max_length: int = 384, pad_id: int = 1):
        from tokenizers import Tokenizer as HFTokenizer

        self.tok = HFTokenizer.from_file(str(path))
        # tokenizer.json ships with truncation at 128 and fixed padding to 128 (left over
        # from training). sentence-transformers overrides both: it truncates at the model's
        # max_seq_length of 384 tokens and pads each batch to its own longest sentence.
        self.tok.no_padding()
        self.tok.enable_truncation(max_length)
        self.pad_id = pad_id

    def encode(self, sentences: Sequence[str]) -> list[list[int]]:
        # sentence-transformers strips surrounding whitespace before tokenising.
        return [e.ids for e in self.tok.encode_batch([s.strip() for s in sentences])]

    def pad(self, ids: Sequence[Sequence[int]]) -> dict[str, torch.Tensor]:
        """Right-pad a batch to its longest sequence."""
        L = max(len(x) for x in ids)
        input_ids = torch.full((len(ids), L), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(ids), L), dtype=torch.long)
        for row, x in enumerate(ids):
            input_ids[row, :len(x)] = torch.tensor(x)
            attention_mask[row, :len(x)] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask}


# ----------------------------------------------------------------------------- 6. sentences
def mean_pool(tokens: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Average of the real tokens' embeddings (B, L, D) -> (B, D); <s> and </s> count as real."""
    mask = attention_mask.unsqueeze(-1).to(tokens.dtype)
    return (tokens * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)


def length_sorted_batches(ids: Sequence[Sequence[int]], batch_size: int) -> Iterator[list[int]]:
    """Row indices in batches, longest first: each batch holds sentences of similar length,
    so padding stays small. Callers scatter results back to these rows to keep input order."""
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    for start in range(0, len(order), batch_size):
        yield order[start:start + batch_size]


def check_sentences(sentences: object) -> list[str]:
    """The accepted inputs: a list, tuple or other sequence of str, or a 1-D numpy array of str.

    A bare str is refused (iterating it would embed each character), and so are sets, dicts and
    iterators: their order is not the caller's, or they can be read only once. Each sentence must
    be valid Unicode: a lone surrogate (e.g. from bytes decoded with errors='surrogateescape')
    has no UTF-8 form, so it is named here rather than failing inside the tokenizer.
    """
    if isinstance(sentences, (str, bytes)):
        raise TypeError("encode() takes a list of strings; for one sentence pass [sentence]")
    if type(sentences).__module__ == "numpy" and getattr(sentences, "ndim", 1) == 1:
        sentences = sentences.tolist()  # numpy str_ elements become plain str
    if not isinstance(sentences, Sequence):
        raise TypeError(f"encode() takes a list, tuple or 1-D numpy array of strings, got "
                        f"{type(sentences).__name__}; convert it with list(...)")
    if len(sentences) == 0:
        raise ValueError("encode() got an empty list; pass at least one sentence")
    for i, s in enumerate(sentences):
        if not isinstance(s, str):
            raise TypeError(f"sentence {i} is a {type(s).__name__}, not a str: {s!r:.60}")
        try:
            s.encode("utf-8")
        except UnicodeEncodeError as e:
            raise ValueError(f"sentence {i} is not valid Unicode: {e.reason} at character "
                             f"{e.start} ({s[e.start]!r}); repair it, e.g. "
                             f"s.encode('utf-8', 'replace').decode()") from None
    return list(sentences)


def check_batch_size(batch_size: object) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    return batch_size


PRECISIONS = {None: torch.float32, "fp32": torch.float32, torch.float32: torch.float32,
              "bf16": torch.bfloat16, torch.bfloat16: torch.bfloat16}


class SentenceEncoder(nn.Module):
    """Tokenizer + MPNet + mean pooling (+ L2 normalisation): all-mpnet-base-v2 end to end."""

    def __init__(self, model: MPNet, tokenizer: Tokenizer):
        super().__init__()
        self.model, self.tokenizer = model, tokenizer

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike | None = None,
                        device: str | torch.device | None = None,
                        dtype: torch.dtype | str | None = None) -> "SentenceEncoder":
        """Load from a folder with model.safetensors, tokenizer.json and config.json.

        path defaults to $MPNET_WEIGHTS_DIR or weights/all-mpnet-base-v2; if the files
        are missing there, they are fetched first (see weights/fetch.py). A path you pass is
        yours: it is never fetched into, and one without the files is an error. A folder that
        `python -m tools.export` wrote from a trained run loads here (and in sentence-transformers).
        dtype: None or "fp32" (the default), or "bf16": the weights cast to bfloat16.
        For int8, or for the fastest accurate precision on this machine chosen for you, use
        speed.load_encoder(dtype="int8" or "auto"): it loads this model and then swaps modules.
        """
        precision = PRECISIONS.get(dtype)
        if precision is None:
            hint = ""
            if dtype in ("int8", "auto"):
                hint = " (int8 and auto live in the speed path: speed.load_encoder)"
            raise ValueError(f"dtype must be 'fp32', 'bf16' or None, not {dtype!r}{hint}")
        folder = weights_dir(path)  # path, else $MPNET_WEIGHTS_DIR, else the project's own folder
        if path is None and may_fetch_into(folder) and not is_complete(folder):
            print(f"all-mpnet-base-v2 weights not found in {folder} (need {', '.join(FILES)}); "
                  f"fetching them now.", file=sys.stderr)
            fetch(folder)
        if not all((folder / name).is_file() for name in FILES):  # your folder: an export, say
            raise FileNotFoundError(f"{folder} does not hold all-mpnet-base-v2's "
                                    f"{', '.join(FILES)}; nothing there was changed. Leave path "
                                    f"out to use, and if needed fetch, the default folder or an "
                                    f"empty one")
        cfg = MPNetConfig.from_json(folder / "config.json")
        model = load_checkpoint(folder / "model.safetensors", cfg)
        model = model.to(device=torch.device(device or "cpu"), dtype=precision).eval()
        return cls(model, Tokenizer(folder / "tokenizer.json", pad_id=cfg.pad_token_id))

    @property
    def device(self) -> torch.device:
        return self.model.embeddings.word.device

    def tokenize(self, sentences: Sequence[str]) -> dict[str, torch.Tensor]:
        return self.tokenizer.pad(self.tokenizer.encode(check_sentences(sentences)))

    @torch.inference_mode()
    def encode(self, sentences: Sequence[str], batch_size: int = 32, normalize: bool = True, *,
               normalize_embeddings: bool = False, convert_to_numpy: bool = False,
               convert_to_tensor: bool = False, show_progress_bar: bool = False,
               device: str | torch.device | None = None):
        """Embed sentences -> (N, hidden) float32 CPU tensor, rows in input order.

        sentence-transformers' keywords mean what they mean there: normalize_embeddings=True
        normalizes (as this model does by default: its Normalize module), convert_to_numpy=True
        returns a numpy array (unless convert_to_tensor=True), device moves the model there first,
        show_progress_bar counts the sentences done on stderr."""
        sentences, batch_size = check_sentences(sentences), check_batch_size(batch_size)
        if device is not None:
            self.to(device)
        ids = self.tokenizer.encode(sentences)
        out = torch.empty(len(ids), self.model.cfg.hidden_size, dtype=torch.float32)
        done = 0
        for rows in length_sorted_batches(ids, batch_size):
            padded = self.tokenizer.pad([ids[i] for i in rows])
            batch = {k: v.to(self.device) for k, v in padded.items()}
            tokens = self.model(batch["input_ids"], batch["attention_mask"])
            pooled = mean_pool(tokens, batch["attention_mask"]).float()
            if normalize or normalize_embeddings:
                pooled = F.normalize(pooled, p=2, dim=1)
            out[rows] = pooled.cpu()
            done += len(rows)
            if show_progress_bar:
                print(f"\rencode: {done}/{len(ids)} sentences", end="", file=sys.stderr, flush=True)
        if show_progress_bar:
            print(file=sys.stderr)
        return out.numpy() if convert_to_numpy and not convert_to_tensor else out

    @staticmethod
    def similarity(a, b) -> torch.Tensor:
        """(N, M) cosine similarities of two sets of embeddings (tensors or numpy arrays), as
        sentence-transformers' model.similarity: on unit embeddings, the dot products."""
        a, b = torch.as_tensor(a, dtype=torch.float32), torch.as_tensor(b, dtype=torch.float32)
        a, b = a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])  # one embedding is one row
        return F.normalize(a, p=2, dim=1) @ F.normalize(b, p=2, dim=1).T


# ----------------------------------------------------------------------------- 7. command line
def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Embed sentences with all-mpnet-base-v2 and print "
                                     "their cosine similarities. (A whole file: python -m "
                                     "scale.corpus --help)")
    parser.add_argument("sentences", nargs="+", help="one or more sentences")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    args = parser.parse_args(argv)
    encoder = SentenceEncoder.from_pretrained(dtype=args.dtype)
    emb = encoder.encode(args.sentences)
    for s, e in zip(args.sentences, emb):
        print(f"{tuple(e.shape)}  [{', '.join(f'{v:+.4f}' for v in e[:6])}, ...]  {s!r}")
    print("\ncosine similarity:")
    sim = encoder.similarity(emb, emb)
    for i, row in enumerate(sim):
        print(f"  [{i}] " + " ".join(f"{v:6.3f}" for v in row))


if __name__ == "__main__":
    main(sys.argv[1:])
