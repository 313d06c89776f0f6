"""See it run: the real model's internals on one page, for a lecture.

    python -m tools.explain                    # a page on http://127.0.0.1:PORT/ (printed)
    python -m tools.explain --nearest          # ... with the nearest of data/reviews.tsv's sentences
    python -m tools.explain --html out.html "A man plays a guitar." "Someone plays music."

Every number on the page comes from mpnet.py's own functions on the real weights: the tokenizer,
position_ids_from, relative_position_bucket and the relative_bias table, each layer's
SelfAttention.attend, mean_pool and encode(). The page (explain.html) only draws them. To get the
attention weights out of attend(), which returns softmax(q k^T / sqrt(d) + mask) v, we pass v = the
identity matrix: then the output is the weights themselves.

The server binds to 127.0.0.1 only, serves its page and two JSON answers and nothing else, and runs
one model call at a time. --html writes one file with the numbers inside, for slides or a machine
with no Python.
"""
from __future__ import annotations

import argparse
import base64
import csv
import json
import sys
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import numpy as np
import torch
import torch.nn.functional as F

from mpnet import SentenceEncoder, mean_pool, position_ids_from, relative_position_bucket

ROOT = Path(__file__).resolve().parent.parent
PAGE = Path(__file__).with_name("explain.html")
MAX_CHARS = 5000      # about 800 words; the tokenizer then keeps the first 384 tokens
MAX_NEAREST = 5000    # sentences in a --nearest file
EXPORT_BUDGET = 4_000_000  # characters of attention maps in an --html file (all of a short pair)
# A long sentence to pad the pair inside one batch, for the padding lesson.
FILLER = ("This long sentence shares the batch only to pad the others: every sentence in a batch is "
          "padded to the longest one, and the padded positions must not change an embedding.")


@dataclass
class Trace:
    """What one forward of the batch left behind, for the attention maps asked for later."""
    q: list[torch.Tensor]        # per layer, (B, H, L, head_dim)
    k: list[torch.Tensor]
    bias: torch.Tensor           # (1, H, L, L), the relative-position term of the mask
    padding: torch.Tensor        # (B, 1, 1, L), 0 or the most negative float
    lengths: list[int]
    maps: dict[str, str] = field(default_factory=dict)  # key -> encoded map, filled as asked
    weights: dict[tuple, torch.Tensor] = field(default_factory=dict)  # (sentence, layer, terms)


def check_input(sentences: object) -> list[str]:
    if not isinstance(sentences, list) or not 1 <= len(sentences) <= 2:
        raise ValueError("give one sentence or a pair")
    for i, s in enumerate(sentences):
        if not isinstance(s, str) or not s.strip():
            raise ValueError(f"sentence {'AB'[i]} is empty: type something to embed")
        if len(s) > MAX_CHARS:
            raise ValueError(f"sentence {'AB'[i]} has {len(s):,} characters; the page takes up to "
                             f"{MAX_CHARS:,} (the model reads at most 384 tokens anyway)")
    return sentences


def rounded(t: torch.Tensor, digits: int = 4) -> list:
    return np.round(t.detach().float().numpy(), digits).tolist()


@torch.inference_mode()
def explain(encoder: SentenceEncoder, sentences: list[str]) -> tuple[dict, Trace]:
    """The page's numbers for one sentence or a pair, and the trace for attention_map."""
    model, tokenizer = encoder.model, encoder.tokenizer
    ids = tokenizer.encode(check_input(sentences))
    batch = tokenizer.pad(ids)
    input_ids, mask = batch["input_ids"], batch["attention_mask"]
    cfg = model.cfg

    # Each layer's attention input and each layer's output, caught on the way through.
    q, k, states = [], [], []

    def keep_state(module, args, out) -> None:
        states.append(out)

    def keep_q_k(attn, args) -> None:  # args: (x, mask), as SelfAttention.forward takes them
        q.append(heads_of(attn.q(args[0]), attn.n_heads))
        k.append(heads_of(attn.k(args[0]), attn.n_heads))

    hooks = [model.embeddings.register_forward_hook(keep_state)]
    for layer in model.layers:
        hooks.append(layer.register_forward_hook(keep_state))
        hooks.append(layer.attn.register_forward_pre_hook(keep_q_k))
    try:
        tokens = model(input_ids, mask)
    finally:
        for hook in hooks:
            hook.remove()

    full = model.attention_mask(mask, tokens.dtype)               # what the layers used
    bias = model.attention_mask(torch.ones_like(mask[:1]), tokens.dtype)  # the bias alone
    L = input_ids.shape[1]
    idx = torch.arange(L)
    buckets = relative_position_bucket(idx[None, :] - idx[:, None],
                                       cfg.relative_attention_num_buckets,
                                       cfg.relative_attention_max_distance)
    pooled = mean_pool(tokens, mask)
    unit = F.normalize(pooled, p=2, dim=1)
    lengths = [len(x) for x in ids]
    view = {
        "sentences": sentences,
        "max_tokens": tokenizer.tok.truncation["max_length"],
        "tokens": [[tokenizer.tok.id_to_token(i) for i in row] for row in input_ids.tolist()],
        "ids": input_ids.tolist(),
        "positions": position_ids_from(input_ids, cfg.pad_token_id).tolist(),
        "lengths": lengths,
        "layers": cfg.num_hidden_layers, "heads": cfg.num_attention_heads,
        "buckets": buckets.tolist(),
        "bias_table": rounded(model.relative_bias, 3),                 # (32 buckets, H)
        "norms": [rounded(s.norm(dim=-1), 2) for s in states],         # (13, B, L)
        "pooled_norm": rounded(pooled.norm(dim=1)),
        "pooled": rounded(pooled[:, :8]), "unit": rounded(unit[:, :8]),
    }
    if len(sentences) == 2:
        alone = encoder.encode(sentences)
        padded = encoder.encode(sentences + [FILLER])  # one batch, padded to FILLER's length
        view["cosine"] = float(alone[0] @ alone[1])
        view["cosine_padded"] = float(padded[0] @ padded[1])
        view["padded_to"] = max(len(x) for x in tokenizer.encode(sentences + [FILLER]))
    return view, Trace(q, k, bias, full - bias, lengths)


def heads_of(t: torch.Tensor, n_heads: int) -> torch.Tensor:
    """(B, L, D) -> (B, H, L, head_dim), as SelfAttention.forward splits q and k."""
    B, L, D = t.shape
    return t.view(B, L, n_heads, D // n_heads).transpose(1, 2)


def map_key(sentence: int, layer: int | str, head: int | str, bias: bool, padding: bool) -> str:
    return f"{sentence}/{layer}/{head}/{int(bias)}{int(padding)}"


def encode_map(probs: torch.Tensor) -> str:
    """An attention map (rows of weights in [0, 1]) as little-endian uint16 in base64 (step 1/65535),
    a third of the size of JSON text; the page decodes it."""
    fixed = np.round(probs.float().numpy() * 65535).astype("<u2")
    return base64.b64encode(fixed.tobytes()).decode("ascii")


@torch.inference_mode()
def attention_map(model, trace: Trace, sentence: int, layer: int | str, head: int | str,
                  bias: bool = True, padding: bool = True) -> str:
    """Attention weights of one sentence's real query tokens over all the batch's key positions,
    (length, L), for a layer and head, or "mean" of them. bias/padding False leave that term out
    of the mask: what the model would do without it (the model itself always has both)."""
    key = map_key(sentence, layer, head, bias, padding)
    if key not in trace.maps:
        layers = range(len(trace.q)) if layer == "mean" else [int(layer)]
        probs = torch.stack([layer_weights(model, trace, sentence, i, bias, padding)
                             for i in layers]).mean(0)
        probs = probs.mean(0) if head == "mean" else probs[int(head)]
        trace.maps[key] = encode_map(probs[:trace.lengths[sentence]])
    return trace.maps[key]


def layer_weights(model, trace: Trace, sentence: int, layer: int, bias: bool,
                  padding: bool) -> torch.Tensor:
    """(H, L, L): every head's weights in one layer, from that layer's own attend()."""
    key = (sentence, layer, bias, padding)
    if key not in trace.weights:
        q, k = trace.q[layer][sentence:sentence + 1], trace.k[layer][sentence:sentence + 1]
        L = q.shape[2]
        mask = torch.zeros(1, 1, L, L)
        mask = mask + (trace.bias if bias else 0) + (trace.padding[sentence:sentence + 1] if padding else 0)
        identity = torch.eye(L).expand(1, q.shape[1], L, L)
        trace.weights[key] = model.layers[layer].attn.attend(q, k, identity, mask)[0]
    return trace.weights[key]


def export_maps(model, trace: Trace, budget: int = EXPORT_BUDGET) -> dict[str, str]:
    """The maps for a static page, in the order a lecture shows them, until the budget is spent:
    the model's own attention for every layer and head (both sentences, the page's first view first),
    then with the bias and then the padding left out."""
    out, used = {}, 0
    for bias, padding in ((True, True), (False, True), (True, False)):
        for layer in [*range(len(trace.q)), "mean"]:
            for head in [*range(trace.q[0].shape[1]), "mean"]:
                for sentence in range(len(trace.lengths)):
                    encoded = attention_map(model, trace, sentence, layer, head, bias, padding)
                    if used + len(encoded) > budget:
                        return out
                    out[map_key(sentence, layer, head, bias, padding)] = encoded
                    used += len(encoded)
    return out


# ----------------------------------------------------------------------------- nearest sentences
def read_sentences(path: Path) -> list[str]:
    """A .txt file with a sentence a line, or a .csv/.tsv with a `text` or `sentence` column."""
    if not path.is_file():
        raise SystemExit(f"--nearest: {path} is not a file")
    text = path.read_text(encoding="utf-8")
    if path.suffix in (".csv", ".tsv"):
        rows = list(csv.DictReader(text.splitlines(), delimiter="\t" if path.suffix == ".tsv" else ","))
        column = next((c for c in ("text", "sentence") if rows and c in rows[0]), None)
        if column is None:
            raise SystemExit(f"--nearest: {path} needs a `text` or `sentence` column")
        sentences = [r[column] for r in rows]
    else:
        sentences = text.splitlines()
    sentences = list(dict.fromkeys(s.strip() for s in sentences if s and s.strip()))
    if not 1 <= len(sentences) <= MAX_NEAREST:
        raise SystemExit(f"--nearest: {path} has {len(sentences)} sentences; give 1 to {MAX_NEAREST}")
    return sentences


def nearest(encoder: SentenceEncoder, corpus: tuple[list[str], torch.Tensor] | None,
            sentences: list[str], top: int = 5) -> list[list[dict]]:
    if corpus is None:
        return []
    texts, embeddings = corpus
    scores = encoder.encode(sentences) @ embeddings.T
    best = scores.topk(min(top, len(texts)), dim=1)
    return [[{"text": texts[j], "cosine": round(float(s), 4)} for s, j in zip(vals, idx.tolist())]
            for vals, idx in zip(best.values, best.indices)]


# ----------------------------------------------------------------------------- page and server
def page(data: dict | None = None) -> str:
    """The page; with data, a static copy that needs no server (</ escaped inside the script)."""
    blob = "null" if data is None else json.dumps(data, separators=(",", ":")).replace("</", "<\\/")
    return PAGE.read_text(encoding="utf-8").replace("/*DATA*/null", blob)


class Explainer:
    """The model, the last trace and a lock: one model call at a time, whatever the browser sends."""

    def __init__(self, encoder: SentenceEncoder, corpus=None):
        self.encoder, self.corpus, self.trace, self.lock = encoder, corpus, None, threading.Lock()

    def explain(self, sentences: list[str]) -> dict:
        with self.lock:
            view, self.trace = explain(self.encoder, sentences)
            view["nearest"] = nearest(self.encoder, self.corpus, sentences)
            return view

    def attention(self, query: dict[str, list[str]]) -> dict:
        with self.lock:
            if self.trace is None:
                raise ValueError("no sentence yet: press Run first")
            try:
                s, layer, head = (query[name][0] for name in ("sentence", "layer", "head"))
                sentence, bias, padding = int(s), query["bias"][0] == "1", query["padding"][0] == "1"
                if not 0 <= sentence < len(self.trace.lengths) or \
                        layer not in ["mean", *map(str, range(len(self.trace.q)))] or \
                        head not in ["mean", *map(str, range(self.trace.q[0].shape[1]))]:
                    raise ValueError
            except (KeyError, ValueError):
                raise ValueError("attention needs sentence, layer, head, bias and padding") from None
            key = map_key(sentence, layer, head, bias, padding)
            return {key: attention_map(self.encoder.model, self.trace, sentence, layer, head,
                                       bias, padding)}


def handler(explainer: Explainer):
    class Handler(BaseHTTPRequestHandler):
        def send(self, status: int, body: str, kind: str = "application/json") -> None:
            data = body.encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", f"{kind}; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(data)

        def answer(self, work) -> None:
            try:
                self.send(200, json.dumps(work()))
            except ValueError as e:                    # the user's input: say what to change
                self.send(400, json.dumps({"error": str(e)}))
            except Exception as e:                     # anything else: one line, never a trace
                self.send(500, json.dumps({"error": f"the model failed: {type(e).__name__}: {e}"}))

        def do_GET(self) -> None:
            url = urlparse(self.path)
            if url.path == "/":
                self.send(200, page(), "text/html")
            elif url.path == "/attention":
                self.answer(lambda: explainer.attention(parse_qs(url.query)))
            else:
                self.send(404, json.dumps({"error": "not here: this server serves its page only"}))

        def do_POST(self) -> None:
            if urlparse(self.path).path != "/explain":
                return self.send(404, json.dumps({"error": "not here"}))
            size = int(self.headers.get("Content-Length") or 0)
            if size > 8 * MAX_CHARS:
                return self.send(413, json.dumps({"error": "too long for the page"}))

            def work():
                try:
                    body = json.loads(self.rfile.read(size) or b"{}")
                except json.JSONDecodeError:
                    raise ValueError("the request is not JSON") from None
                return explainer.explain(body.get("sentences") if isinstance(body, dict) else None)
            self.answer(work)

        def log_message(self, *args) -> None:  # quiet: the terminal is on the projector too
            pass
    return Handler


def serve(explainer: Explainer, port: int = 0) -> ThreadingHTTPServer:
    """A server on 127.0.0.1 (port 0: a free one), not yet serving: call serve_forever()."""
    server = ThreadingHTTPServer(("127.0.0.1", port), handler(explainer))
    server.daemon_threads = True
    return server


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="The real model's internals on a local page.")
    parser.add_argument("sentences", nargs="*", help="with --html: one sentence or a pair")
    parser.add_argument("--html", type=Path, help="write a static page for these sentences here")
    parser.add_argument("--port", type=int, default=0, help="default: a free port")
    parser.add_argument("--nearest", type=Path, nargs="?", const=ROOT / "data" / "reviews.tsv",
                        help="also show the nearest sentences of this file (default data/reviews.tsv)")
    parser.add_argument("--weights", help="a model folder (default: all-mpnet-base-v2)")
    args = parser.parse_args(argv)
    if args.html is not None:
        if not 1 <= len(args.sentences) <= 2:
            parser.error("--html takes one sentence or a pair")
        if args.html.exists():
            parser.error(f"{args.html} exists; give a new file name (nothing was changed)")
        try:
            check_input(args.sentences)
        except ValueError as e:
            parser.error(str(e))
    elif args.sentences:
        parser.error("sentences go with --html; the live page has its own boxes")
    texts = read_sentences(args.nearest) if args.nearest else None

    encoder = SentenceEncoder.from_pretrained(args.weights)
    corpus = None
    if texts:
        print(f"embedding {len(texts)} sentences of {args.nearest} for the nearest-sentence panel")
        corpus = (texts, encoder.encode(texts))
    if args.html is not None:
        view, trace = explain(encoder, args.sentences)
        view["nearest"] = nearest(encoder, corpus, args.sentences)
        html = page({"view": view, "maps": export_maps(encoder.model, trace)})
        scratch = args.html.with_name(args.html.name + ".partial")
        scratch.write_text(html, encoding="utf-8")
        scratch.replace(args.html)
        print(f"wrote {args.html} ({len(html) / 1e6:.1f} MB)")
        return
    server = serve(Explainer(encoder, corpus), args.port)
    print(f"the explainer is on http://127.0.0.1:{server.server_port}/  (Ctrl-C stops it)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
