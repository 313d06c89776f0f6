"""mpnet.py against sentence-transformers' own outputs (tests/fixtures/reference.json)."""
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

REFERENCE = json.loads((Path(__file__).parent / "fixtures" / "reference.json").read_text(encoding="utf-8"))
SENTENCES = REFERENCE["sentences"]


def test_fixture_covers_the_awkward_cases():
    assert len(SENTENCES) >= 30
    assert "" in SENTENCES and any(s.strip() == "" and s for s in SENTENCES)
    assert sum(len(ids) == 384 for ids in REFERENCE["input_ids"]) >= 2  # truncated ones


def test_token_ids_identical(encoder):
    assert encoder.tokenizer.encode(SENTENCES) == REFERENCE["input_ids"]


def test_embeddings_match_within_1e_5(encoder):
    ours = encoder.encode(SENTENCES, batch_size=32)
    ref = torch.tensor(REFERENCE["embeddings"], dtype=torch.float32)
    assert ours.dtype == torch.float32 and ours.shape == ref.shape == (len(SENTENCES), 768)
    diff = (ours - ref).abs().max(dim=1).values
    worst = int(diff.argmax())
    assert diff.max() <= 1e-5, f"sentence {worst} ({SENTENCES[worst][:40]!r}) differs by {diff.max():.2e}"


@pytest.mark.parametrize("batch_size", [1, 7])
def test_batch_size_does_not_change_results(encoder, batch_size):
    ref = torch.tensor(REFERENCE["embeddings"], dtype=torch.float32)
    ours = encoder.encode(SENTENCES[:12], batch_size=batch_size)
    assert (ours - ref[:12]).abs().max() <= 1e-5


def test_unnormalised_embedding_points_the_same_way(encoder):
    raw = encoder.encode(SENTENCES[:5], normalize=False)
    assert not torch.allclose(raw.norm(dim=1), torch.ones(5), atol=1e-3)  # really not normalised
    ref = torch.tensor(REFERENCE["embeddings"][:5], dtype=torch.float32)
    assert (F.normalize(raw, dim=1) - ref).abs().max() <= 1e-5


def test_empty_string_gives_the_reference_embedding(encoder):
    i = SENTENCES.index("")
    ours = encoder.encode([""])[0]
    assert torch.isfinite(ours).all() and abs(float(ours.norm()) - 1) < 1e-5
    assert (ours - torch.tensor(REFERENCE["embeddings"][i])).abs().max() <= 1e-5


def test_output_rows_follow_input_order(encoder):
    # sorting by length inside encode() must not leak into the output order
    picked = [SENTENCES[i] for i in (35, 0, 8, 22)]
    ref = torch.tensor([REFERENCE["embeddings"][i] for i in (35, 0, 8, 22)])
    assert (encoder.encode(picked) - ref).abs().max() <= 1e-5


def test_tokenize_returns_padded_batch(encoder):
    batch = encoder.tokenize(["Hello", "A man is playing a guitar."])
    assert batch["input_ids"].tolist()[0] == REFERENCE["input_ids"][SENTENCES.index("Hello")] + [1] * 6
    assert batch["attention_mask"].sum(dim=1).tolist() == [3, 9]


@pytest.mark.parametrize("bad, error, words", [
    ([], ValueError, "empty list"),
    (None, TypeError, "takes a list, tuple or 1-D numpy array of strings, got NoneType"),
    ({"a", "b"}, TypeError, "got set; convert it with list(...)"),
    (iter(["a"]), TypeError, "got list_iterator"),
    ("just one string", TypeError, "[sentence]"),
    (b"bytes", TypeError, "[sentence]"),
    (["fine", 3], TypeError, "sentence 1 is a int"),
    (["fine", None], TypeError, "sentence 1 is a NoneType"),
    (["fine", "lone \ud800 surrogate"], ValueError, "sentence 1 is not valid Unicode: surrogates not allowed at "
                                                    "character 5 ('\\ud800')"),
])
def test_bad_input_is_rejected_clearly(encoder, bad, error, words):
    with pytest.raises(error, match=None) as info:
        encoder.encode(bad)
    assert words in str(info.value)


@pytest.mark.parametrize("batch_size", [0, -1, 2.5, True, "8"])
def test_bad_batch_size_is_rejected_clearly(encoder, batch_size):
    with pytest.raises(ValueError, match=f"batch_size must be a positive int, got {batch_size!r}"):
        encoder.encode(["x"], batch_size=batch_size)


def test_tuples_and_numpy_arrays_are_accepted_like_lists(encoder):
    import numpy as np

    as_list = encoder.encode(["first sentence", "second one"])
    assert torch.equal(encoder.encode(("first sentence", "second one")), as_list)
    assert torch.equal(encoder.encode(np.array(["first sentence", "second one"])), as_list)
    with pytest.raises(TypeError, match="got ndarray"):  # 2-D: which axis is the sentences? ask, don't guess
        encoder.encode(np.array([["first sentence", "second one"]]))


def test_bf16_path_stays_within_cosine_0_999_of_the_reference():
    """dtype="bf16" (the fast path where bf16 is native; emulated, and slow but still right, elsewhere).
    bf16 keeps 8 significant bits (relative rounding 2^-9 per value); over 12 layers that moves an
    embedding's direction by a few 1e-4, so cosine >= 0.999 to the fp32 reference, the bound issue #2
    set, leaves room without hiding a real error (a wrong layer gives cosines far below 0.99)."""
    import warnings

    from mpnet import SentenceEncoder

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the "emulated bf16" warning on AVX2-only CPUs
        encoder = SentenceEncoder.from_pretrained(dtype="bf16")
    assert encoder.model.layers[0].ffn_in.weight.dtype == torch.bfloat16
    # Batches of 4: the two 384-token sentences pad only two others to 384 (emulated bf16 is slow).
    cos = F.cosine_similarity(encoder.encode(SENTENCES, batch_size=4), torch.tensor(REFERENCE["embeddings"]))
    assert cos.min() >= 0.999, f"sentence {int(cos.argmin())}: cosine {cos.min():.5f}"
