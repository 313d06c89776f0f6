"""Where does a reimplementation first diverge? Hidden states, layer by layer, against transformers.

    python -m tools.layer_parity                       # a few built-in sentences
    python -m tools.layer_parity "A sentence." "Another one, a bit longer."

Runs mpnet.py's encoder and Hugging Face `transformers`' MPNetModel (a test-only dependency),
both loaded from the same local weights folder, on the same token ids, and prints the largest
absolute difference at real tokens after the embeddings and after each of the 12 layers. The
first row over the tolerance is where to look: a wrong relative-position bucket shows up at
layer 0 (the first place attention runs), a wrong weight in layer 7 at layer 7, and every row
after the first bad one inherits its error, so only the first one tells you anything.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mpnet import SentenceEncoder  # noqa: E402
from weights.fetch import weights_dir  # noqa: E402

# fp32, two implementations with different kernels (fused SDPA here, an explicit softmax there):
# agreement to ~1e-6 is rounding; a bug of any kind is orders of magnitude larger.
TOLERANCE = 1e-5
SENTENCES = ["A man is playing a guitar.", "Hi",
             "The relative position bias is shared by every layer, so it is computed once per forward pass."]


def our_hidden_states(encoder: SentenceEncoder, batch: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """(B, L, D) after the embeddings and after each layer, read with forward hooks, zero at padding."""
    model, mask = encoder.model, batch["attention_mask"]
    states: list[torch.Tensor] = []

    def record(module, inputs, out) -> None:
        states.append(out * mask[..., None])

    hooks = [model.embeddings.register_forward_hook(record)]
    hooks += [layer.register_forward_hook(record) for layer in model.layers]
    try:
        with torch.no_grad():
            model(batch["input_ids"], mask)
    finally:
        for h in hooks:
            h.remove()
    return states


def reference_hidden_states(batch: dict[str, torch.Tensor], folder: Path) -> list[torch.Tensor]:
    from transformers import MPNetModel

    reference = MPNetModel.from_pretrained(folder, use_safetensors=True).eval()  # never a pickle .bin
    with torch.no_grad():
        out = reference(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True)
    return [h * batch["attention_mask"][..., None] for h in out.hidden_states]


def compare(ours: list[torch.Tensor], theirs: list[torch.Tensor]) -> list[tuple[str, float]]:
    """[(name, max |ours - reference| at real tokens)] for embeddings, layer 0 ... layer 11."""
    names = ["embeddings"] + [f"layer {i}" for i in range(len(ours) - 1)]
    return [(n, float((a - b).abs().max())) for n, a, b in zip(names, ours, theirs)]


def report(diffs: list[tuple[str, float]], tolerance: float = TOLERANCE) -> tuple[str, str | None]:
    """The printed table and the name of the first layer over the tolerance (None if all agree)."""
    first = next((name for name, d in diffs if d > tolerance), None)
    lines = [f"{'after':12} {'max |diff|':>12}"] + [f"{n:12} {d:12.2e}{'  <- first divergence' if n == first else ''}"
                                                     for n, d in diffs]
    lines.append(f"first layer over {tolerance:g}: {first}" if first else f"every layer agrees within {tolerance:g}")
    return "\n".join(lines), first


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sentences", nargs="*", default=SENTENCES)
    args = parser.parse_args()
    encoder = SentenceEncoder.from_pretrained()
    batch = encoder.tokenize(args.sentences)
    text, first = report(compare(our_hidden_states(encoder, batch), reference_hidden_states(batch, weights_dir())))
    print(text)
    sys.exit(1 if first else 0)


if __name__ == "__main__":
    main()
