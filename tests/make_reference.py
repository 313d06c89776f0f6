"""Regenerate tests/fixtures/reference.json with sentence-transformers, the reference library.

    pip install sentence-transformers   # test-time only, never needed to run the project
    python tests/make_reference.py                      # the model from the Hugging Face Hub
    python tests/make_reference.py --model /path/to/all-mpnet-base-v2   # a full local copy

The fixture stores, for each sentence, the token ids and the normalised embedding
that sentence-transformers produces; tests/test_parity.py checks mpnet.py against it.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "reference.json"
HUB_ID = "sentence-transformers/all-mpnet-base-v2"
HUB_REVISION = "e8c3b32edf5434bc2275fc9bab85f82640a19130"

# Far over 384 word pieces: these test truncation.
LONG_EN = " ".join(["The committee reviewed the proposal in detail, raising questions about cost, "
                    "timelines and the risks of relying on a single supplier."] * 20)
LONG_MIXED = " ".join(f"item {i}: naïve café résumé, 東京 {i * 7} km;" for i in range(120))

SENTENCES = [
    # short and ordinary
    "A man is playing a guitar.",
    "Someone is playing an instrument.",
    "The cat sat on the mat.",
    "Hello",
    "ok",
    "?",
    "I love this product, it works perfectly!",
    "The delivery was late and the box was damaged.",
    # empty and whitespace (stripped to nothing: only <s> </s> remain)
    "",
    " ",
    "\t\n  ",
    "   leading and trailing spaces   ",
    # case
    "THIS IS ALL UPPER CASE SHOUTING",
    "MiXeD CaSe iS sTrAnGe",
    # URLs, numbers, code-ish text
    "Read the docs at https://www.sbert.net/docs/pretrained_models.html#model-overview",
    "Email support@example.com or call +1 (555) 010-9999 before 5:30pm.",
    "Version 2.13.0 fixed bug #4521 in `torch.nn.functional.scaled_dot_product_attention`.",
    "3.14159 2.71828 1.41421 0.57721",
    # accents, non-Latin scripts, emoji
    "Crème brûlée à la française, s'il vous plaît.",
    "Über den Wolken muss die Freiheit wohl grenzenlos sein.",
    "¿Dónde está la biblioteca? Está cerca de la estación.",
    "Москва — столица России.",
    "東京は日本の首都です。",
    "北京欢迎你",
    "서울은 한국의 수도입니다.",
    "مرحبا بالعالم",
    "नमस्ते दुनिया",
    "Γειά σου Κόσμε",
    "I'm so happy today 😀🎉👍",
    "🔥🔥🔥",
    "Café ☕ and croissant 🥐 in Paris 🇫🇷",
    # punctuation and repetition
    "Wait... what?!?! No way!!!",
    "very very very very very very very very very very good",
    "<s> </s> <pad> <mask> [UNK] look like special tokens",
    # long: truncated at 384 tokens
    LONG_EN,
    LONG_MIXED,
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=HUB_ID, help="Hub id or local folder of the full sentence-transformers model")
    args = parser.parse_args()

    import sentence_transformers
    from sentence_transformers import SentenceTransformer

    kwargs = {"revision": HUB_REVISION} if args.model == HUB_ID else {}
    st = SentenceTransformer(args.model, device="cpu", **kwargs)
    assert st.max_seq_length == 384, st.max_seq_length
    features = st.tokenize(SENTENCES)  # the same tokenisation that encode() runs
    ids = [row[mask.bool()].tolist() for row, mask in zip(features["input_ids"], features["attention_mask"])]
    emb = st.encode(SENTENCES, batch_size=32, convert_to_numpy=True, normalize_embeddings=False)

    FIXTURE.parent.mkdir(parents=True, exist_ok=True)
    FIXTURE.write_text(json.dumps({
        "model": HUB_ID,
        "revision": HUB_REVISION,
        "sentence_transformers": sentence_transformers.__version__,
        "sentences": SENTENCES,
        "input_ids": ids,
        # 9 significant digits are enough to round-trip every float32 exactly
        "embeddings": [[float(f"{v:.9g}") for v in row] for row in emb],
    }, ensure_ascii=False))
    print(f"wrote {len(SENTENCES)} sentences to {FIXTURE}; longest {max(map(len, ids))} tokens")


if __name__ == "__main__":
    main()
