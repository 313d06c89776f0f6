"""Corpus embedding (scale/corpus.py, `python -m scale.corpus --input --output`): row order, float16, resume after a
crash, one or two processes, and bad input refused before the model loads."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from scale import corpus
import mpnet

ROOT = Path(__file__).resolve().parent.parent
SENTENCES = ["A man is playing a guitar.", "", "Someone plays an instrument on a stage in front of a small crowd.",
             "The cat sleeps.", "Stocks fell sharply on Monday after the central bank raised rates again.",
             "  leading and trailing spaces  ", "Ein Mann spielt Gitarre.", "ok", "What is my card's PIN?",
             "A woman is slicing an onion."]
# Rows of a chunk and of a whole-list encode() go through the same arithmetic; only the batches
# differ (length-sorted within a chunk vs over the whole list), which can change a GEMM's blocking and
# so its summation order: at most a few ulps of float32 on unit-length rows (u = 6e-8), far below 1e-6.
ROW_TOL = 1e-6


@pytest.fixture()
def lines(tmp_path):
    path = tmp_path / "sentences.txt"
    path.write_text("\n".join(SENTENCES) + "\n", encoding="utf-8")
    return path


def test_rows_follow_the_lines_and_match_encode(encoder, lines, tmp_path):
    out = tmp_path / "emb.npy"
    assert corpus.embed_file(encoder, lines, out) == len(SENTENCES)
    got = np.load(out)
    assert got.shape == (len(SENTENCES), 768) and got.dtype == np.float32
    torch.testing.assert_close(torch.from_numpy(got), encoder.encode(SENTENCES), rtol=0, atol=ROW_TOL)
    assert not list(tmp_path.glob("emb.npy.*"))  # no partial file or chunk records left behind


def test_small_chunks_and_float16_give_the_same_rows(encoder, lines, tmp_path):
    out = tmp_path / "emb16.npy"
    corpus.embed_file(encoder, lines, out, dtype="float16", chunk_size=3)
    got = np.load(out)
    assert got.dtype == np.float16
    reference = encoder.encode(SENTENCES).numpy().astype(np.float16)
    # float16 keeps 11 significant bits: a float32 difference of 1e-6 moves a rounding by at most one step
    assert np.abs(got.astype(np.float32) - reference.astype(np.float32)).max() <= 2 ** -11 * 0.5


def test_jsonl_field(encoder, tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"id": i, "text": s}) + "\n" for i, s in enumerate(SENTENCES[:4])))
    out = tmp_path / "emb.npy"
    corpus.embed_file(encoder, path, out, field="text")
    torch.testing.assert_close(torch.from_numpy(np.load(out)), encoder.encode(SENTENCES[:4]), rtol=0, atol=ROW_TOL)


def crash_on_third_chunk(encoder, monkeypatch, calls: list) -> None:
    """encoder.encode records each chunk's size in `calls` and raises on the third chunk."""
    real_encode = encoder.encode

    def encode(sentences, batch_size=32):
        calls.append(len(sentences))
        if len(calls) == 3:
            raise RuntimeError("simulated crash")
        return real_encode(sentences, batch_size)

    monkeypatch.setattr(encoder, "encode", encode)


def test_a_crash_mid_corpus_resumes_to_the_same_file(encoder, lines, tmp_path, monkeypatch):
    straight = tmp_path / "straight.npy"
    corpus.embed_file(encoder, lines, straight, chunk_size=3)

    out, calls = tmp_path / "emb.npy", []
    crash_on_third_chunk(encoder, monkeypatch, calls)
    with pytest.raises(RuntimeError, match="simulated"):
        corpus.embed_file(encoder, lines, out, chunk_size=3)
    assert not out.exists()  # the output path only ever holds a complete file
    assert json.loads((tmp_path / "emb.npy.partial.done-0").read_text())["chunks"] == [0, 1]

    calls.clear()
    corpus.embed_file(encoder, lines, out, chunk_size=3)
    assert calls == [3, 1]  # chunks 0 and 1 were skipped: only chunks 2 (3 lines) and 3 (1 line) ran
    assert np.array_equal(np.load(out), np.load(straight))


def test_a_kill_during_a_record_write_does_not_block_the_resume(encoder, lines, tmp_path, monkeypatch):
    """kill -9 while a chunk's record was being written leaves its temporary file; the resume ignores it."""
    straight = tmp_path / "straight.npy"
    corpus.embed_file(encoder, lines, straight, chunk_size=3)
    out = tmp_path / "emb.npy"
    crash_on_third_chunk(encoder, monkeypatch, [])
    with pytest.raises(RuntimeError, match="simulated"):
        corpus.embed_file(encoder, lines, out, chunk_size=3)
    monkeypatch.undo()
    for debris in ("emb.npy.partial.done-0.tmp", "emb.npy.partial.done-0.k3x9a1.tmp"):  # before and since mkstemp
        (tmp_path / debris).write_text('{"chunks": [0, 1')  # cut off mid-write
    corpus.embed_file(encoder, lines, out, chunk_size=3)
    assert np.array_equal(np.load(out), np.load(straight))


def crash_after_one_chunk(encoder, lines, out, monkeypatch) -> None:
    real_encode, calls = encoder.encode, []

    def encode(sentences, batch_size=32):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("simulated crash")
        return real_encode(sentences, batch_size)

    monkeypatch.setattr(encoder, "encode", encode)
    with pytest.raises(RuntimeError, match="simulated"):
        corpus.embed_file(encoder, lines, out, chunk_size=3)
    monkeypatch.undo()


def test_other_settings_start_over_instead_of_mixing(encoder, lines, tmp_path, monkeypatch):
    out = tmp_path / "emb.npy"
    crash_after_one_chunk(encoder, lines, out, monkeypatch)
    corpus.embed_file(encoder, lines, out, dtype="float16", chunk_size=3)  # another dtype: nothing reused
    assert np.load(out).dtype == np.float16
    torch.testing.assert_close(torch.from_numpy(np.load(out).astype(np.float32)), encoder.encode(SENTENCES),
                               rtol=0, atol=2 ** -11)


def test_an_input_edited_in_place_is_not_resumed(encoder, lines, tmp_path, monkeypatch):
    """Same size, same modification time, other text: the sha256 tells (issue 30, item 9)."""
    out = tmp_path / "emb.npy"
    crash_after_one_chunk(encoder, lines, out, monkeypatch)
    stat = lines.stat()
    edited = SENTENCES.copy()
    edited[0] = "A man is playing a violin."  # as long as the line it replaces
    lines.write_text("\n".join(edited) + "\n", encoding="utf-8")
    os.utime(lines, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    corpus.embed_file(encoder, lines, out, chunk_size=3)
    torch.testing.assert_close(torch.from_numpy(np.load(out)), encoder.encode(edited), rtol=0, atol=ROW_TOL)


def test_another_encoder_is_not_resumed(encoder, lines, tmp_path, monkeypatch, capsys):
    """Rows from two precisions (or two sets of weights) never mix in one file (issue 30, item 9)."""
    import copy

    out = tmp_path / "emb.npy"
    crash_after_one_chunk(encoder, lines, out, monkeypatch)
    bf16 = copy.deepcopy(encoder)
    bf16.model.to(torch.bfloat16)
    corpus.embed_file(bf16, lines, out, chunk_size=3)
    assert "started with another encoder_sha256; starting over" in capsys.readouterr().err
    corpus.embed_file(bf16, lines, tmp_path / "straight.npy", chunk_size=3)
    assert np.array_equal(np.load(out), np.load(tmp_path / "straight.npy"))


def test_an_input_that_shrinks_mid_run_is_an_error_not_rows_of_zeros(encoder, lines, tmp_path, monkeypatch):
    out, real_count = tmp_path / "emb.npy", corpus.count_sentences

    def count_then_truncate(path, field):
        n = real_count(path, field)
        lines.write_text("\n".join(SENTENCES[:7]) + "\n", encoding="utf-8")  # 3 lines gone after the first pass
        return n

    monkeypatch.setattr(corpus, "count_sentences", count_then_truncate)
    with pytest.raises(ValueError, match="changed during the run: chunk 2 has 1 lines where the first pass counted 3"):
        corpus.embed_file(encoder, lines, out, chunk_size=3)
    assert not out.exists()
    assert json.loads((tmp_path / "emb.npy.partial.done-0").read_text())["chunks"] == [0, 1]


def test_a_lone_carriage_return_stays_inside_its_line(encoder, tmp_path):
    path = tmp_path / "cr.txt"
    path.write_bytes(b"one\rstill line one\r\ntwo\n")
    assert list(corpus.read_sentences(path, None)) == ["one\rstill line one", "two"]


def test_a_lone_surrogate_in_jsonl_is_named_in_the_first_pass(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text('{"text": "fine"}\n{"text": "bad \\ud800"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"docs.jsonl:2: a lone surrogate"):
        corpus.count_sentences(path, "text")


def test_a_full_disk_while_rows_are_written_records_nothing_and_the_rerun_finishes(encoder, lines, tmp_path,
                                                                                monkeypatch):
    import builtins
    import errno

    straight, out = tmp_path / "straight.npy", tmp_path / "emb.npy"
    corpus.embed_file(encoder, lines, straight, chunk_size=3)
    real_open, opened = builtins.open, []

    def open_that_fills(path, mode="r", *args, **kwargs):
        if sys._getframe(1).f_code.co_name == "embed_locked":  # the rows' write into emb.npy.partial
            opened.append(path)
            if len(opened) == 2:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", open_that_fills)
    with pytest.raises(OSError, match="No space left"):
        corpus.embed_file(encoder, lines, out, chunk_size=3)
    monkeypatch.undo()
    assert not out.exists() and not list(tmp_path.glob("*.tmp"))
    assert json.loads((tmp_path / "emb.npy.partial.done-0").read_text())["chunks"] == [0]
    corpus.embed_file(encoder, lines, out, chunk_size=3)
    assert np.array_equal(np.load(out), np.load(straight))


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "scale.corpus", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, env=env)


@pytest.mark.parametrize("content, message", [
    ('{"text": "fine"}\nnot json\n', ":2: not a JSON object"),
    ('{"text": "fine"}\n{"body": "no text field"}\n', ":2: no string field 'text'"),
])
def test_bad_jsonl_is_named_by_line_before_the_model_loads(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    env = os.environ | {"MPNET_WEIGHTS_DIR": str(tmp_path / "no-weights-here")}  # loading would try to fetch
    proc = run_cli("--input", path, "--field", "text", "--output", tmp_path / "e.npy", env=env)
    assert proc.returncode != 0 and message in proc.stderr and "fetching" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_the_output_must_be_a_npy_file(tmp_path, lines):
    proc = run_cli("--input", lines, "--output", tmp_path / "emb.txt")
    assert proc.returncode == 2 and "--output FILE.npy" in proc.stderr


def test_compile_is_for_fp32_only(tmp_path, lines):
    proc = run_cli("--input", lines, "--output", tmp_path / "emb.npy", "--compile", "--dtype", "int8")
    assert proc.returncode == 2 and "--compile runs the fp32 encoder" in proc.stderr


def test_compile_gives_the_eager_rows(encoder, lines, tmp_path):
    """--compile (speed/compiled.py): Inductor's fused kernels sum in another order than eager PyTorch, so
    the rows agree to rounding, held to the parity test's 1e-5 (sentence-transformers sums in another
    order again)."""
    proc = run_cli("--input", lines, "--output", tmp_path / "emb.npy", "--compile")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "the compile pays for itself above" in proc.stderr
    torch.testing.assert_close(torch.from_numpy(np.load(tmp_path / "emb.npy")), encoder.encode(SENTENCES),
                               rtol=0, atol=1e-5)


def test_two_processes_under_torchrun_write_the_same_file_as_one(lines, tmp_path):
    """`torchrun --nproc_per_node=2 -m scale.corpus --input ...`: 2 gloo processes, chunk i on rank i % 2,
    give the same bytes as one process (one thread each, so every chunk runs the same arithmetic)."""
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    flags = ["--input", lines, "--chunk-size", 3]
    single = run_cli(*flags, "--output", tmp_path / "one.npy", env=env)
    assert single.returncode == 0, single.stderr[-2000:]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "scale.corpus",
           *map(str, flags), "--output", str(tmp_path / "two.npy")]
    double = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert double.returncode == 0, double.stderr[-2000:]
    assert np.array_equal(np.load(tmp_path / "one.npy"), np.load(tmp_path / "two.npy"))
