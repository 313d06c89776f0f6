"""Pictures of what the model computes and learnt, and of how a training run went (matplotlib).

    python -m tools.plots readme                   # the README's figures into docs/figures/ (curves: runs/default)
    python -m tools.plots buckets                  # relative-position bucket of every (query, key) pair
    python -m tools.plots bias                     # the learnt relative-position bias, 32 buckets x 12 heads
    python -m tools.plots attention "A sentence."  # attention maps: 12 layers x 12 heads, and one head enlarged
    python -m tools.plots lr-groups                # learning rate per depth for each --lr-groups spec
    python -m tools.plots curves runs/default      # loss per task and validation accuracy against step
    python -m tools.plots confusion runs/x --dataset banking77   # confusion heatmap (top confusions for many classes)
    python -m tools.plots scatter runs/stsb        # STS-B test: cosine against gold score, before and after a pair run

Each writes a PNG (--out, default docs/figures/NAME.png). matplotlib is an optional extra
(pip install -r requirements-plots.txt); nothing else in the project imports it.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
FIGURES = ROOT / "docs" / "figures"


def pyplot():
    try:
        import matplotlib
    except ImportError:
        sys.exit("tools/plots.py needs matplotlib: pip install -r requirements-plots.txt")
    matplotlib.use("Agg")  # files only, no window
    import matplotlib.pyplot as plt
    return plt


def save(fig, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90, bbox_inches="tight")
    print(f"wrote {out}")


# ----------------------------------------------------------------------------- the model's structure
def bucket_labels(num_buckets: int = 32, max_distance: int = 128) -> list[str]:
    """For each bucket, the key-minus-query offsets that fall into it ("-1", "-12..-8", ">=+91")."""
    from mpnet import relative_position_bucket

    offsets = torch.arange(-4 * max_distance, 4 * max_distance + 1)
    ids = relative_position_bucket(offsets, num_buckets, max_distance)
    labels = []
    for b in range(num_buckets):
        members = offsets[ids == b]
        if len(members) == 0:  # bucket 16 would be "distance 0, key to the right": offset 0 is bucket 0
            labels.append("(unused)")
            continue
        lo, hi = int(members.min()), int(members.max())
        if lo == hi:
            labels.append(f"{lo:+d}" if lo else "0")
        elif abs(lo) >= 4 * max_distance or abs(hi) >= 4 * max_distance:
            labels.append(f"<={hi:+d}" if lo < 0 else f">={lo:+d}")
        else:
            labels.append(f"{lo:+d}..{hi:+d}")
    return labels


def plot_buckets(out: Path, length: int = 40) -> None:
    from mpnet import relative_position_bucket

    plt = pyplot()
    idx = torch.arange(length)
    grid = relative_position_bucket(idx[None, :] - idx[:, None]).numpy()
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    shown = ax.imshow(grid, cmap="viridis")
    ax.set(xlabel="key position", ylabel="query position",
           title=f"Relative-position bucket, {length}-token sentence\n(0-15: key left of query, 16-31: right)")
    fig.colorbar(shown, label="bucket id")
    save(fig, out)


def plot_bias(model, out: Path) -> None:
    plt = pyplot()
    bias = model.relative_bias.detach().float().numpy()  # (32 buckets, 12 heads)
    fig, ax = plt.subplots(figsize=(6.5, 8))
    limit = np.abs(bias).max()
    shown = ax.imshow(bias, cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto")
    ax.set_yticks(range(bias.shape[0]), bucket_labels(bias.shape[0], model.cfg.relative_attention_max_distance),
                  fontsize=7)
    ax.set_xticks(range(bias.shape[1]), [str(h) for h in range(bias.shape[1])])
    ax.set(xlabel="head", ylabel="key offset from the query (bucket)",
           title="Learnt relative-position bias (added to attention scores),\nshared by all 12 layers")
    fig.colorbar(shown, label="bias")
    save(fig, out)


def attention_maps(encoder, sentence: str) -> tuple[list[str], torch.Tensor]:
    """(tokens, weights (layers, heads, L, L)) for one sentence, from each layer's real input.

    The model itself uses a fused kernel that never materialises the weights, so they are
    recomputed here from the input each layer receives (captured with a forward pre-hook)."""
    model = encoder.model
    batch = encoder.tokenize([sentence])
    ids, mask = batch["input_ids"], batch["attention_mask"]
    inputs = []
    hooks = [layer.register_forward_pre_hook(lambda m, args: inputs.append(args[0])) for layer in model.layers]
    with torch.no_grad():
        model(ids, mask)
        additive = model.attention_mask(mask, torch.float32)[0]  # (H, L, L): bias (+ padding, none here)
        maps = []
        for layer, x in zip(model.layers, inputs):
            H = layer.attn.n_heads
            split = lambda t: t.view(t.shape[0], H, -1).transpose(0, 1)
            q, k = split(layer.attn.q(x)), split(layer.attn.k(x))
            maps.append((q @ k.transpose(1, 2) / math.sqrt(q.shape[-1]) + additive).softmax(-1))
    for h in hooks:
        h.remove()
    return [encoder.tokenizer.tok.id_to_token(i) for i in ids[0].tolist()], torch.stack(maps)


def plot_attention(encoder, sentence: str, out: Path) -> None:
    plt = pyplot()
    tokens, weights = attention_maps(encoder, sentence)
    maps = weights.numpy()
    n_layers, n_heads = maps.shape[:2]
    fig, axes = plt.subplots(n_layers, n_heads, figsize=(11, 11))
    for (layer, head), ax in np.ndenumerate(axes):
        ax.imshow(maps[layer, head], cmap="Blues", vmin=0, vmax=1)
        ax.set_xticks([])
        ax.set_yticks([])
        if head == 0:
            ax.set_ylabel(f"L{layer}", rotation=0, labelpad=12, fontsize=8)
        if layer == n_layers - 1:
            ax.set_xlabel(f"H{head}", fontsize=8)
    fig.suptitle(f"Attention weights for {sentence!r}: rows layers 0-11, columns heads 0-11\n"
                 f"(in each map: query down, key across)", fontsize=10)
    save(fig, out)

    # Enlarged: the head with the most weight on the previous token, a pattern easy to read.
    previous = torch.diagonal(weights, offset=-1, dim1=2, dim2=3).mean(-1)  # (layers, heads)
    layer, head = divmod(int(previous.argmax()), n_heads)
    fig, ax = plt.subplots(figsize=(6, 5.5))
    shown = ax.imshow(maps[layer, head], cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(tokens)), tokens, rotation=60, ha="right")
    ax.set_yticks(range(len(tokens)), tokens)
    ax.set(xlabel="key (attended to)", ylabel="query (attending)",
           title=f"Layer {layer}, head {head}: the head that puts the most weight\n"
                 f"on the previous token ({float(previous[layer, head]):.2f} on average)")
    fig.colorbar(shown, label="attention weight")
    save(fig, out.with_name(out.stem + "_head.png"))


def plot_lr_groups(out: Path, base_lr: float = 5e-5, head_lr: float = 1e-4, layers: int = 12) -> None:
    from lr_groups import layer_lr, parse

    plt = pyplot()
    depths = list(range(layers + 1))
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for spec in ("flat", "tiers", "llrd:0.9", "llrd:0.8", "ulmfit"):
        lrs = [layer_lr(parse(spec), d, layers, base_lr) for d in depths]
        ax.plot(depths + [layers + 1], lrs + [2 * base_lr if spec == "tiers" else head_lr], marker="o", label=spec)
    ax.set_yscale("log")
    ax.set_xticks(depths + [layers + 1], ["emb"] + [str(i) for i in range(layers)] + ["heads"])
    ax.set(xlabel="depth (embeddings, encoder layer, heads)", ylabel="learning rate",
           title=f"--lr-groups: learning rate per depth (--lr {base_lr:g}, --head-lr {head_lr:g})")
    ax.legend()
    ax.grid(alpha=0.3)
    save(fig, out)


# ----------------------------------------------------------------------------- training runs
def read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        sys.exit(f"error: {path} not found: is {path.parent} a train.py output folder (run python train.py first)?")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_curves(run: Path, out: Path) -> None:
    plt = pyplot()
    losses, epochs = read_jsonl(run / "losses.jsonl"), read_jsonl(run / "metrics.jsonl")
    info = json.loads((run / "run.json").read_text()) if (run / "run.json").is_file() else {"tasks": {}}
    name = lambda task: f"task {task}: {Path(info['tasks'][task]['dataset']).name}" if task in info["tasks"] else f"task {task}"
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    for key in sorted({k for r in losses for k in r if k.startswith("loss_")}):
        points = [(r["step"], r[key]) for r in losses if key in r]
        left.plot(*zip(*points), label=name(key[5:]))
    left.set(xlabel="step", ylabel="training loss (mean since the last log line)", title="Training loss per task")
    for key in sorted({k for r in epochs for k in r if k.startswith("val_acc_")}):
        right.plot([r["step"] for r in epochs], [100 * r[key] for r in epochs], marker="o", label=name(key[8:]))
    right.set(xlabel="step", ylabel="validation accuracy (%)", title="Validation accuracy after each epoch")
    for ax in (left, right):
        ax.legend()
        ax.grid(alpha=0.3)
    fig.suptitle(str(run), fontsize=9)
    save(fig, out)


def plot_confusion(run: Path, dataset: str | None, out: Path, max_classes: int = 15) -> None:
    import data
    from eval import classification_report, load_run

    plt = pyplot()
    model, tokenizer, info = load_run(run)
    task, spec = next(((t, v) for t, v in info["tasks"].items() if dataset in (None, v["dataset"])), (None, None))
    if task is None:
        sys.exit(f"error: {run} has no head for {dataset!r}")
    if "test_rows" in spec:
        rows = data.read_user_rows(run / spec["test_rows"], "text", "label")
        ds = data.user_dataset(run / spec["test_rows"], rows, spec["label_names"], "test")
    else:
        ds = data.load(spec["dataset"], data.EVAL_SPLIT[spec["dataset"]])
    cm = classification_report(np.array(ds.labels), model.predict_proba(tokenizer, ds.texts)[task].argmax(-1).numpy(),
                               len(ds.label_names))["confusion"]
    names, keep = ds.label_names, np.arange(len(ds.label_names))
    title = f"Confusion matrix, {spec['dataset']} (rows: true, columns: predicted)"
    if len(names) > max_classes:  # the classes in the most frequent confusions
        off = cm - np.diag(np.diag(cm))
        order = np.dstack(np.unravel_index(np.argsort(-off, axis=None), off.shape))[0]
        chosen: list[int] = []
        for i, j in order:
            chosen += [c for c in (i, j) if c not in chosen]
            if len(chosen) >= max_classes:
                break
        keep = np.array(sorted(chosen[:max_classes]))
        title = f"The {len(keep)} most confused of {len(names)} classes, {spec['dataset']}\n(rows: true, columns: predicted)"
    sub = cm[np.ix_(keep, keep)]
    fig, ax = plt.subplots(figsize=(1.2 + 0.45 * len(keep), 0.9 + 0.45 * len(keep)))
    ax.imshow(sub, cmap="Blues")
    labels = [names[i][:22] for i in keep]
    ax.set_xticks(range(len(keep)), labels, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(keep)), labels, fontsize=8)
    for (i, j), v in np.ndenumerate(sub):
        if v:
            ax.text(j, i, str(v), ha="center", va="center", fontsize=7, color="white" if v > sub.max() / 2 else "black")
    ax.set(xlabel="predicted", ylabel="true", title=title)
    save(fig, out)


def plot_scatter(run: Path, out: Path) -> None:
    """STS-B test pairs: the cosine of their embeddings against the gold score, for all-mpnet-base-v2 as it
    comes and for the run's best checkpoint (a run with an stsb pair task), side by side."""
    import data
    import metrics
    from eval import load_run
    from heads import MultiTaskModel
    from mpnet import SentenceEncoder

    plt = pyplot()
    model, tokenizer, info = load_run(run)
    if not any(v.get("dataset") == "stsb" and "pair_loss" in v for v in info["tasks"].values()):
        sys.exit(f"error: {run} has no stsb pair task; train one with python train.py --task-a stsb --task-b none")
    test = data.load_stsb("test")
    base = SentenceEncoder.from_pretrained()
    panels = []
    for name, (m, tok) in (("all-mpnet-base-v2, before", (MultiTaskModel(base.model, {}), base.tokenizer)),
                           (f"after fine-tuning ({run.name})", (model, tokenizer))):
        emb = m.encode(tok, test.first + test.second).numpy()
        cos = metrics.cosines(emb[:len(test)], emb[len(test):])
        panels.append((name, cos, 100 * metrics.spearman(cos, test.scores)))
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), sharey=True)
    for ax, (name, cos, rho) in zip(axes, panels):
        ax.scatter(test.scores, cos, s=4, alpha=0.35)
        ax.set(xlabel=f"gold score (0-5), {len(test)} STS-B test pairs", title=f"{name}: Spearman {rho:.2f}")
    axes[0].set_ylabel("cosine of the two embeddings")
    save(fig, out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["readme", "buckets", "bias", "attention", "lr-groups", "curves", "confusion",
                                         "scatter"])
    parser.add_argument("target", nargs="?", help="attention: the sentence; curves, confusion, scatter: the run folder")
    parser.add_argument("--dataset", help="confusion: which task's dataset (default: the first head)")
    parser.add_argument("--out", type=Path, help="the PNG to write (default docs/figures/WHAT.png)")
    args = parser.parse_args(argv)
    if args.what in ("curves", "confusion", "scatter") and not (args.target and (Path(args.target) / "run.json").is_file()):
        parser.error(f"{args.what} needs a train.py output folder, e.g. python -m tools.plots {args.what} runs/default")
    pyplot()  # fail now, not after loading the model, when matplotlib is missing
    out = args.out or FIGURES / f"{args.what.replace('-', '_')}.png"
    sentence = args.target or "The quick brown fox jumps over the lazy dog."
    if args.what in ("readme", "bias", "attention"):
        from mpnet import SentenceEncoder

        encoder = SentenceEncoder.from_pretrained()
    if args.what == "readme":
        plot_buckets(FIGURES / "buckets.png")
        plot_bias(encoder.model, FIGURES / "bias.png")
        plot_attention(encoder, sentence, FIGURES / "attention.png")
        plot_lr_groups(FIGURES / "lr_groups.png")
        if (ROOT / "runs" / "default" / "losses.jsonl").is_file():
            plot_curves(ROOT / "runs" / "default", FIGURES / "curves.png")
        else:
            print("no runs/default/losses.jsonl: run `python train.py` first for the training curve")
    elif args.what == "buckets":
        plot_buckets(out)
    elif args.what == "bias":
        plot_bias(encoder.model, out)
    elif args.what == "attention":
        plot_attention(encoder, sentence, out)
    elif args.what == "lr-groups":
        plot_lr_groups(out)
    elif args.what == "curves":
        plot_curves(Path(args.target), out)
    elif args.what == "scatter":
        plot_scatter(Path(args.target), FIGURES / "stsb_scatter.png" if args.out is None else out)
    else:
        plot_confusion(Path(args.target), args.dataset, out)


if __name__ == "__main__":
    main()
