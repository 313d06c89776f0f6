"""Classify new sentences with a model that train.py trained.

    python predict.py --checkpoint runs/tickets "my card never arrived" "I was charged twice"
    python predict.py --checkpoint runs/tickets --input new.txt --output preds.jsonl
    python predict.py --checkpoint runs/tickets --input new.csv > preds.jsonl   # its text column
    python predict.py --checkpoint runs/tickets --input new.csv --column body --output preds.jsonl
    python predict.py --checkpoint runs/tickets --dtype auto ...   # int8 (else bf16) where fast and checked against fp32

In Python:
    from predict import Classifier
    clf = Classifier.from_checkpoint("runs/tickets")
    clf.predict(["my card never arrived"])   # [{"text": ..., "a": {"label": ..., "p": ..., "next": [...]}}]

Loads best.safetensors and run.json only (safetensors and JSON: no pickle, nothing executes on
load). Each sentence goes through the backbone once, and every task's head reads that embedding.
A file is read and written in chunks, so memory stays bounded whatever its length; inside a chunk
sentences are sorted by length, as encode() does, so batches carry little padding. Each output line
carries the input line it came from ("line"), as `wc -l` counts lines.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Iterator, Sequence

import torch

from data import columns_of, table_rows
from mpnet import SentenceEncoder, check_batch_size, check_sentences
from reliability.checkpoint import disk_full, read_json_object, write_atomic
from reliability.flags import device, int_at_least
from reliability.lock import InUse, holding
from scale.corpus import chunks, read_sentences
from speed.memory import bound_kernel_cache, release_freed_memory


class Classifier:
    """A trained MultiTaskModel with its tokenizer and label names: text in, labels out."""

    def __init__(self, model, tokenizer, info: dict, autocast: bool = False):
        self.model, self.tokenizer, self.info = model.eval(), tokenizer, info
        self.autocast = autocast  # bf16 autocast: what --dtype auto chose where int8 did not pass its check
        self.label_names = {task: v["label_names"] for task, v in info["tasks"].items()
                            if "label_names" in v}  # a pair task has no head, hence no labels

    @classmethod
    def from_checkpoint(cls, folder: str | Path, device: str = "cpu", dtype: str = "fp32") -> "Classifier":
        """dtype: "fp32"; "int8" (CPU); or "auto": int8 on a CPU where it is fast, if it agrees with fp32 on
        the run's test rows (speed/int8_check.py, checked once and cached in the run folder), else bf16 where
        the CPU runs it natively and it agrees, else fp32."""
        from reliability.saved_run import load_run

        if dtype not in ("fp32", "int8", "auto"):
            raise ValueError(f"dtype must be 'fp32', 'int8' or 'auto', not {dtype!r}")
        model, tokenizer, info = load_run(folder)  # clear errors for a folder that is not a train.py run
        if not model.heads:
            raise ValueError(f"{folder} trained pair tasks only, so it has no head to predict with; it is a "
                             f"sentence encoder: export it with `python -m tools.export {folder} OUT`")
        precision = "fp32"
        if dtype != "fp32" and torch.device(device).type == "cpu":
            from speed import int8_check

            model, precision, why = int8_check.choose(folder, model, tokenizer, info, dtype,
                                                      reload=lambda: load_run(folder)[0])
            print(f"dtype {dtype}: {why}", file=sys.stderr)
        from speed.onednn import use_where_it_helps
        from speed.packing import pack

        pack(model.backbone)  # the per-token layers skip the padding (speed/packing.py)
        use_where_it_helps(SentenceEncoder(model.backbone, tokenizer), device)  # fp32 layers only; int8 ones stay
        return cls(model.to(device), tokenizer, info, autocast=precision == "bf16")

    def predict_proba(self, texts: Sequence[str], batch_size: int = 64) -> dict[str, torch.Tensor]:
        """{task: (N, classes) probabilities}, rows in input order (MultiTaskModel.predict_proba)."""
        texts, batch_size = check_sentences(texts), check_batch_size(batch_size)
        return self.model.predict_proba(self.tokenizer, texts, batch_size, autocast=self.autocast)

    def predict(self, texts: Sequence[str], top: int = 3, batch_size: int = 64) -> list[dict]:
        """Per text: for each task the most probable label, its probability, and the next top-1 labels."""
        if isinstance(top, bool) or not isinstance(top, int) or top < 1:
            raise ValueError(f"top must be an integer >= 1 (the labels to show per task), got {top!r}")
        probs = self.predict_proba(texts, batch_size)
        results = [{"text": t} for t in texts]
        for task, p in probs.items():
            values, indices = p.topk(min(top, p.shape[1]), dim=1)
            names = self.label_names[task]
            for r, vals, idx in zip(results, values.tolist(), indices.tolist()):
                r[task] = {"label": names[idx[0]], "p": round(vals[0], 4),
                           "next": [[names[i], round(v, 4)] for i, v in zip(idx[1:], vals[1:])]}
        return results


def read_texts(path: Path, column: str | None, say: bool = False) -> Iterator[tuple[int, str]]:
    """(line, sentence), streamed: one sentence a line (scale.corpus.read_sentences), or the named column of
    a CSV/TSV read by the training data's strict reader (data.table_rows). Lines end at a line feed, so
    line i is line i as `wc -l` counts it; blank sentences are skipped. A text file's line over 1 MiB is cut
    there (`say`: reported once), a table's is refused."""
    if column is not None:
        delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
        for line, row in table_rows(path, [column], delimiter):
            if row[column].strip():
                yield line, row[column]
        return
    for line, text in enumerate(read_sentences(path, None, say), start=1):  # the corpus command's line reader
        if text.strip():
            yield line, text


def table_column(path: Path, column: str | None, run_column: str | None) -> str | None:
    """The column of a .csv/.tsv input to read: --column, else the run's own text column, `text`, or
    the only column whose first rows are not all numbers; None for a file of lines. A table whose
    text column is unclear is refused in one line naming its columns: a header is never a sentence."""
    if column is not None or path.suffix.lower() not in (".csv", ".tsv"):
        return column
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    header = columns_of(path)
    for name in (run_column, "text"):
        if name in header:
            return name
    first = [row for _, (_, row) in zip(range(100), table_rows(path, [], delimiter))]
    texts = [c for c in header if not all(is_number(row[c]) for row in first)]
    if len(texts) == 1:
        return texts[0]
    raise ValueError(f"--input {path} is a table with columns {', '.join(map(repr, header))}; name the "
                     f"one that holds the sentences with --column")


def is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def predict_file(clf: Classifier, source: Path, output: Path | None, column: str | None, batch_size: int,
                 chunk_size: int = 2048) -> int:
    """Stream source -> JSON lines in output (written to a temp file, renamed when complete), or on
    stdout as they come (output None)."""
    total = sum(1 for _ in read_texts(source, column, say=True))  # a cheap first pass: the ETA needs it
    started = time.time()

    def write_to(out) -> None:
        done = 0
        for chunk in chunks(read_texts(source, column), chunk_size):
            results = clf.predict([text for _, text in chunk], batch_size=batch_size)
            for (line, _), result in zip(chunk, results):
                out.write(json.dumps({"line": line} | result, ensure_ascii=False) + "\n")
            out.flush()
            done += len(chunk)
            release_freed_memory()
            rate = done / (time.time() - started)
            print(f"\r{done:,}/{total:,} sentences, {rate:.0f}/s, eta {(total - done) / rate:.0f} s",
                  end="", file=sys.stderr, flush=True)

    def write(path: Path) -> None:
        with open(path, "w", encoding="utf-8") as out:
            write_to(out)

    if output is None:
        write_to(sys.stdout)
    else:
        write_atomic(write, output)
    print(file=sys.stderr)
    return total


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sentences", nargs="*", help="sentences to classify (or use --input)")
    parser.add_argument("--checkpoint", required=True, help="a train.py output folder")
    parser.add_argument("--input", type=Path, help="a file of sentences: one a line, or a CSV/TSV with --column")
    parser.add_argument("--column", help="the text column of a CSV/TSV --input")
    parser.add_argument("--output", type=Path, help="where --input's predictions go, one JSON object a line "
                                                     "(default, or -: standard output)")
    parser.add_argument("--batch-size", type=int_at_least(1), default=64)
    parser.add_argument("--device", type=device, default="cpu")
    parser.add_argument("--dtype", choices=["fp32", "int8", "auto"], default="fp32",
                        help="auto: int8 where the CPU runs it fast and it agrees with fp32 on the run's test rows "
                             "(checked once, cached in the run folder), else bf16 where the CPU runs it natively and it "
                             "agrees, else fp32")
    args = parser.parse_args(argv)
    if not (Path(args.checkpoint) / "run.json").is_file():
        parser.error(f"--checkpoint {args.checkpoint}: no run.json there; give a train.py output folder")
    if bool(args.sentences) == bool(args.input):
        parser.error("give sentences on the command line, or --input FILE (not both)")
    if args.input and not args.input.is_file():
        parser.error(f"--input {args.input}: no such file")
    if args.output is not None and str(args.output) == "-":
        args.output = None  # standard output
    if args.output is not None:
        check_output(parser, args.input, args.output)
    try:
        bound_kernel_cache()
        if args.input:
            run_column = read_json_object(Path(args.checkpoint) / "run.json").get("config", {}).get("text_column")
            column = table_column(args.input, args.column, run_column)  # before the model loads
            if args.output is None:
                predict_to(args, column, sys.stdout)
                return
            lock = args.output.with_name(f".{args.output.name}.lock")  # as the corpus command's
            with holding(lock, args.output, owner="predict.py", flag="--output"):  # before the model loads
                n = predict_to(args, column, args.output)
            print(f"{n:,} predictions in {args.output}", file=sys.stderr)
            return
        clf = Classifier.from_checkpoint(args.checkpoint, args.device, args.dtype)
        for result in clf.predict(args.sentences, batch_size=args.batch_size):
            print(repr(result["text"]))
            for task in clf.label_names:
                r = result[task]
                runners_up = ", ".join(f"{name} {p:.2f}" for name, p in r["next"])
                print(f"  task {task}: {r['label']} ({r['p']:.2f}); next: {runners_up}")
    except (ValueError, FileNotFoundError, TypeError, InUse) as e:
        sys.exit(f"error: {e}")
    except OSError as e:
        if (line := disk_full(e, "run the same command again", args.output)) is None:
            raise
        sys.exit(f"\n{line}")  # (after the progress line)


def predict_to(args: argparse.Namespace, column: str | None, output) -> int:
    """--input's predictions into output (a file, or sys.stdout): the model loads here."""
    if args.dtype == "auto":  # a long job: measure this machine's fastest int8 kernel first, once
        from speed import tune

        tune.ensure()
    clf = Classifier.from_checkpoint(args.checkpoint, args.device, args.dtype)
    return predict_file(clf, args.input, None if output is sys.stdout else output, column, args.batch_size)


def check_output(parser: argparse.ArgumentParser, source: Path | None, output: Path) -> None:
    """--output must be a new or replaceable file in a folder that exists, and never the input."""
    if output.is_dir():
        parser.error(f"--output {output} is a folder; name a file in it, e.g. {output / 'predictions.jsonl'}")
    if not output.parent.is_dir():
        parser.error(f"--output {output}: no folder {output.parent}")
    if source is not None and output.exists() and output.samefile(source):
        parser.error(f"--output {output} is the --input file; the predictions would replace it: name another file")


if __name__ == "__main__":
    main()
