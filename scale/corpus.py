"""Embed a corpus too large for memory: a file of sentences in, an (N, 768) .npy out.

    python -m scale.corpus --input sentences.txt --output emb.npy                 # one sentence a line
    python -m scale.corpus --input docs.jsonl --field text --output emb.npy --output-dtype float16
    python -m scale.corpus --input sentences.txt --output emb.npy --dtype auto    # int8 where it is fast
    python -m scale.corpus --input sentences.txt --output emb.npy --compile       # fp32, torch.compile
    torchrun --nproc_per_node=2 -m scale.corpus --input sentences.txt --output emb.npy

In Python: embed_file(encoder, source, output, ...), with any SentenceEncoder.

Row i of the output is line i of the input (an empty line is embedded as the empty sentence), so
the file lines up with whatever else is keyed by line number.

How it stays small and restartable:

    input file ──(chunk of 4,096 lines)──> encode() ──> rows [i*4096, (i+1)*4096) of emb.npy.partial
         ^ read again each time, never held          (written at their byte offset, then fsynced)

  * Memory: one chunk of text and its embeddings at a time, whatever N is. The rows are written
    with plain positioned writes, not through a memmap: pages of a mapped file that the process
    has touched count in its resident size until the kernel needs them back, so a 1M-row float16
    memmap alone would add 1.5 GB to the peak RSS. The command line also turns oneDNN's kernel
    cache off and returns freed heap memory after each chunk (memory.py): without those, the
    peak grew with N although nothing of an earlier chunk was kept.
  * Restart: after each chunk is flushed to disk its number is recorded (emb.npy.partial.done-RANK,
    replaced atomically) with the input's sha256 and the encoder's (its weights as loaded, so the
    precision too). A rerun with the same input, encoder and settings skips the recorded chunks;
    anything else starts over, and says so. Only when every chunk is recorded is emb.npy.partial
    renamed to emb.npy: a file at the output path is always complete. A chunk with fewer lines than
    the first pass counted (the file changed mid-run) is an error, never recorded as done.
  * Several processes (torchrun): chunk i belongs to rank i % world_size. Every rank writes its
    own rows of the same memmap, which is one file, so the result is the same, row for row, as with
    one process (each chunk is encoded alone, the same way, wherever it runs). Rank 0 creates the
    file first and renames it last; barriers (gloo) order the two.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from data import LONGEST_LINE, lines_of, refuse_lone_surrogates
from reliability.checkpoint import disk_full, sync_folder, write_atomic
from reliability.flags import int_at_least
from reliability.lock import InUse, holding
from speed.memory import bound_kernel_cache, release_freed_memory
from weights.fetch import sha256_of

CHUNK = 4096


def chunks(items: Iterator[str], size: int) -> Iterator[list[str]]:
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def read_sentences(path: Path, field: str | None, say: bool = False) -> Iterator[str]:
    """One sentence a line, or with `field` the value of that key in each line's JSON object, read by
    data.lines_of: sentence i is line i as `wc -l` counts it, and a line over data.LONGEST_LINE bytes is
    cut there (its first 384 tokens, all the model reads, lie far inside), which `say` reports once
    on stderr. (predict.py reads its --input text files through this too.)"""
    cut = []
    for number, line, length in lines_of(path, cut=True):
        line = line.removesuffix("\n").removesuffix("\r")
        if length > LONGEST_LINE:
            cut.append(number)
            if say and len(cut) == 1:
                print(f"{path}:{number}: a line of {length:,} bytes; its first {LONGEST_LINE:,} are read "
                      f"(the model reads its first 384 tokens)", file=sys.stderr)
        if field is None:
            yield line
            continue
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, RecursionError) as e:
            raise ValueError(f"{path}:{number}: not a JSON object ({getattr(e, 'msg', 'nested too deeply')}); "
                             f"JSONL needs one object a line") from None
        if not isinstance(record, dict) or not isinstance(record.get(field), str):
            raise ValueError(f"{path}:{number}: no string field {field!r} in this line's JSON object")
        yield refuse_lone_surrogates(record[field], f"{path}:{number}")
    if say and len(cut) > 1:
        print(f"{path}: {len(cut):,} lines in all were cut to {LONGEST_LINE:,} bytes (the first at line {cut[0]})",
              file=sys.stderr)


def weights_sha256(encoder) -> str:
    """sha256 over the encoder's tensors as loaded (names, dtypes, bytes): other weights or another
    precision (bf16, int8) give another hash. About 0.3 s for all-mpnet-base-v2."""
    digest = hashlib.sha256()
    for name, t in encoder.model.state_dict().items():
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        digest.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def count_sentences(path: Path, field: str | None, say: bool = False) -> int:
    """A cheap first pass: N sizes the output, and the whole input is checked before any embedding."""
    return sum(1 for _ in read_sentences(path, field, say))


class Shards:
    """Rank and world size under torchrun (with a gloo group for the barriers), else rank 0 of 1."""

    def __init__(self):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        if self.world > 1 and not torch.distributed.is_initialized():
            torch.distributed.init_process_group("gloo")

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()


def embed_file(encoder, source: Path, output: Path, field: str | None = None, dtype: str = "float32",
               batch_size: int = 32, chunk_size: int = CHUNK) -> int:
    """Embed every sentence of `source` into the .npy file `output`; returns N. Resumes, and shards
    over torchrun's processes, as the module docstring describes. One job writes an output at a time:
    another one on the same output raises reliability.lock.InUse (output_lock)."""
    with output_lock(Path(output)):
        return embed_locked(encoder, source, output, field, dtype, batch_size, chunk_size)


@contextmanager
def output_lock(output: Path):
    """The lock beside the output (.emb.npy.lock, as weights/fetch.py's) that one job holds while it
    writes: rank 0's under torchrun, whose other ranks write only the chunks of rank 0's job."""
    if Shards().rank != 0:
        yield
        return
    with holding(output.with_name(f".{output.name}.lock"), output, owner="scale.corpus job",
                 flag="--output"):
        yield


def embed_locked(encoder, source: Path, output: Path, field: str | None, dtype: str, batch_size: int,
                 chunk_size: int) -> int:
    """embed_file, with the output's lock held."""
    shards = Shards()
    n = count_sentences(source, field)
    if n == 0:
        raise ValueError(f"{source} has no lines to embed")
    partial = output.with_name(output.name + ".partial")
    settings = {"input": str(source.resolve()), "input_bytes": source.stat().st_size, "input_sha256": sha256_of(source),
                "field": field, "rows": n, "dtype": dtype, "chunk": chunk_size, "dim": encoder.model.cfg.hidden_size,
                "encoder_sha256": weights_sha256(encoder)}
    n_chunks = -(-n // chunk_size)
    if shards.rank == 0:
        prepare(partial, settings)
    shards.barrier()
    done = finished_chunks(partial, settings)
    mine = [c for c in range(n_chunks) if c % shards.world == shards.rank and c not in done]
    if done and shards.rank == 0:
        print(f"resuming {partial}: {len(done)} of {n_chunks} chunks already done", file=sys.stderr)
    header_bytes = np.load(partial, mmap_mode="r").offset  # where row 0 starts in the .npy file
    row_bytes = settings["dim"] * np.dtype(dtype).itemsize
    own_done = sorted(c for c in done if c % shards.world == shards.rank)
    started, embedded = time.time(), 0
    for c, sentences in enumerate(chunks(read_sentences(source, field), chunk_size)):
        if len(sentences) != min(chunk_size, n - c * chunk_size):  # (<= 0 for a chunk past the counted end)
            raise ValueError(f"{source} changed during the run: chunk {c} has {len(sentences)} lines where the first "
                             f"pass counted {max(0, min(chunk_size, n - c * chunk_size))}; run the command again")
        if c not in mine:
            continue
        rows = encoder.encode(sentences, batch_size).numpy().astype(dtype)
        with open(partial, "r+b") as f:
            f.seek(header_bytes + c * chunk_size * row_bytes)
            f.write(rows.tobytes())
            f.flush()
            os.fsync(f.fileno())  # the rows are on disk before the chunk is recorded as done
        release_freed_memory()
        own_done.append(c)
        record = json.dumps(settings | {"chunks": own_done})
        write_atomic(lambda p: p.write_text(record), done_file(partial, shards.rank))
        embedded += len(sentences)
        if shards.rank == 0:
            rate = embedded / (time.time() - started)
            left = len(mine) * chunk_size - embedded  # (the last chunk may be shorter: an upper bound)
            print(f"\r{embedded:,} sentences embedded, {rate:.0f}/s"
                  f"{f' per process, {shards.world} processes' if shards.world > 1 else ''}, eta {left / rate:.0f} s  ",
                  end="", file=sys.stderr, flush=True)
    shards.barrier()
    if shards.rank == 0:
        print(file=sys.stderr)
        missing = set(range(n_chunks)) - finished_chunks(partial, settings)
        if missing:
            raise RuntimeError(f"chunks {sorted(missing)[:5]} were not embedded; run the command again to finish")
        os.replace(partial, output)
        sync_folder(output.parent)  # the rename itself is on disk before the records that allow it go
        for p in done_records(partial):
            p.unlink()
    shards.barrier()
    return n


def prepare(partial: Path, settings: dict) -> None:
    """Keep a partial output whose records were all made with these settings (a resume); otherwise
    (another input, dtype, chunk size; or nothing recorded yet) start a fresh one."""
    records = [json.loads(p.read_text()) for p in done_files(partial)]
    if partial.is_file() and records and all(without_chunks(r) == settings for r in records):
        return
    if records:
        changed = sorted({k for r in records for k in settings if r.get(k) != settings[k]})
        print(f"{partial}: started with another {', '.join(changed)}; starting over", file=sys.stderr)
    for p in done_files(partial):
        p.unlink()
    np.lib.format.open_memmap(partial, mode="w+", dtype=settings["dtype"], shape=(settings["rows"], settings["dim"]))


def done_records(partial: Path) -> list[Path]:
    """Every file named after the partial's records (.done-...), found by prefix, not by a glob: an
    output name may hold the glob's own characters ([, *, ?)."""
    prefix = partial.name + ".done-"
    return sorted(p for p in partial.parent.iterdir() if p.name.startswith(prefix))


def done_files(partial: Path) -> list[Path]:
    """Each rank's record, .done-RANK; not the temporary file a killed write left (.done-RANK.XXXX.tmp)."""
    return [p for p in done_records(partial) if p.name.rsplit("-", 1)[1].isdigit()]


def done_file(partial: Path, rank: int) -> Path:
    return partial.with_name(f"{partial.name}.done-{rank}")


def without_chunks(record: dict) -> dict:
    return {k: v for k, v in record.items() if k != "chunks"}


def finished_chunks(partial: Path, settings: dict) -> set[int]:
    """Chunks recorded as done by any rank (of this run, or of an earlier one with another process count)."""
    done = set()
    for p in done_files(partial):
        record = json.loads(p.read_text())
        if without_chunks(record) == settings:
            done.update(record["chunks"])
    return done


# ----------------------------------------------------------------------------- the command line
def main(argv: list[str] | None = None) -> None:
    """Every flag and the whole input are checked before the model loads."""
    from speed import load_encoder

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", type=Path, required=True, help="a file of sentences, one a line (or JSONL with --field)")
    parser.add_argument("--output", type=Path, help="the embeddings: an (N, 768) .npy file")
    parser.add_argument("--field", help="--input is JSONL: embed this field of each line's object")
    parser.add_argument("--output-dtype", choices=["float32", "float16"], default="float32")
    parser.add_argument("--dtype", choices=["auto", "fp32", "bf16", "int8"], default="fp32",
                        help="the encoder's precision; auto: the fastest accurate one here (speed/hardware.py)")
    parser.add_argument("--batch-size", type=int_at_least(1), default=32)
    parser.add_argument("--chunk-size", type=int_at_least(1), default=CHUNK,
                        help="sentences per chunk (the unit of memory, of resuming and of sharding)")
    parser.add_argument("--compile", action="store_true",
                        help="fp32 through torch.compile: ~30 s once, then ~10%% faster (speed/compiled.py)")
    args = parser.parse_args(argv)
    if args.compile and args.dtype != "fp32":
        parser.error(f"--compile runs the fp32 encoder, not --dtype {args.dtype} (speed/compiled.py says why)")
    if not args.input.is_file():
        parser.error(f"--input {args.input}: no such file")
    if args.output is None or args.output.suffix != ".npy":
        parser.error("--input needs --output FILE.npy")
    if args.output.is_dir() or not args.output.parent.is_dir():
        parser.error(f"--output {args.output}: name a .npy file in a folder that exists")
    if args.output.exists() and args.output.samefile(args.input):
        parser.error(f"--output {args.output} is the --input file; name another file")
    try:
        total = count_sentences(args.input, args.field, say=True)
    except ValueError as e:
        sys.exit(f"error: {e}")
    with ExitStack() as stack:
        try:  # before the model loads: a second job on this output stops here, in one line
            stack.enter_context(output_lock(args.output))
        except InUse as e:
            sys.exit(f"error: {e}")
        bound_kernel_cache()
        if args.compile:
            from speed.compiled import BREAKEVEN, compiled_encoder

            print(f"--compile: {total:,} sentences; the compile pays for itself above {BREAKEVEN}",
                  file=sys.stderr)
            encoder = compiled_encoder()
        else:
            if args.dtype == "auto":  # a long job: measure this machine's fastest precision first, once
                from speed import tune

                tune.ensure()
            encoder = load_encoder(dtype=args.dtype)
        try:
            n = embed_locked(encoder, args.input, args.output, args.field, args.output_dtype,
                             args.batch_size, args.chunk_size)
        except OSError as e:
            if (line := disk_full(e, "run the same command again: it resumes", args.output)) is None:
                raise
            sys.exit(f"\n{line}")  # (after the progress line)
    print(f"{n:,} embeddings in {args.output}", file=sys.stderr)


if __name__ == "__main__":
    main()
