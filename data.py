"""Datasets, batching and the multi-task sampler.

Two kinds of data:
  * the embedded customer-feedback set, data/reviews.tsv (written for this project, committed):
    each sentence carries a topic label (Task A) and a sentiment label (Task B);
  * the real benchmarks in ../shared/data (never copied into this repo), named by --data-dir,
    else $MPNET_DATA_DIR, else ../shared/data beside the repo, else the folder that
    `python -m tools.fetch_data` downloads them into. Each reader follows the quirks
    documented in that dataset's SOURCE.md.

A dataset name picks the file and the label column:
  reviews-topic, reviews-sentiment (splits train/test)   sst2 (train/dev/test)
  banking77 (train/test)   trec, trec-fine (train/test)
  stsb: STS-B's scored sentence pairs (train/dev/test), a pair task (SentencePairs)
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import random
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterator

import torch

from heads import IGNORE  # the label of an example that has none for a task

ROOT = Path(__file__).resolve().parent
DATA_ENV = "MPNET_DATA_DIR"
REVIEWS = ROOT / "data" / "reviews.tsv"
LONGEST_LINE = 1 << 20  # bytes of one line a reader holds: a longer one is refused, or cut (lines_of)


def user_data_dir() -> Path:
    """Where `python -m tools.fetch_data` puts the benchmarks by default."""
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "mpnet-data"


def data_dir(path: str | os.PathLike | None = None) -> Path:
    """--data-dir, else $MPNET_DATA_DIR, else ../shared/data beside the repo, else the folder that
    `python -m tools.fetch_data` fills (user_data_dir())."""
    shared = ROOT.parent / "shared" / "data"
    folder = Path(path or os.environ.get(DATA_ENV) or (shared if shared.is_dir() else user_data_dir()))
    if not folder.is_dir():
        raise FileNotFoundError(f"data folder {folder} does not exist; download the benchmarks with "
                                f"`python -m tools.fetch_data`, or pass --data-dir / set ${DATA_ENV}")
    return folder


@dataclass
class LabelledTexts:
    """One task's examples: texts, integer labels and the names of the labels."""
    name: str
    split: str
    texts: list[str]
    labels: list[int]
    label_names: list[str]
    source: str = ""  # the file and the splits made of it: tasks of one source share examples
    file: str = ""    # the data file itself, whatever its name holds ('#' too): resumes check it

    def __len__(self) -> int:
        return len(self.texts)


@dataclass
class SentencePairs:
    """One pair task's examples: sentence pairs and a gold score each. Scored pairs (sentence1,
    sentence2, score) train with CoSENT; positive pairs (anchor, positive) with in-batch negatives,
    each scored 1."""
    name: str
    split: str
    first: list[str]
    second: list[str]
    scores: list[float]
    loss: str                 # "cosent" or "in-batch" (heads.PAIR_LOSSES)
    source: str = ""
    file: str = ""

    def __len__(self) -> int:
        return len(self.first)

    @property
    def texts(self) -> list[str]:
        """Every sentence: the first ones, then the second ones (as a PairPool holds them)."""
        return self.first + self.second

    def take(self, rows: list[int], split: str, tag: str) -> "SentencePairs":
        """The pairs at these rows, as another split (tag: what the source records about it)."""
        return SentencePairs(self.name, split, [self.first[i] for i in rows], [self.second[i] for i in rows],
                             [self.scores[i] for i in rows], self.loss, self.source + tag, self.file)


def _checked(name: str, split: str, path: Path, rows: list[tuple[int, str, str]],
             label_names: list[str]) -> LabelledTexts:
    """rows: (line number, text, label name). Every text must be non-empty, every label in label_names."""
    index = {n: i for i, n in enumerate(label_names)}
    texts, labels = [], []
    for line, text, label in rows:
        if not text.strip():
            raise ValueError(f"{path}:{line}: empty text; remove the row or fill in its text")
        if label not in index:
            raise ValueError(f"{path}:{line}: label {label!r} is not one of the {len(label_names)} labels of "
                             f"{name} ({', '.join(label_names[:6])}{', ...' if len(label_names) > 6 else ''})")
        texts.append(text)
        labels.append(index[label])
    if not texts:
        raise ValueError(f"{path}: no examples for {name}/{split}")
    return LabelledTexts(name, split, texts, labels, label_names, source=f"{path}", file=f"{path}")


def read_table(path: Path, columns: list[str], delimiter: str = "\t") -> list[tuple[int, dict[str, str]]]:
    """(line number, {column: value}) for every row of a CSV or TSV file with a header (table_rows)."""
    return list(table_rows(path, columns, delimiter))


def lines_of(path: Path, cut: bool = False) -> Iterator[tuple[int, str, int]]:
    """(line number, text with its line feed, its length in bytes without the line feed) for each line
    of a UTF-8 file: the one line reader under every reader of your text. Lines end at a line feed
    only (CRLF is fine), so line i is line i as `wc -l` counts it; a byte-order mark is dropped; bytes
    that are not UTF-8 are an error naming their own line. No more than LONGEST_LINE bytes of a line are held in memory: a
    longer line is an error naming it, or with `cut` its first LONGEST_LINE bytes are kept (the model
    reads 384 tokens, some 2,000 characters of English) and the rest is skipped unread."""
    with open(path, "rb") as f:
        number = 0
        while raw := f.readline(LONGEST_LINE + 1):
            number += 1
            length, ended = len(raw) - raw.endswith(b"\n"), raw.endswith(b"\n")
            if length > LONGEST_LINE:
                while not ended and (rest := f.readline(LONGEST_LINE)):  # skip the rest, a MiB at a time
                    ended = rest.endswith(b"\n")
                    length += len(rest) - ended
                if not cut:
                    raise ValueError(f"{path}:{number}: a line of {length:,} bytes; a line may hold at most "
                                     f"{LONGEST_LINE:,} (1 MiB)")
                raw = raw[:LONGEST_LINE]
            try:
                text = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as e:
                if not (length > LONGEST_LINE and e.reason == "unexpected end of data"):
                    raise ValueError(f"{path}:{number}: not UTF-8 text ({e.reason}); re-save it as UTF-8") from None
                text = raw[:e.start].decode("utf-8")  # the cut fell inside a character: drop its first bytes
            yield number, text, length


def table_rows(path: Path, columns: list[str], delimiter: str = "\t") -> Iterator[tuple[int, dict[str, str]]]:
    """(line number, {column: value}) for each row of a CSV or TSV file with a header, streamed.

    TSVs are read with quoting off (a bare " is text: STS-B and TREC contain them); CSVs follow
    RFC 4180 (quoted fields may hold commas, quotes and newlines: Banking77 has them). A byte-order
    mark, CRLF line endings and blank lines are fine. Lines come from lines_of, so row i is line i as
    `wc -l` counts it, and a line or a field holds at most LONGEST_LINE. Anything that would make a
    row's fields ambiguous is an error naming file and line: a missing column, a row with more or
    fewer fields than the header (in a TSV, a tab or newline inside a text), a lone carriage return
    outside quotes, an unterminated quote, bytes that are not UTF-8.
    """
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found")
    kind = "TSV" if delimiter == "\t" else "CSV"
    quoting = csv.QUOTE_NONE if kind == "TSV" else csv.QUOTE_MINIMAL
    csv.field_size_limit(LONGEST_LINE)  # characters of a field (the default stops at 131,072)
    reader = csv.reader((text for _, text, _ in lines_of(path)), delimiter=delimiter, quoting=quoting,
                        strict=True)
    try:
        header = next(reader, None)
        if header is None:
            raise ValueError(f"{path}: the file is empty; it needs a header line naming the columns")
        twice = sorted({c for c in header if header.count(c) > 1})
        if twice:
            raise ValueError(f"{path}:1: the header names {', '.join(map(repr, twice))} twice; "
                             f"each column needs its own name")
        missing = [c for c in columns if c not in header]
        if missing:
            raise ValueError(f"{path}:1: no column {', '.join(map(repr, missing))}; the header has "
                             f"{', '.join(map(repr, header))}")
        for fields in reader:
            if not fields:
                continue  # a blank line
            if len(fields) != len(header):
                raise ValueError(f"{path}:{reader.line_num}: {len(fields)} fields where the header has "
                                 f"{len(header)}" + (" (a tab inside a text?)" if kind == "TSV" else ""))
            yield reader.line_num, dict(zip(header, fields))
    except csv.Error as e:
        if "field limit" in str(e):  # a quoted field over many lines
            raise ValueError(f"{path}:{reader.line_num}: a field of over {LONGEST_LINE:,} characters; "
                             f"a field may hold at most that") from None
        if "new-line character" in str(e):
            raise ValueError(f"{path}:{reader.line_num}: a carriage return (\\r) inside a row; lines end at \\n "
                             f"(or \\r\\n): remove it, or quote the field in a CSV") from None
        raise ValueError(f"{path}:{reader.line_num}: malformed {kind} ({e})") from None


def _split_file(path_of: dict[str, str], name: str, split: str, folder: Path) -> Path:
    if split not in path_of:
        raise ValueError(f"{name} has splits {', '.join(path_of)}, not {split!r}")
    return folder / path_of[split]


REVIEW_TOPICS = ["customer_service", "delivery", "price_value", "product_quality", "technical_issue"]
SENTIMENTS = ["negative", "positive"]  # 0/1, as in SST-2


def read_reviews(column: str, split: str, path: Path = REVIEWS) -> LabelledTexts:
    if split not in ("train", "test"):
        raise ValueError(f"reviews has splits train, test, not {split!r}")
    names = REVIEW_TOPICS if column == "topic" else SENTIMENTS
    rows = [(line, r["text"], r[column]) for line, r in read_table(path, ["text", "split", column]) if r["split"] == split]
    return _checked(f"reviews-{column}", split, path, rows, names)


def read_sst2(split: str, folder: Path) -> LabelledTexts:
    # GLUE format: lower-cased, tokenised text with a trailing space; no quote characters.
    path = _split_file({"train": "sst2/train.tsv", "dev": "sst2/dev.tsv", "test": "sst2/test_labeled.tsv"},
                       "sst2", split, folder)
    rows = [(line, r["sentence"].strip(), SENTIMENTS[int(r["label"])] if r["label"] in ("0", "1") else r["label"])
            for line, r in read_table(path, ["sentence", "label"])]
    return _checked("sst2", split, path, rows, SENTIMENTS)


def read_banking77(split: str, folder: Path) -> LabelledTexts:
    # RFC-4180 CSV with CRLF endings and newlines inside quoted fields: the csv module keeps them inside the field.
    path = _split_file({"train": "banking77/train.csv", "test": "banking77/test.csv"}, "banking77", split, folder)
    categories = json.loads((folder / "banking77" / "categories.json").read_text(encoding="utf-8"))
    rows = [(line, r["text"], r["category"]) for line, r in read_table(path, ["text", "category"], delimiter=",")]
    return _checked("banking77", split, path, rows, categories)


TREC_COARSE = ["ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"]


def read_trec(split: str, folder: Path, fine: bool = False) -> LabelledTexts:
    path = _split_file({"train": "trec/train.tsv", "test": "trec/test.tsv"}, "trec", split, folder)
    column = "fine_label" if fine else "coarse_label"
    rows = [(line, r["text"], r[column]) for line, r in read_table(path, ["text", column])]
    if fine:  # the 50 fine labels are those of the training file
        names = sorted({r["fine_label"] for _, r in read_table(folder / "trec" / "train.tsv", ["fine_label"])})
    else:
        names = TREC_COARSE
    return _checked("trec-fine" if fine else "trec", split, path, rows, names)


DATASETS = {
    "reviews-topic": lambda split, folder: read_reviews("topic", split),
    "reviews-sentiment": lambda split, folder: read_reviews("sentiment", split),
    "sst2": read_sst2,
    "banking77": read_banking77,
    "trec": read_trec,
    "trec-fine": lambda split, folder: read_trec(split, folder, fine=True),
}
EVAL_SPLIT = {"reviews-topic": "test", "reviews-sentiment": "test", "sst2": "dev",
              "banking77": "test", "trec": "test", "trec-fine": "test"}


def load(name: str, split: str, folder: str | os.PathLike | None = None) -> LabelledTexts:
    """A dataset by short name (see DATASETS) and split."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    return DATASETS[name](split, None if name.startswith("reviews") else data_dir(folder))


def fingerprints(sets: list[LabelledTexts], extra: list[str | None] = ()) -> dict[str, str]:
    """{file: sha256} of every file the datasets were read from, and of the `extra` files (test and label
    files): run.json keeps them, and a resume refuses data that changed under the saved sampler."""
    paths = sorted({ds.file for ds in sets if ds.file} | {p for p in extra if p})
    return {p: hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in paths if Path(p).is_file()}  # (in-memory sets: none)


# ----------------------------------------------------------------------------- your own data
USER_FORMATS = (".csv", ".tsv", ".jsonl")


def is_user_file(name: str) -> bool:
    """A dataset argument that names a file of your own rather than a built-in dataset."""
    return name.lower().endswith(USER_FORMATS)


def short_name(name: str) -> str:
    """A dataset's name for a result key: a built-in one's own, a file's stem (mine.csv -> mine)."""
    return Path(name).stem if is_user_file(name) else name


def refuse_lone_surrogates(value: str, where: str) -> str:
    """value, unless it holds a lone surrogate (what JSON's \\ud800 escapes decode to): that has no UTF-8
    form, so the tokenizer would fail on it mid-run. Named at read time instead, with `where` (file:line)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"{where}: a lone surrogate ({value[e.start]!r}) at character {e.start} of {value[:40]!r}; "
                         f"it is not valid Unicode, repair the record") from None
    return value


def read_user_rows(path: str | os.PathLike, text_column: str, label_column: str) -> list[tuple[int, str, str]]:
    """(line, text, label) from a .csv (RFC 4180: quotes, embedded newlines), .tsv (quoting off) or
    .jsonl (one JSON object a line) file. Labels are read as strings; an integer label 3 is "3".
    Empty texts and empty labels are errors naming file and line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found")
    rows = []
    for line, record in user_records(path, (text_column, label_column)):
        text, label = record[text_column], record[label_column]
        if not isinstance(text, str) or not isinstance(label, (str, int)) or isinstance(label, bool):
            raise ValueError(f"{path}:{line}: {text_column!r} must be a string and {label_column!r} "
                             f"a string or integer")
        rows.append((line, refuse_lone_surrogates(text, f"{path}:{line}"),
                     refuse_lone_surrogates(str(label), f"{path}:{line}")))
    for line, text, label in rows:
        if not text.strip():
            raise ValueError(f"{path}:{line}: empty text in column {text_column!r}; remove the row or fill it in")
        if not label.strip():
            raise ValueError(f"{path}:{line}: empty label in column {label_column!r}; every row needs a label")
    if not rows:
        raise ValueError(f"{path}: no rows")
    spaced = [(line, label) for line, _, label in rows if label != label.strip()]
    if spaced:  # " pos" would otherwise be a class of its own beside "pos"
        line, label = spaced[0]
        print(f"{path}: {len(spaced)} labels had spaces around them (first: line {line}, {label!r}); "
              f"read without the spaces", file=sys.stderr)
        rows = [(line, text, label.strip()) for line, text, label in rows]
    return rows


def read_label_names(path: str | os.PathLike) -> list[str]:
    """An explicit label set: one label a line (blank lines ignored), in the order given."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found")
    # A line ends at a line feed alone, as in every other reader here: not at \r or U+2028.
    names = [text.strip() for _, text, _ in lines_of(path) if text.strip()]
    if len(set(names)) != len(names) or len(names) < 2:
        raise ValueError(f"{path}: a labels file needs at least 2 distinct labels, one a line, no repeats")
    return names


def user_dataset(path: str | os.PathLike, rows: list[tuple[int, str, str]], label_names: list[str],
                 split: str) -> LabelledTexts:
    """Rows of a user file as a task's examples; a label outside label_names is an error naming file and line."""
    return _checked(str(path), split, Path(path), rows, label_names)


def stratified_split(path: str | os.PathLike, rows: list[tuple[int, str, str]], fraction: float,
                     seed: int) -> tuple[list[int], list[int]]:
    """Seeded (train, test) row indices with each label's share kept in both parts.

    Every label needs 2 rows (one for each side) and the file at least 2 labels; otherwise an
    error names the file, and the line of a label seen once.
    """
    by_label: dict[str, list[int]] = {}
    for i, (_, _, label) in enumerate(rows):
        by_label.setdefault(label, []).append(i)
    if len(by_label) < 2:
        raise ValueError(f"{path}: every row has the label {next(iter(by_label))!r}; a classifier needs at least 2 labels")
    for label, members in by_label.items():
        if len(members) < 2:
            raise ValueError(f"{path}:{rows[members[0]][0]}: label {label!r} is on this row only; a stratified "
                             f"split needs 2 of each label (add examples, or give a test file with --test-a/--test-b)")
    rng = random.Random(seed)
    train, test = [], []
    for label in sorted(by_label):
        members = by_label[label][:]
        rng.shuffle(members)
        n_test = min(len(members) - 1, max(1, round(fraction * len(members))))
        test += members[:n_test]
        train += members[n_test:]
    return sorted(train), sorted(test)


def read_stsb(split: str, folder: str | os.PathLike | None = None) -> list[tuple[str, str, float]]:
    """STS Benchmark pairs (sentence1, sentence2, gold score 0..5) for split train/dev/test.

    The sentences contain bare double quotes, so the TSV is read with quoting off.
    """
    path = data_dir(folder) / "stsb" / f"sts-{split}.tsv"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (STS-B splits are train, dev, test)")
    pairs = read_pairs(path, (0.0, 5.0))
    return list(zip(pairs.first, pairs.second, pairs.scores))


def load_stsb(split: str, folder: str | os.PathLike | None = None) -> SentencePairs:
    """STS-B as a pair task: its dev split validates, its test split is scored once at the end."""
    path = data_dir(folder) / "stsb" / f"sts-{split}.tsv"
    if split not in ("train", "dev", "test"):
        raise ValueError(f"stsb has splits train, dev, test, not {split!r}")
    return replace(read_pairs(path, (0.0, 5.0)), name="stsb", split=split)


# The columns of a pair file, as sentence-transformers' datasets name them.
SCORED_PAIR = ("sentence1", "sentence2", "score")  # CoSENT
POSITIVE_PAIR = ("anchor", "positive")             # in-batch negatives


def columns_of(path: str | os.PathLike) -> list[str]:
    """A user file's column names: a CSV's or TSV's header, a JSONL file's first record's keys."""
    path = Path(path)
    lines = (text for _, text, _ in lines_of(path))
    try:  # a file that cannot be read has no columns here; its reader names the problem
        if path.suffix.lower() == ".jsonl":
            record = json.loads(next((text for text in lines if text.strip()), "{}"))
            return list(record) if isinstance(record, dict) else []
        delimiter = "," if path.suffix.lower() == ".csv" else "\t"
        quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
        return next(csv.reader(lines, delimiter=delimiter, quoting=quoting), [])
    except (ValueError, RecursionError, csv.Error):  # (json.JSONDecodeError is a ValueError)
        return []


def is_pair_file(path: str | os.PathLike, text_column: str = "text") -> bool:
    """A file of sentence pairs: it names a pair column (sentence1, sentence2, anchor, positive) and
    not the classification text column."""
    columns = columns_of(path)
    return text_column not in columns and bool(set(columns) & set(SCORED_PAIR[:2] + POSITIVE_PAIR))


def user_records(path: Path, columns: tuple[str, ...]) -> Iterator[tuple[int, dict]]:
    """(line, {column: value}) of a .csv, .tsv (table_rows) or .jsonl file, each record checked for
    the columns. A JSONL value keeps its JSON type."""
    if path.suffix.lower() != ".jsonl":
        yield from table_rows(path, list(columns), "," if path.suffix.lower() == ".csv" else "\t")
        return
    for line, raw, _ in lines_of(path):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except (json.JSONDecodeError, RecursionError) as e:
            raise ValueError(f"{path}:{line}: not a JSON object ({getattr(e, 'msg', 'nested too deeply')})") from None
        missing = [c for c in columns if not isinstance(record, dict) or c not in record]
        if missing:
            raise ValueError(f"{path}:{line}: no field {', '.join(map(repr, missing))}"
                             + (f"; this record has {', '.join(map(repr, record))}" if isinstance(record, dict) else ""))
        yield line, record


def read_pairs(path: str | os.PathLike, score_range: tuple[float, float]) -> SentencePairs:
    """A pair file: sentence1, sentence2, score (CoSENT; each score inside score_range) or anchor,
    positive (in-batch negatives). Every problem is one line naming file and line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found")
    columns = columns_of(path)
    scored = SCORED_PAIR[0] in columns or SCORED_PAIR[1] in columns
    wanted = SCORED_PAIR if scored else POSITIVE_PAIR
    if not set(wanted) <= set(columns):
        raise ValueError(f"{path}:1: a pair file needs the columns {', '.join(SCORED_PAIR)} (scored pairs) or "
                         f"{', '.join(POSITIVE_PAIR)} (positive pairs); it has {', '.join(map(repr, columns))}")
    low, high = score_range
    first, second, scores = [], [], []
    for line, r in user_records(path, wanted):
        a, b = r[wanted[0]], r[wanted[1]]
        if not (isinstance(a, str) and isinstance(b, str)) or not a.strip() or not b.strip():
            raise ValueError(f"{path}:{line}: {wanted[0]!r} and {wanted[1]!r} must be non-empty texts")
        score = 1.0
        if scored:
            try:
                score = float(r["score"]) if not isinstance(r["score"], bool) else float("nan")
            except (TypeError, ValueError):
                score = float("nan")
            if not low <= score <= high:  # also refuses nan
                raise ValueError(f"{path}:{line}: score {r['score']!r} is not a number from {low:g} to "
                                 f"{high:g} (--score-range)")
        first.append(refuse_lone_surrogates(a, f"{path}:{line}"))
        second.append(refuse_lone_surrogates(b, f"{path}:{line}"))
        scores.append(score)
    if not first:
        raise ValueError(f"{path} holds no pairs")
    return SentencePairs(str(path), "train", first, second, scores, "cosent" if scored else "in-batch",
                         source=str(path), file=str(path))


# ----------------------------------------------------------------------------- the tasks of one run
def split_off(ds: LabelledTexts, fraction: float, seed: int) -> tuple[LabelledTexts, LabelledTexts]:
    """A seeded (train, validation) split. The permutation depends only on seed and size, so two
    tasks read from one file (reviews-topic, reviews-sentiment) split the same way."""
    order = list(range(len(ds)))
    random.Random(seed).shuffle(order)
    n_val = int(len(ds) * fraction)

    def pick(rows: list[int], split: str) -> LabelledTexts:
        rows = sorted(rows)
        if isinstance(ds, SentencePairs):
            return ds.take(rows, split, f"#{split}")
        return LabelledTexts(ds.name, split, [ds.texts[i] for i in rows], [ds.labels[i] for i in rows],
                             ds.label_names, ds.source + f"#{split}", file=ds.file)
    return pick(order[n_val:], "train"), pick(order[:n_val], "val")


def per_class_sample(ds: LabelledTexts, k: int, seed: int) -> LabelledTexts:
    """A few-shot training set: k seeded examples of each label (all of a label's examples where it
    has fewer). The seed picks the examples, so seeds differ in data as well as initialisation."""
    rng = random.Random(seed)
    by_label: dict[int, list[int]] = {}
    for i, label in enumerate(ds.labels):
        by_label.setdefault(label, []).append(i)
    rows = []
    for label in sorted(by_label):  # one seeded generator draws for each label in turn
        members = by_label[label]
        rows += rng.sample(members, min(k, len(members)))
    rows.sort()
    return LabelledTexts(ds.name, ds.split, [ds.texts[i] for i in rows], [ds.labels[i] for i in rows],
                         ds.label_names, ds.source + f"#{k}-per-class", file=ds.file)


def task_datasets(cfg) -> dict[str, str]:
    """{task: dataset name or file}; tasks are 'a' and 'b' (no 'b' with --task-b none)."""
    return {"a": cfg.task_a} | ({} if cfg.task_b == "none" else {"b": cfg.task_b})


def load_tasks(cfg) -> tuple[dict, dict, dict]:
    """-> (train, validation, evaluation) datasets, each {task: LabelledTexts or SentencePairs}, for
    train_config.TrainConfig's data flags (--task-a/-b, --max-train, --per-class, --val-fraction,
    --max-val and your own files'). STS-B validates on its dev split; other tasks hold out a share."""
    train, val, final, splits = {}, {}, {}, {}
    for task, name in task_datasets(cfg).items():
        held_out = None
        if is_pair_task(name, cfg.text_column):
            full, held_out, final[task] = load_pair_task(cfg, task, name)
        elif is_user_file(name):
            full, final[task] = load_user_task(cfg, task, name, splits)
        else:
            full = load(name, "train", cfg.data_dir)
            final[task] = load(name, EVAL_SPLIT[name], cfg.data_dir)
        if cfg.max_train and len(full) > cfg.max_train:
            full, _ = split_off(full, 1 - cfg.max_train / len(full), cfg.seed + 1)
        if cfg.per_class and isinstance(full, LabelledTexts):
            full = per_class_sample(full, cfg.per_class, cfg.seed + 2)
        if held_out is None:
            train[task], val[task] = split_off(full, cfg.val_fraction, cfg.seed)
        else:
            train[task], val[task] = full, held_out
        if cfg.max_val and len(val[task]) > cfg.max_val:
            _, val[task] = split_off(val[task], cfg.max_val / len(val[task]), cfg.seed)
    val = {task: ds for task, ds in val.items() if len(ds)}  # --val-fraction 0: no validation, the last epoch is kept
    return train, val, final


PAIR_DATASETS = {"stsb": load_stsb}


def is_pair_task(name: str, text_column: str = "text") -> bool:
    """--task-a/-b names a pair task: STS-B, or a file of sentence pairs (is_pair_file)."""
    return name in PAIR_DATASETS or (is_user_file(name) and Path(name).is_file()
                                     and is_pair_file(name, text_column))


def score_bounds(text: str) -> tuple[float, float]:
    low, high = text.split(":")
    return float(low), float(high)


def load_pair_task(cfg, task: str, name: str) -> tuple[SentencePairs, SentencePairs | None, SentencePairs]:
    """A pair task -> (training pairs, validation pairs or None to hold out a share, test pairs).
    STS-B brings all three; your file brings the training pairs, and its test pairs are
    --test-a/-b, else a seeded share of the file (--test-fraction)."""
    if name in PAIR_DATASETS:
        train, dev, test = (PAIR_DATASETS[name](split, cfg.data_dir) for split in ("train", "dev", "test"))
        return train, dev, test
    bounds = score_bounds(cfg.score_range)
    pairs, test_file = read_pairs(name, bounds), cfg.test_a if task == "a" else cfg.test_b
    if test_file:
        test = read_pairs(test_file, bounds)
        if test.loss != pairs.loss:
            raise ValueError(f"{test_file}: its columns say {test.loss} pairs, but {name} holds {pairs.loss} pairs")
        return pairs, None, replace(test, split="test")
    rest, test = split_off(pairs, cfg.test_fraction, cfg.seed + 3)
    if not len(test) or len(rest) < 2:
        raise ValueError(f"{name}: {len(pairs)} pairs are too few to hold out a test share; give a test file")
    return replace(rest, split="train"), None, replace(test, split="test")


def load_user_task(cfg, task: str, path: str, splits: dict) -> tuple[LabelledTexts, LabelledTexts]:
    """Your own file for one task -> (training examples, test examples).

    The test examples come from --test-a/--test-b, else from a seeded stratified split of the file
    (--test-fraction). Two tasks read from one file share one split, so each row is on the same side
    for both, made on Task A's labels. The label set is --labels-a/-b, else the sorted labels of the
    training rows."""
    column, labels_file, test_file = ((cfg.label_column_a, cfg.labels_a, cfg.test_a) if task == "a"
                                      else (cfg.label_column_b, cfg.labels_b, cfg.test_b))
    rows = read_user_rows(path, cfg.text_column, column)
    if test_file:
        train_rows, test_rows, test_path = rows, read_user_rows(test_file, cfg.text_column, column), test_file
    else:
        if path not in splits:
            splits[path] = stratified_split(path, rows, cfg.test_fraction, cfg.seed)
        train_idx, test_idx = splits[path]
        train_rows, test_rows, test_path = [rows[i] for i in train_idx], [rows[i] for i in test_idx], path
    names = read_label_names(labels_file) if labels_file else sorted({label for _, _, label in train_rows})
    if len(names) < 2:
        raise ValueError(f"{path}: the training rows have only the label {names[0]!r}; a classifier needs 2 or more")
    return user_dataset(path, train_rows, names, "train"), user_dataset(test_path, test_rows, names, "test")


# ----------------------------------------------------------------------------- multi-task batching
@dataclass
class Pool:
    """Examples that batches are drawn from: texts with their token ids, and a label per task (IGNORE
    where a task has none)."""
    texts: list[str]
    ids: list[list[int]]  # tokenizer.encode(texts), once: an epoch re-reads them instead of tokenising again
    labels: dict[str, list[int]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.texts)

    def sentences(self, rows: list[int]) -> list[int]:
        """The texts an example at each of these rows brings: one each."""
        return rows


@dataclass
class PairPool(Pool):
    """A pair task's examples. texts and ids hold every first sentence, then every second one, so
    that pair i is texts i and len(self) + i; the pair's score is the label of both."""

    def __len__(self) -> int:
        return len(self.texts) // 2

    def sentences(self, rows: list[int]) -> list[int]:
        """Both texts of each pair: the batch's first sentences, then their partners in order."""
        return rows + [len(self) + i for i in rows]


def make_pools(tasks: dict[str, LabelledTexts], tokenizer) -> list[Pool]:
    """One pool per source file, each text tokenised once. Tasks read from the same file and split
    (reviews-topic and reviews-sentiment) share one pool whose examples carry both labels."""
    by_source: dict[tuple[str, str], Pool] = {}
    for task, ds in tasks.items():
        if isinstance(ds, SentencePairs):  # a pool of its own
            by_source[(task, "pairs")] = PairPool(ds.texts, tokenizer.encode(ds.texts), {task: ds.scores * 2})
            continue
        key = (ds.source, ds.split)
        if key not in by_source:
            by_source[key] = Pool(list(ds.texts), tokenizer.encode(ds.texts))
        pool = by_source[key]
        if pool.texts != ds.texts:
            raise ValueError(f"{ds.name} and another task read {ds.source} but see different texts")
        pool.labels[task] = list(ds.labels)
    for pool in by_source.values():
        for task in tasks:
            pool.labels.setdefault(task, [IGNORE] * len(pool.texts))
    return list(by_source.values())


def collate(tokenizer, pool: Pool, rows: list[int]) -> dict[str, torch.Tensor]:
    """Pad a batch to its own longest sentence; labels per task (IGNORE = no label). The rows of a
    pair pool bring both their sentences (PairPool.sentences)."""
    texts = pool.sentences(rows)
    batch = tokenizer.pad([pool.ids[i] for i in texts])
    batch["labels"] = {task: torch.tensor([labels[i] for i in texts]) for task, labels in pool.labels.items()}
    return batch


class MultiTaskSampler:
    """Yields (pool index, row indices) batches for one epoch.

    Mixing rule: temperature-scaled sampling. Each batch comes from one pool, chosen with
    probability proportional to size ** (1 / temperature). temperature=1 is proportional to
    size (a 67k-example SST-2 would drown a 10k Banking77); a large temperature approaches
    uniform. The default of 2 sits between. Unlike round-robin, nothing stops when the
    smallest pool runs out: a pool that is used up is reshuffled and reused. An epoch is
    as many batches as the pools hold examples in total.
    """

    def __init__(self, sizes: list[int], batch_size: int, temperature: float = 2.0, seed: int = 0):
        self.sizes, self.batch_size, self.temperature = sizes, batch_size, temperature
        weights = [s ** (1.0 / temperature) for s in sizes]
        self.probs = [w / sum(weights) for w in weights]
        self.rng = random.Random(seed)
        self.orders = [self._shuffled(s) for s in sizes]
        self.position = 0  # batches already yielded in the current epoch: a resume continues from here

    def _shuffled(self, n: int) -> list[int]:
        order = list(range(n))
        self.rng.shuffle(order)
        return order

    def __len__(self) -> int:
        return max(1, sum(self.sizes) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[int, list[int]]]:
        while self.position < len(self):
            p = self.rng.choices(range(len(self.sizes)), weights=self.probs)[0]
            while len(self.orders[p]) < self.batch_size:
                self.orders[p] += self._shuffled(self.sizes[p])
            rows, self.orders[p] = self.orders[p][:self.batch_size], self.orders[p][self.batch_size:]
            self.position += 1  # before the yield: a checkpoint taken after this batch skips it on resume
            yield p, rows
        self.position = 0

    def state_dict(self) -> dict:
        """Plain ints and lists (JSON-ready): the RNG, what is left of each pool's order, the position."""
        version, internal, gauss = self.rng.getstate()
        return {"rng": [version, list(internal), gauss], "orders": [list(o) for o in self.orders],
                "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        rng = state["rng"]
        self.rng.setstate((rng[0], tuple(rng[1]), rng[2]))
        self.orders = [list(o) for o in state["orders"]]
        self.position = state["position"]
