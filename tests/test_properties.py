"""Property-based tests (hypothesis): inputs nobody planned for.

Each property says: the outcome is a valid result, or the documented clear error, never another
kind of crash and never a silently wrong text or label.
  * encode() on arbitrary Unicode (control characters, NUL, lone surrogates, bidi marks, very
    long strings, many sentences), on a tiny random model with the real tokenizer;
  * the tokenizer's padding;
  * the dataset readers on files with BOMs, mixed line endings, blank lines, quotes, wrong
    columns, extra fields and labels outside the set.
"""
import csv
import io

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import data
from mpnet import MPNet, MPNetConfig, SentenceEncoder, Tokenizer
from weights.fetch import fetch

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
# Characters that break naive text handling, mixed into otherwise arbitrary Unicode.
NASTY = ["\x00", "\x01", "\x1b", "\x7f", "\t", "\n", "\r", "\r\n", "\u200f", "\u202e", "\u2028", "\ufeff",
         "\ud800", "\udfff", "\u0301", "\U0001f600", " ", "<pad>", "</s>", '"', "'", ","]
texts = st.lists(st.one_of(st.characters(exclude_categories=()), st.sampled_from(NASTY)), max_size=40).map("".join)


@pytest.fixture(scope="module")
def tiny_encoder():
    """A 2-layer, 16-wide random MPNet behind the real tokenizer: every code path of encode(), fast."""
    torch.manual_seed(0)
    cfg = MPNetConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=4, intermediate_size=32)
    return SentenceEncoder(MPNet(cfg).eval(), Tokenizer(fetch() / "tokenizer.json"))


def is_valid_unicode(s: str) -> bool:
    try:
        s.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


@SETTINGS
@given(sentences=st.lists(texts, min_size=1, max_size=12), batch_size=st.integers(1, 5))
def test_encode_arbitrary_unicode_gives_unit_vectors_or_names_the_bad_sentence(tiny_encoder, sentences, batch_size):
    bad = [i for i, s in enumerate(sentences) if not is_valid_unicode(s)]
    if bad:
        with pytest.raises(ValueError, match=f"sentence {bad[0]} is not valid Unicode"):
            tiny_encoder.encode(sentences, batch_size=batch_size)
        return
    emb = tiny_encoder.encode(sentences, batch_size=batch_size)
    assert emb.shape == (len(sentences), 16) and emb.dtype == torch.float32
    assert torch.isfinite(emb).all()
    # unit length: a 16-term fp32 sum of squares and one division are exact to ~1e-6
    assert ((emb.norm(dim=1) - 1).abs() <= 1e-5).all()
    # row i is sentence i: the same as encoding it alone, up to fp32 rounding of a padded batch
    # (values are O(1); a 2-layer, 16-wide network accumulates well under 1e-5 of rounding)
    alone = tiny_encoder.encode([sentences[-1]])
    assert (emb[-1] - alone[0]).abs().max() <= 1e-5


def test_encode_a_megabyte_string_truncates_to_384_tokens(tiny_encoder):
    huge = "word " * 200_000 + "\x00\u202e" * 1000
    assert len(tiny_encoder.tokenizer.encode([huge])[0]) == 384
    emb = tiny_encoder.encode([huge, "short"])
    assert torch.isfinite(emb).all() and emb.shape == (2, 16)


def test_encode_thousands_of_sentences_keeps_input_order(tiny_encoder):
    sentences = [f"sentence number {i} " + "x " * (i % 37) for i in range(3000)]
    emb = tiny_encoder.encode(sentences, batch_size=64)
    picked = [5, 1234, 2999]
    # the same numbers, whichever batch each sentence landed in (up to fp32 rounding, see above)
    assert (emb[picked] - tiny_encoder.encode([sentences[i] for i in picked], batch_size=1)).abs().max() <= 1e-5


@SETTINGS
@given(ids=st.lists(st.lists(st.integers(0, 30526), min_size=1, max_size=30), min_size=1, max_size=8))
def test_padding_keeps_every_id_and_masks_exactly_the_padding(tiny_encoder, ids):
    batch = tiny_encoder.tokenizer.pad(ids)
    L = max(len(x) for x in ids)
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (len(ids), L)
    for row, x in enumerate(ids):
        assert batch["input_ids"][row, :len(x)].tolist() == x
        assert (batch["input_ids"][row, len(x):] == 1).all()  # <pad>
        assert batch["attention_mask"][row].tolist() == [1] * len(x) + [0] * (L - len(x))


# ----------------------------------------------------------------------------- readers
LABELS = ["card_arrival", "top_up"]
label_names = st.one_of(st.sampled_from(LABELS), st.sampled_from(["", "Top_Up", "lost card", "top_up "]))
csv_texts = st.text(st.characters(exclude_categories=("Cs",)), max_size=30)
# Mixed row by row. A lone \r is not a line end (row i is line i as `wc -l` counts lines): in a CSV or TSV
# row it is an error naming the line, tested in test_data.py.
line_endings = st.sampled_from([["\n"], ["\r\n"], ["\n", "\r\n"], ["\r\n", "\n", "\n"]])


def expected_or_error(rows):
    """The reader's contract for rows of (text, label): the first row it must refuse, or None."""
    for i, (text, label) in enumerate(rows):
        if not text.strip():
            return i, "empty text"
        if label not in LABELS:
            return i, f"label {label!r} is not one of"
    return None


@SETTINGS
@given(rows=st.lists(st.tuples(csv_texts, label_names), max_size=8), ending=line_endings, bom=st.booleans(),
       blank_lines=st.booleans())
def test_csv_reader_round_trips_or_names_file_and_line(tmp_path, rows, ending, bom, blank_lines):
    out = io.StringIO()
    for i, row in enumerate([("text", "category")] + rows):
        one = io.StringIO()  # a "\r\n" terminator makes the writer quote any field holding \r or \n ...
        csv.writer(one, lineterminator="\r\n").writerow(row)
        out.write(one.getvalue()[:-2] + ending[i % len(ending)])  # ... then each row gets its own ending
        if blank_lines:
            out.write("\n")
    folder = tmp_path / "d"
    (folder / "banking77").mkdir(parents=True, exist_ok=True)
    (folder / "banking77" / "categories.json").write_text('["card_arrival", "top_up"]')
    path = folder / "banking77" / "train.csv"
    path.write_bytes(("\ufeff" if bom else "").encode() + out.getvalue().encode("utf-8"))
    problem = expected_or_error(rows)
    if not rows:
        with pytest.raises(ValueError, match=f"{path}: no examples"):
            data.load("banking77", "train", folder)
    elif problem:
        with pytest.raises(ValueError, match=rf"{path}:\d+: {problem[1]}"):
            data.load("banking77", "train", folder)
    else:
        ds = data.load("banking77", "train", folder)
        assert list(zip(ds.texts, (LABELS[y] for y in ds.labels))) == rows  # exactly what was written


@SETTINGS
@given(rows=st.lists(st.tuples(csv_texts, st.sampled_from(["0", "1"])), min_size=1, max_size=8), ending=line_endings,
       damage=st.sampled_from(["none", "extra field", "missing field", "renamed column", "unterminated quote"]))
def test_tsv_reader_refuses_what_it_cannot_read_unambiguously(tmp_path, rows, ending, damage):
    # TSV text cannot hold a tab or a line break; such rows are the damage under test, not the data
    assume(all("\t" not in t and "\n" not in t and "\r" not in t and t.strip() for t, _ in rows))
    header = "sentence\tlabel" if damage != "renamed column" else "sentence\tlabels"
    lines = [f"{t}\t{y}" for t, y in rows]
    if damage == "extra field":
        lines[-1] += "\textra"
    elif damage == "missing field":
        lines[-1] = lines[-1].split("\t")[0]
    elif damage == "unterminated quote":
        lines[-1] = '"' + lines[-1]  # quoting is off in TSVs: a quote is text, never a field delimiter
    folder = tmp_path / "t"
    (folder / "sst2").mkdir(parents=True, exist_ok=True)
    path = folder / "sst2" / "train.tsv"
    path.write_bytes("".join(line + ending[i % len(ending)] for i, line in enumerate([header] + lines)).encode())
    if damage in ("none", "unterminated quote"):
        ds = data.load("sst2", "train", folder)
        expected = [(t.strip(), int(y)) for t, y in rows]
        if damage == "unterminated quote":
            expected[-1] = ('"' + rows[-1][0]).strip(), int(rows[-1][1])
        assert list(zip(ds.texts, ds.labels)) == expected
    elif damage == "renamed column":
        with pytest.raises(ValueError, match=rf"{path}:1: no column 'label'"):
            data.load("sst2", "train", folder)
    else:
        with pytest.raises(ValueError, match=rf"{path}:{len(rows) + 1}: \d fields where the header has 2"):
            data.load("sst2", "train", folder)


@SETTINGS
@given(content=st.binary(max_size=200))
def test_any_bytes_give_a_dataset_or_an_error_naming_the_file(tmp_path, content):
    folder = tmp_path / "b"
    (folder / "banking77").mkdir(parents=True, exist_ok=True)
    (folder / "banking77" / "categories.json").write_text('["card_arrival", "top_up"]')
    path = folder / "banking77" / "train.csv"
    path.write_bytes(b"text,category\r\n" + content)
    try:
        ds = data.load("banking77", "train", folder)
    except ValueError as e:
        assert str(e).startswith(str(path))
        return
    assert all(name in LABELS for name in (LABELS[y] for y in ds.labels)) and all(t.strip() for t in ds.texts)


# ----------------------------------------------------------------------------- run.json is input, not trust (issue 30)
json_values = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
                                     st.text(max_size=20), st.sampled_from(["..", "../x", "/etc/passwd", "a/b"])),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                           max_leaves=8)


@pytest.fixture(scope="module")
def run_folder_files(tmp_path_factory):
    """A valid run folder of the tiny model: run.json, best.safetensors, tokenizer.json."""
    import json
    import shutil
    from dataclasses import asdict

    from safetensors.torch import save_file

    from heads import MultiTaskModel

    folder = tmp_path_factory.mktemp("run")
    torch.manual_seed(0)
    cfg = MPNetConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=4, intermediate_size=32)
    model = MultiTaskModel(MPNet(cfg), {"a": 3, "b": 2})
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, folder / "best.safetensors")
    shutil.copyfile(fetch() / "tokenizer.json", folder / "tokenizer.json")
    info = {"config": {"normalize": False}, "backbone": asdict(cfg),
            "tasks": {"a": {"dataset": "mine.csv", "label_names": ["x", "y", "z"], "test_rows": "test-a.jsonl"},
                      "b": {"dataset": "sst2", "label_names": ["negative", "positive"]}}}
    return folder, json.dumps(info)


@SETTINGS
@given(where=st.sampled_from([("config",), ("config", "normalize"), ("backbone",), ("backbone", "hidden_size"),
                              ("backbone", "num_hidden_layers"), ("backbone", "vocab_size"), ("backbone", "layer_norm_eps"),
                              ("backbone", "pad_token_id"), ("backbone", "num_attention_heads"), ("tasks",),
                              ("tasks", "a"), ("tasks", "a", "label_names"), ("tasks", "a", "test_rows"),
                              ("tasks", "b", "label_names"), ("extra",), ("backbone", "extra")]),
       value=json_values, delete=st.booleans())
def test_a_mutated_run_json_loads_or_is_refused_in_one_line(run_folder_files, tmp_path_factory, where, value, delete):
    """Any value anywhere in run.json (or a key removed): a loaded model, or a ValueError naming the file."""
    import json
    import shutil
    import time

    from eval import load_run

    source, text = run_folder_files
    folder = tmp_path_factory.mktemp("mutated")
    for name in ("best.safetensors", "tokenizer.json"):
        shutil.copyfile(source / name, folder / name)
    info = json.loads(text)
    parent = info
    for key in where[:-1]:
        parent = parent[key]
    if delete:
        parent.pop(where[-1], None)
    else:
        parent[where[-1]] = value
    (folder / "run.json").write_text(json.dumps(info))
    started = time.time()
    try:
        model, _, _ = load_run(folder)
    except ValueError as e:
        assert "\n" not in str(e) and str(folder) in str(e)
    else:
        assert sum(p.numel() for p in model.parameters()) > 0
    assert time.time() - started < 10
