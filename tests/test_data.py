"""Readers on small hand-written snippets in each format, including the awkward rows; batching."""
import json
from collections import Counter

import pytest

import data
from data import IGNORE, LabelledTexts, MultiTaskSampler, load, make_pools


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "banking77").mkdir()
    # CRLF record endings and a newline inside a quoted field, as in the real file
    (tmp_path / "banking77" / "train.csv").write_bytes(
        b'text,category\r\n"I am still waiting on my card?",card_arrival\r\n'
        b'"How do I top up,\nand how long does it take?",top_up\r\n'
        b'"She said ""hi"" to the bank",card_arrival\r\n')
    (tmp_path / "banking77" / "categories.json").write_text('["card_arrival", "top_up"]')
    (tmp_path / "sst2").mkdir()
    (tmp_path / "sst2" / "train.tsv").write_text("sentence\tlabel\nit 's a charming journey . \t1\n"
                                                 "a dull , lifeless film \t0\n")
    (tmp_path / "trec").mkdir()
    (tmp_path / "trec" / "train.tsv").write_text("coarse_label\tfine_label\ttext\n"
                                                 "DESC\tDESC:manner\tHow did serfdom develop ?\n"
                                                 "HUM\tHUM:ind\tWho said `` Hi '' ?\n")
    return tmp_path


def test_banking77_reader_handles_crlf_and_quoted_newlines(folder):
    ds = load("banking77", "train", folder)
    assert ds.texts == ["I am still waiting on my card?", "How do I top up,\nand how long does it take?",
                        'She said "hi" to the bank']
    assert ds.labels == [0, 1, 0] and ds.label_names == ["card_arrival", "top_up"]


def test_sst2_reader_strips_trailing_space(folder):
    ds = load("sst2", "train", folder)
    assert ds.texts == ["it 's a charming journey .", "a dull , lifeless film"]
    assert ds.labels == [1, 0] and ds.label_names == ["negative", "positive"]


def test_trec_reader_coarse_and_fine(folder):
    coarse, fine = load("trec", "train", folder), load("trec-fine", "train", folder)
    assert coarse.texts[1] == "Who said `` Hi '' ?"
    assert [coarse.label_names[y] for y in coarse.labels] == ["DESC", "HUM"]
    assert [fine.label_names[y] for y in fine.labels] == ["DESC:manner", "HUM:ind"]


def test_embedded_reviews_set():
    topic, sentiment = load("reviews-topic", "train"), load("reviews-sentiment", "train")
    test = load("reviews-topic", "test")
    assert len(topic) + len(test) >= 600 and topic.texts == sentiment.texts
    counts = Counter(topic.labels)
    assert len(counts) == 5 and max(counts.values()) > 1.4 * min(counts.values())  # unbalanced, as real feedback
    assert set(sentiment.labels) == {0, 1}
    assert not set(topic.texts) & set(test.texts)  # the fixed split does not leak


def test_unknown_dataset_name():
    with pytest.raises(ValueError, match="unknown dataset 'imdb'; known: reviews-topic"):
        load("imdb", "train")


def test_missing_file_and_unknown_split(folder):
    with pytest.raises(FileNotFoundError, match=r"banking77[/\\]test.csv not found"):
        load("banking77", "test", folder)
    with pytest.raises(ValueError, match="sst2 has splits train, dev, test, not 'validation'"):
        load("sst2", "validation", folder)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load("sst2", "train", folder / "nowhere")


def test_label_outside_label_set_names_file_and_line(folder):
    (folder / "sst2" / "train.tsv").write_text("sentence\tlabel\ngood \t1\nodd row \t2\n")
    with pytest.raises(ValueError, match=r"train.tsv:3: label '2' is not one of the 2 labels of sst2"):
        load("sst2", "train", folder)
    with open(folder / "banking77" / "train.csv", "ab") as f:
        f.write(b'"where is my money",lost_money\r\n')
    with pytest.raises(ValueError, match=r"train.csv:6: label 'lost_money'"):
        load("banking77", "train", folder)


def test_empty_dataset_is_an_error(folder):
    (folder / "sst2" / "train.tsv").write_text("sentence\tlabel\n")
    with pytest.raises(ValueError, match="no examples for sst2/train"):
        load("sst2", "train", folder)


def test_pools_share_examples_of_one_file_and_mark_missing_labels():
    a = LabelledTexts("reviews-topic", "train", ["x", "y"], [3, 1], ["t"] * 5, source="f")
    b = LabelledTexts("reviews-sentiment", "train", ["x", "y"], [0, 1], ["neg", "pos"], source="f")
    c = LabelledTexts("sst2", "train", ["z"], [1], ["neg", "pos"], source="g")
    shared = make_pools({"a": a, "b": b}, Letters())
    assert len(shared) == 1 and shared[0].labels == {"a": [3, 1], "b": [0, 1]}
    assert shared[0].ids == [[120], [121]]  # each text tokenised once, in the pool's order
    separate = make_pools({"a": a, "b": c}, Letters())
    assert [p.labels for p in separate] == [{"a": [3, 1], "b": [IGNORE, IGNORE]}, {"b": [1], "a": [IGNORE]}]


class Letters:
    """A stand-in tokenizer: one id per character."""
    def encode(self, texts):
        return [[ord(ch) for ch in t] for t in texts]


def test_sampler_mixes_by_temperature_and_keeps_small_pools_going():
    sampler = MultiTaskSampler([900, 100], batch_size=10, temperature=2.0, seed=0)
    picks = Counter(p for p, _ in sampler)
    assert len(sampler) == 100 and sum(picks.values()) == 100
    # sqrt(900) : sqrt(100) = 3 : 1, so the small pool gets about a quarter of the batches,
    # more than its 10% share of the data and more than it has rows for (reshuffled and reused)
    assert 15 <= picks[1] <= 35
    proportional = MultiTaskSampler([900, 100], batch_size=10, temperature=1.0, seed=0)
    assert Counter(p for p, _ in proportional)[1] < picks[1]


def test_sampler_covers_a_pool_before_repeating():
    sampler = MultiTaskSampler([40], batch_size=8, seed=3)
    rows = [r for _, batch in sampler for r in batch]
    assert sorted(rows) == list(range(40))


# ----------------------------------------------------------------------------- one reader for text files (issue 30, item 10)
def test_predict_reads_a_tsv_whose_text_starts_with_a_quote_line_by_line(tmp_path):
    from predict import read_texts

    path = tmp_path / "new.tsv"
    path.write_text('text\n"Quoted" at the start\nthe next line\n', encoding="utf-8")
    assert list(read_texts(path, "text")) == [(2, '"Quoted" at the start'), (3, "the next line")]


def test_predict_refuses_a_csv_row_with_a_missing_field(tmp_path):
    from predict import read_texts

    path = tmp_path / "new.csv"
    path.write_text("text,id\nfirst,1\nsecond\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"new.csv:3: 1 fields where the header has 2"):
        list(read_texts(path, "text"))


def test_a_field_longer_than_the_csv_modules_default_limit_is_read(tmp_path):
    from predict import read_texts

    long = "word " * 40_000  # 200,000 characters; the csv module stops at 131,072 by default
    (tmp_path / "long.csv").write_text(f"text\n{long}\n", encoding="utf-8")
    assert list(read_texts(tmp_path / "long.csv", "text")) == [(2, long)]
    (tmp_path / "long.tsv").write_text(f"text\tlabel\n{long}\tpos\n", encoding="utf-8")
    assert data.read_table(tmp_path / "long.tsv", ["text", "label"])[0][1]["text"] == long


def test_a_lone_carriage_return_neither_splits_a_line_nor_shifts_line_numbers(tmp_path):
    from predict import read_texts

    path = tmp_path / "new.txt"
    path.write_bytes(b"one\rstill the first line\r\nsecond\n\nfourth\n")
    assert list(read_texts(path, None)) == [(1, "one\rstill the first line"), (2, "second"), (4, "fourth")]
    table = tmp_path / "train.tsv"
    table.write_bytes(b"text\tlabel\nfine\tpos\nbroken\rtext\tneg\n")
    with pytest.raises(ValueError, match=r"train.tsv:3: a carriage return"):
        data.read_table(table, ["text", "label"])
    csv_file = tmp_path / "train.csv"  # an old Mac line end in a CSV: named, not read as a row break
    csv_file.write_bytes(b'text,label\r"quoted\rinside",pos\nfine,neg\n')
    with pytest.raises(ValueError, match=r"train.csv:1: a carriage return"):
        data.read_table(csv_file, ["text", "label"], delimiter=",")
    csv_file.write_bytes(b'text,label\n"quoted\rinside",pos\nfine,neg\n')  # inside quotes it is text
    assert [r["text"] for _, r in data.read_table(csv_file, ["text", "label"], delimiter=",")] == ["quoted\rinside", "fine"]


def test_a_lone_surrogate_in_jsonl_is_an_error_at_read_time(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text('{"text": "fine", "label": "a"}\n{"text": "bad \\ud800 here", "label": "b"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"train.jsonl:2: a lone surrogate"):
        data.read_user_rows(path, "text", "label")


def test_predictions_name_the_input_line(tmp_path, monkeypatch):
    import predict

    class Echo:
        def predict(self, texts, batch_size):
            return [{"text": t} for t in texts]

    (tmp_path / "in.txt").write_text("first\n\nthird\n", encoding="utf-8")
    predict.predict_file(Echo(), tmp_path / "in.txt", tmp_path / "out.jsonl", None, 8)
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert rows == [{"line": 1, "text": "first"}, {"line": 3, "text": "third"}]
