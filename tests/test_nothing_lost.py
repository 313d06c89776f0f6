"""The second reliability pass (#52): each test is named after what it protects, and fails on the code
before the fix. Concurrent writers, hostile names, the resume fingerprint."""
import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import data
from reliability import run_folder
from reliability.lock import InUse, holding
from scale import corpus

ROOT = Path(__file__).resolve().parent.parent

HOLD = """
import sys, time
from pathlib import Path
sys.path.insert(0, {root!r})
from reliability.lock import holding
with holding(Path(sys.argv[1]), Path(sys.argv[2]), owner="test", flag="--out"):
    print("held", flush=True)
    time.sleep(float(sys.argv[3]))
"""


def hold_in_another_process(lock: Path, output: Path, seconds: float = 30) -> subprocess.Popen:
    """A process that holds `lock` until it is killed (or `seconds` pass); returns once it holds it."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD.format(root=str(ROOT)), str(lock), str(output), str(seconds)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


class FakeEncoder:
    """What embed_file needs of an encoder: encode() and model.cfg, with rows that name their text."""

    class model:  # noqa: N801
        class cfg:  # noqa: N801
            hidden_size = 4

        @staticmethod
        def state_dict():
            return {"w": torch.zeros(2)}

    @staticmethod
    def encode(sentences, batch_size=32):
        return torch.tensor([[len(s), sum(map(ord, s)) % 97, 1.0, 0.0] for s in sentences])


# ----------------------------------------------------------------------------- concurrent writers
def test_a_second_corpus_job_on_the_same_output_is_refused_in_one_line(tmp_path):
    source = tmp_path / "s.txt"
    source.write_text("a\nb\nc\n")
    output = tmp_path / "emb.npy"
    holder = hold_in_another_process(tmp_path / ".emb.npy.lock", output)
    try:
        started = time.time()
        second = subprocess.run([sys.executable, "-m", "scale.corpus", "--input", str(source), "--output", str(output)],
                                cwd=ROOT, capture_output=True, text=True)
    finally:
        holder.kill()
        holder.wait()
    assert second.returncode == 1
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and "is in use by another" in lines[0] and f"PID {holder.pid}" in lines[0]
    assert time.time() - started < 20  # refused before the model loads
    assert not output.exists() and not (tmp_path / "emb.npy.partial").exists()  # nothing written


def test_concurrent_corpus_jobs_never_mix_their_rows(tmp_path):
    """Two jobs race for one output 100 times (threads; flock locks open files, not processes): the
    output always holds one job's rows whole, and the loser always gets InUse."""
    import threading

    source = tmp_path / "s.txt"
    source.write_text("".join(f"sentence {i}\n" for i in range(40)))
    want = {dtype: FakeEncoder.encode([f"sentence {i}" for i in range(40)]).numpy().astype(dtype)
            for dtype in ("float32", "float16")}
    for trial in range(100):
        output = tmp_path / f"emb-{trial}.npy"
        outcomes = {}

        def job(dtype: str) -> None:
            try:
                corpus.embed_file(FakeEncoder(), source, output, dtype=dtype, chunk_size=5)
                outcomes[dtype] = "wrote"
            except InUse:
                outcomes[dtype] = "refused"

        threads = [threading.Thread(target=job, args=(d,)) for d in ("float32", "float16")]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        got = np.load(output)
        assert any(got.dtype == w.dtype and np.array_equal(got, w) for w in want.values()), trial
        assert sorted(outcomes.values()) in (["refused", "wrote"], ["wrote", "wrote"]), outcomes  # one after the other


def test_a_held_run_folder_is_refused_with_the_holders_pid(tmp_path):
    holder = hold_in_another_process(tmp_path / ".lock", tmp_path)
    try:
        with pytest.raises(run_folder.FolderInUse, match=f"in use by another train.py \\(PID {holder.pid}\\)"):
            with run_folder.locked(tmp_path):
                pass
    finally:
        holder.kill()
        holder.wait()


# ----------------------------------------------------------------------------- hostile names
def test_a_symlinked_lock_is_refused_and_its_target_left_alone(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("the user's own words\n")
    out = tmp_path / "run"
    out.mkdir()
    (out / ".lock").symlink_to(victim)
    with pytest.raises(InUse, match="symbolic link"):
        with run_folder.locked(out):
            pass
    assert victim.read_text() == "the user's own words\n"


def test_a_hard_linked_lock_is_refused(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("mine\n")
    os.link(victim, tmp_path / ".lock")
    with pytest.raises(InUse, match="other links"):
        with holding(tmp_path / ".lock", tmp_path, owner="train.py", flag="--out"):
            pass
    assert victim.read_text() == "mine\n"


@pytest.mark.parametrize("name", ["emb[v2].npy", "emb[12].npy", "emb*.npy", "emb?.npy", "emb #1.npy",
                                  "emb\nv2.npy", "-emb.npy", "émb ü.npy"])
def test_output_names_with_glob_characters_finish_and_touch_no_other_job(tmp_path, name):
    source = tmp_path / "s.txt"
    source.write_text("".join(f"line {i}\n" for i in range(7)))
    other = tmp_path / "emb1.npy.partial.done-0"  # another job's resume record, which a glob of emb[12] matches
    other.write_text("{}")
    output = tmp_path / name
    assert corpus.embed_file(FakeEncoder(), source, output, chunk_size=3) == 7
    assert np.array_equal(np.load(output), FakeEncoder.encode([f"line {i}" for i in range(7)]).numpy())
    assert other.read_text() == "{}"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(name + ".")]  # no partial or record left


# ----------------------------------------------------------------------------- the resume fingerprint
def test_a_hash_in_a_data_path_keeps_the_data_check(tmp_path):
    folder = tmp_path / "d#1"
    folder.mkdir()
    path = folder / "t.csv"
    path.write_text("text,label\n" + "".join(f"row {i},{'xy'[i % 2]}\n" for i in range(10)))
    rows = data.read_user_rows(path, "text", "label")
    ds = data.user_dataset(path, rows, ["x", "y"], "train")
    train, _ = data.split_off(data.per_class_sample(ds, 3, 0), 0.2, 0)
    assert data.fingerprints([train]) == {str(path): hashlib.sha256(path.read_bytes()).hexdigest()}


def fingerprint_info(files: dict[str, bytes], tmp_path: Path) -> dict:
    paths = {}
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
        paths[name] = str(tmp_path / name)
    return {"tasks": {}, "backbone": {}, "data_sha256": {p: hashlib.sha256((tmp_path / n).read_bytes()).hexdigest()
                                                         for n, p in paths.items()}}


def test_swapped_train_and_test_contents_are_refused_on_resume(tmp_path):
    saved = fingerprint_info({"train.csv": b"train rows", "test.csv": b"test rows"}, tmp_path)
    swapped = fingerprint_info({"train.csv": b"test rows", "test.csv": b"train rows"}, tmp_path)
    with pytest.raises(ValueError, match="train.csv is not the file the run started with"):
        run_folder.check_resume_matches(saved, swapped, tmp_path)


def test_train_replaced_by_a_copy_of_test_is_refused_on_resume(tmp_path):
    saved = fingerprint_info({"train.csv": b"train rows", "test.csv": b"test rows"}, tmp_path)
    copied = fingerprint_info({"train.csv": b"test rows", "test.csv": b"test rows"}, tmp_path)
    with pytest.raises(ValueError, match="train.csv is not the file"):
        run_folder.check_resume_matches(saved, copied, tmp_path)


def test_a_moved_data_dir_still_resumes(tmp_path):
    (tmp_path / "old").mkdir()
    (tmp_path / "new").mkdir()
    saved = fingerprint_info({"train.csv": b"train rows", "test.csv": b"test rows"}, tmp_path / "old")
    moved = fingerprint_info({"train.csv": b"train rows", "test.csv": b"test rows"}, tmp_path / "new")
    run_folder.check_resume_matches(saved, moved, tmp_path)  # the same files by name and content


# ----------------------------------------------------------------------------- files a run does not own
def save_as_before_0_8(tensors, path, metadata=None):
    """safetensors < 0.8: writes the path it is given, with the mode open() gives."""
    from safetensors.torch import save

    Path(path).write_bytes(save(tensors, metadata=metadata))


def save_as_0_8(tensors, path, metadata=None):
    """safetensors >= 0.8: its own temporary file beside the path (mode 0600), renamed onto it."""
    from safetensors.torch import save

    tmp = Path(path).with_name(Path(path).name + ".tmpAb12Cd")
    tmp.write_bytes(save(tensors, metadata=metadata))
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


@pytest.mark.parametrize("save", [save_as_before_0_8, save_as_0_8])
def test_a_save_leaves_the_same_files_whichever_safetensors_is_installed(tmp_path, monkeypatch, save):
    """requirements.txt allows safetensors 0.4.3 and later; either way of saving leaves best.safetensors
    alone, with the umask's mode, and a save that dies leaves nothing beside it."""
    from reliability import checkpoint

    monkeypatch.setattr(checkpoint, "save_file", save)
    checkpoint.save_weights(tmp_path / "best.safetensors", {"w": torch.ones(3)})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.safetensors"]
    assert (tmp_path / "best.safetensors").stat().st_mode & 0o777 == 0o666 & ~checkpoint.umask()

    def dies(tensors, path, metadata=None):
        save(tensors, path, metadata)
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint, "save_file", dies)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save_weights(tmp_path / "best.safetensors", {"w": torch.zeros(3)})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.safetensors"]
    assert torch.equal(load_file(tmp_path / "best.safetensors")["w"], torch.ones(3))


def test_a_safetensors_save_leaves_nothing_beside_it_and_takes_the_umask_mode(tmp_path):
    """safetensors >= 0.8 saves through a temporary file of its own: it must land in the writer's
    scratch folder, not beside the output, and the output must get the mode the umask gives."""
    from reliability.checkpoint import save_weights

    old = os.umask(0o077)
    try:
        save_weights(tmp_path / "best.safetensors", {"w": torch.ones(3)})
    finally:
        os.umask(old)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.safetensors"]
    assert (tmp_path / "best.safetensors").stat().st_mode & 0o777 == 0o600  # umask 077: not world-readable
    save_weights(tmp_path / "best.safetensors", {"w": torch.ones(3)})
    assert (tmp_path / "best.safetensors").stat().st_mode & 0o777 == 0o666 & ~old


def test_a_fresh_run_removes_its_own_scratch_and_nothing_else(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    scratch = out / ".last.safetensors.k3x9a1.tmp"  # a save killed mid-write
    scratch.mkdir()
    (scratch / "last.safetensors").write_bytes(b"\0" * 64)
    (out / "best.safetensors.q1w2e3.tmp").write_bytes(b"old-style scratch")
    mine = [out / "notes.tmp", out / "draft.json.tmp"]  # the user's own files
    for path in mine:
        path.write_text("keep me")
    source = tmp_path / "tokenizer-source.json"
    source.write_text("{}")
    run_folder.start_fresh(out, {"config": {}}, source)
    assert not scratch.exists() and not (out / "best.safetensors.q1w2e3.tmp").exists()
    assert all(path.read_text() == "keep me" for path in mine)


def test_a_fresh_run_never_replaces_files_no_run_wrote(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "tokenizer.json").write_text("my own tokenizer")
    (out / "metrics.jsonl").write_text("my own metrics\n")
    config, defaults = {"overwrite": False}, {}
    with pytest.raises(ValueError, match="tokenizer.json, metrics.jsonl but no run.json"):
        run_folder.check_before_start(out, False, config, defaults, "fp32")
    assert (out / "tokenizer.json").read_text() == "my own tokenizer"
    run_folder.check_before_start(out, False, {"overwrite": True}, defaults, "fp32")  # asked: allowed


def test_mpnet_weights_dir_at_a_users_folder_is_never_fetched_into(tmp_path, monkeypatch):
    import mpnet

    fetched = []
    monkeypatch.setattr(mpnet, "fetch", lambda folder: fetched.append(folder))
    mine = tmp_path / "my-export"
    mine.mkdir()
    (mine / "config.json").write_text('{"model_type": "mpnet", "mine": true}')
    (mine / "notes.txt").write_text("mine")
    before = {p.name: p.read_bytes() for p in mine.iterdir()}
    monkeypatch.setenv("MPNET_WEIGHTS_DIR", str(mine))
    with pytest.raises(FileNotFoundError, match="nothing there was changed"):
        mpnet.SentenceEncoder.from_pretrained()
    assert {p.name: p.read_bytes() for p in mine.iterdir()} == before and not fetched
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("MPNET_WEIGHTS_DIR", str(empty))
    with pytest.raises(Exception):  # the stand-in fetched nothing, so loading then fails
        mpnet.SentenceEncoder.from_pretrained()
    assert fetched == [empty]  # an empty folder of yours is a place to fetch into


# ----------------------------------------------------------------------------- one line, not a traceback
@pytest.mark.parametrize("content", ["[]", "[" * 100_000 + "]" * 100_000, "{not json"])
def test_a_run_json_that_is_not_an_object_is_one_line_on_resume(tmp_path, content):
    out = tmp_path / "run"
    out.mkdir()
    (out / "last.safetensors").write_bytes(b"")
    (out / "run.json").write_text(content)
    with pytest.raises(ValueError, match="run.json (holds a JSON list|is not readable JSON)"):
        run_folder.check_before_start(out, True, {"dtype": "fp32"}, {}, "fp32")


def test_nan_weights_in_best_are_refused_when_a_run_loads(tmp_path):
    from safetensors.torch import load_file, save_file

    from reliability.saved_run import load_run
    from test_reliability import tiny_run_folder

    out = tiny_run_folder(tmp_path)
    weights = load_file(out / "best.safetensors")
    name = sorted(weights)[3]
    weights[name][0] = float("nan")
    save_file(weights, out / "best.safetensors")
    with pytest.raises(ValueError, match=f"{name} holds NaN or infinite values"):
        load_run(out)


# ----------------------------------------------------------------------------- the readers
@pytest.mark.parametrize("bad_line", [2, 5001])
def test_a_utf8_error_names_its_own_line(tmp_path, bad_line):
    path = tmp_path / "s.txt"
    path.write_bytes(b"".join(b"fine line %d\n" % i for i in range(1, bad_line)) + b"caf\xe9\n" + b"after\n")
    with pytest.raises(ValueError, match=f"s.txt:{bad_line}: not UTF-8 text"):
        list(corpus.read_sentences(path, None))
    table = tmp_path / "t.csv"  # the CSV/TSV reader too (it said "after line 4989" for line 5001)
    table.write_bytes(b"text,label\n" + b"".join(b"fine %d,pos\n" % i for i in range(2, bad_line))
                      + b"caf\xe9,neg\nafter,pos\n")
    with pytest.raises(ValueError, match=f"t.csv:{bad_line}: not UTF-8 text"):
        data.read_table(table, ["text", "label"], delimiter=",")


LONG_LINE_PEAK = """
import resource, sys
sys.path.insert(0, {root!r})
from pathlib import Path
from predict import read_texts
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
lengths = [len(text) for _, text in read_texts(Path(sys.argv[1]), None, say=True)]
grew = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
print(lengths, grew // 1024)
"""


def test_a_gigabyte_line_is_cut_at_a_mebibyte_holding_no_more(tmp_path):
    """The whole 1 GiB line once took 150 bytes of tokenizer memory per character; now the reader holds
    at most LONGEST_LINE bytes of it, says so in one line, and reads the lines after it."""
    path = tmp_path / "big.txt"
    with open(path, "wb") as f:
        f.write(b"short first\n")
        block = b"word " * (1 << 18)  # 1.25 MiB
        for _ in range(820):  # 1 GiB + a little: one line
            f.write(block)
        f.write(b"\nlast line\n")
    run = subprocess.run([sys.executable, "-c", LONG_LINE_PEAK.format(root=str(ROOT)), str(path)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    lengths, grew_mb = run.stdout.split("] ")
    assert lengths + "]" == f"[11, {data.LONGEST_LINE}, 9]"
    assert int(grew_mb) <= 64, f"reading the line grew the process by {grew_mb} MB"
    said = run.stderr.strip().splitlines()
    assert len(said) == 1 and f"big.txt:2: a line of {820 * 5 * (1 << 18):,} bytes" in said[0]


def test_a_cut_line_tokenizes_as_the_whole_line_does(tmp_path):
    """What the cut keeps holds the 384 tokens the model reads: the ids are the full line's."""
    from mpnet import Tokenizer
    from weights.fetch import fetch

    tokenizer = Tokenizer(fetch() / "tokenizer.json")
    words = "Ünïcode café naïve — a sentence of words, numbers 12345 and punctuation! "
    text = words * (2 * data.LONGEST_LINE // len(words.encode()))
    path = tmp_path / "long.txt"
    path.write_text(text + "\n", encoding="utf-8")
    (kept,) = list(corpus.read_sentences(path, None))
    assert len(kept.encode()) <= data.LONGEST_LINE < len(text.encode())
    assert tokenizer.encode([kept]) == tokenizer.encode([text])


@pytest.mark.parametrize("name", ["t.csv", "t.tsv", "t.jsonl"])
def test_a_table_line_over_a_mebibyte_is_refused_naming_it(tmp_path, name):
    long = "x" * (data.LONGEST_LINE + 10)
    path = tmp_path / name
    if name.endswith(".jsonl"):
        line = '{"text": "%s", "label": "b"}' % long
        path.write_text('{"text": "fine", "label": "a"}\n' + line + "\n")
    else:
        sep = "," if name.endswith(".csv") else "\t"
        line = f"{long}{sep}b"
        path.write_text(f"text{sep}label\nfine{sep}a\n{line}\n")
    number = 2 if name.endswith(".jsonl") else 3
    with pytest.raises(ValueError, match=rf"{name}:{number}: a line of {len(line):,} bytes; a line may hold at most"):
        data.read_user_rows(path, "text", "label")
    if name.endswith(".csv"):  # a quoted field over many short lines is bounded too
        path.write_text("text,label\n\"" + "x\n" * (data.LONGEST_LINE // 2 + 1) + '",a\n')
        with pytest.raises(ValueError, match="a field of over 1,048,576 characters"):
            data.read_user_rows(path, "text", "label")


def test_the_labels_file_splits_at_line_feeds_only(tmp_path):
    path = tmp_path / "labels.txt"
    path.write_bytes("\ufeffa\rb\r\nc\u2028d\n\nlast".encode())
    assert data.read_label_names(path) == ["a\rb", "c\u2028d", "last"]


# ----------------------------------------------------------------------------- a full disk, one line
@pytest.fixture
def small_disk(tmp_path):
    """A real full disk: a 2 MB tmpfs (as root, where the container allows a mount)."""
    where = tmp_path / "small"
    where.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(where)], capture_output=True,
                          text=True)
    if done.returncode != 0:  # the injected ENOSPC tests below still run
        pytest.skip(f"no tmpfs can be mounted here: {done.stderr.strip()}")
    yield where
    subprocess.run(["umount", "-l", str(where)], check=True)


def one_error_line(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: the disk is full (writing "), done.stderr
    return last


def test_a_real_full_disk_is_one_line_from_each_command(small_disk, tmp_path):
    """train.py (the real model's checkpoint, 438 MB, meets 2 MB), the corpus command and predict.py
    each end in one line on ENOSPC, leave nothing half-written, and a user's file there stays."""
    mine = small_disk / "mine.txt"
    mine.write_text("a file of yours\n")
    lines = tmp_path / "lines.txt"
    lines.write_text("".join(f"sentence number {i}\n" for i in range(800)))  # 2.4 MB of float32 rows

    env = os.environ | {"PYTHONPATH": str(ROOT)}
    run = small_disk / "run"
    train = subprocess.run([sys.executable, "train.py", "--task-a", "reviews-topic", "--task-b", "none",
                            "--max-train", "16", "--max-steps", "1", "--out", str(run)], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=600)
    assert "run the same command with --resume" in one_error_line(train)
    emb = subprocess.run([sys.executable, "-m", "scale.corpus", "--input", str(lines), "--chunk-size", "200",
                          "--output", str(small_disk / "emb.npy")], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=600)
    assert "it resumes" in one_error_line(emb)
    assert not (small_disk / "emb.npy").exists()

    from test_reliability import tiny_run_folder

    folder, long_lines = tiny_run_folder(tmp_path), tmp_path / "long.txt"
    long_lines.write_text("".join(f"{'a longer sentence ' * 20}{i}\n" for i in range(6000)))  # 2.2 MB echoed
    preds = subprocess.run([sys.executable, "predict.py", "--checkpoint", str(folder), "--input", str(long_lines),
                            "--output", str(small_disk / "p.jsonl")], cwd=ROOT, env=env, capture_output=True,
                           text=True, timeout=600)
    one_error_line(preds)
    assert not (small_disk / "p.jsonl").exists()
    for path in small_disk.rglob("*"):  # no scratch of any write is left
        assert not path.name.endswith(".tmp"), path
    assert mine.read_text() == "a file of yours\n"


@pytest.mark.parametrize("target", ["run.json", "tokenizer.json", "metrics.jsonl", "last.safetensors",
                                    "best.safetensors"])
def test_a_full_disk_at_each_write_of_train_py_is_one_line(tmp_path, monkeypatch, capsys, target):
    """Wherever train.py's writes meet ENOSPC (injected: CI may not mount a tmpfs), one line says so."""
    import train as train_mod
    from test_own_data import ticket_rows, write_csv
    from test_reliability import disk_full_at
    from heads import MultiTaskModel
    from mpnet import MPNet, MPNetConfig, Tokenizer
    from weights.fetch import fetch

    csv_path = write_csv(tmp_path / "tickets.csv", ticket_rows())
    tokenizer = Tokenizer(fetch() / "tokenizer.json")
    tiny = MPNetConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
    monkeypatch.setattr(train_mod, "build", lambda cfg, sets: (MultiTaskModel(MPNet(tiny), {"a": 3}), tokenizer))
    disk_full_at(monkeypatch, target, nth=1)
    with pytest.raises(SystemExit) as stop:
        train_mod.main(["--task-a", str(csv_path), "--task-b", "none", "--epochs", "1", "--batch-size", "8",
                        "--dtype", "fp32", "--out", str(tmp_path / "run")])
    assert str(stop.value.code).startswith(f"error: the disk is full (writing {tmp_path / 'run'}")
    assert not (tmp_path / "run" / target).exists() or target == "metrics.jsonl"


def test_a_full_disk_in_predict_is_one_line_and_keeps_the_earlier_file(tmp_path, monkeypatch):
    import predict
    from reliability import checkpoint
    from test_reliability import disk_full_at, tiny_run_folder

    folder, source, output = tiny_run_folder(tmp_path), tmp_path / "in.txt", tmp_path / "p.jsonl"
    source.write_text("one\ntwo\n")
    predict.main(["--checkpoint", str(folder), "--input", str(source), "--output", str(output)])
    before = output.read_bytes()
    disk_full_at(monkeypatch, "p.jsonl", nth=1)
    monkeypatch.setattr(predict, "write_atomic", checkpoint.write_atomic)  # predict's own name for it
    with pytest.raises(SystemExit) as stop:
        predict.main(["--checkpoint", str(folder), "--input", str(source), "--output", str(output)])
    assert str(stop.value.code).strip() == (f"error: the disk is full (writing {output}); what was written "
                                            f"before is whole: free some space, then run the same command again")
    assert output.read_bytes() == before


def test_two_predicts_into_one_output_the_second_is_refused(tmp_path, capsys):
    import predict
    from test_reliability import tiny_run_folder

    folder, source, output = tiny_run_folder(tmp_path), tmp_path / "in.txt", tmp_path / "p.jsonl"
    source.write_text("one\n")
    holder = hold_in_another_process(tmp_path / ".p.jsonl.lock", output)
    try:
        with pytest.raises(SystemExit) as stop:
            predict.main(["--checkpoint", str(folder), "--input", str(source), "--output", str(output)])
    finally:
        holder.kill()
    assert f"is in use by another predict.py (PID {holder.pid})" in str(stop.value.code)
    assert not output.exists()


def test_a_config_json_with_absurd_sizes_is_refused_before_anything_is_built(tmp_path):
    """A same-size config.json edited to 1e8 layers made from_pretrained(path) build names for 1e8
    layers (a hang); the layer count must match the weights file's first."""
    import json as json_module

    from mpnet import FILES, SentenceEncoder
    from weights.fetch import fetch

    source = fetch()
    for name in FILES:
        (tmp_path / name).symlink_to(source / name)
    config = json_module.loads((source / "config.json").read_text())
    (tmp_path / "config.json").unlink()
    (tmp_path / "config.json").write_text(json_module.dumps(config | {"num_hidden_layers": 100_000_000}))
    started = time.time()
    with pytest.raises(ValueError, match="holds 12 layers, but config.json says 100000000"):
        SentenceEncoder.from_pretrained(tmp_path)
    assert time.time() - started < 30


def test_a_symlinked_test_rows_file_pointing_outside_is_refused(tmp_path):
    import json as json_module

    from reliability.saved_run import load_run
    from test_reliability import tiny_run_folder

    out = tiny_run_folder(tmp_path)
    secret = tmp_path / "secret.jsonl"
    secret.write_text('{"text": "a private line", "label": "q"}\n')
    (out / "test-a.jsonl").symlink_to(secret)
    info = json_module.loads((out / "run.json").read_text())
    info["tasks"]["a"]["test_rows"] = "test-a.jsonl"
    (out / "run.json").write_text(json_module.dumps(info))
    with pytest.raises(ValueError, match="test-a.jsonl is a symbolic link"):
        load_run(out)


def test_layer_parity_never_unpickles_a_bin_placed_in_the_weights_folder(tmp_path):
    """transformers' from_pretrained(folder) would torch.load a pytorch_model.bin found there; the
    tool asks for the safetensors file alone."""
    import pickle

    from test_reliability import Payload
    from tools.layer_parity import reference_hidden_states
    from weights.fetch import fetch

    for name in ("config.json", "tokenizer.json"):
        (tmp_path / name).symlink_to(fetch() / name)
    marker = tmp_path / "code-ran"
    (tmp_path / "pytorch_model.bin").write_bytes(pickle.dumps(Payload(str(marker))))
    batch = {"input_ids": torch.tensor([[0, 9, 2]]), "attention_mask": torch.tensor([[1, 1, 1]])}
    with pytest.raises(OSError):  # no model.safetensors: refused, the .bin never opened
        reference_hidden_states(batch, tmp_path)
    assert not marker.exists()


def test_concurrent_writers_in_separate_processes_never_mix_an_output():
    """The short form of tests/writer_races.py (the long form: --trials 100): two corpus jobs, two
    predicts into one file, and a corpus job beside a train run, each raced in two processes."""
    import writer_races

    result = writer_races.run(trials=2, seed=1)
    assert result["races"] == 6 and result["corrupt_or_mixed"] == 0


# ----------------------------------------------------------------------------- a folder's files, before and after
def listing(folder: Path) -> dict[str, str]:
    """Every file under folder (links not followed): its path -> sha256 of its bytes."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.is_symlink()}


def plant_users_files(folder: Path) -> None:
    """What a user may keep in a folder the project is pointed at, hostile names included."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("notes.txt", "notes.tmp", "draft.json.tmp", "emb[1].npy", "a #1 file", "line\nbreak.txt",
                 ".hidden", "best.safetensors.bak"):
        (folder / name).write_text(f"the user's {name}")


def only_added(before: dict, after: dict, may_add: set[str]) -> None:
    kept = {k: after.get(k) for k in before}
    assert kept == before, "a file the project did not write was changed or removed"
    added = set(after) - set(before)
    assert added <= may_add, f"unexpected new files: {sorted(added - may_add)}"


def test_nothing_a_user_made_is_deleted_or_replaced_by_a_run_a_resume_or_a_corpus_job(tmp_path, monkeypatch,
                                                                                  capsys):
    import train as train_mod
    from heads import MultiTaskModel
    from mpnet import MPNet, MPNetConfig, SentenceEncoder, Tokenizer
    from test_own_data import ticket_rows, write_csv
    from weights.fetch import fetch

    csv_path = write_csv(tmp_path / "tickets.csv", ticket_rows())
    tokenizer = Tokenizer(fetch() / "tokenizer.json")
    tiny = MPNetConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)

    def tiny_build(cfg, sets):
        torch.manual_seed(0)
        return MultiTaskModel(MPNet(tiny), {"a": 3}), tokenizer

    monkeypatch.setattr(train_mod, "build", tiny_build)
    monkeypatch.setattr(MPNetConfig, "of_weights", classmethod(lambda cls: tiny))  # what --resume compares
    out = tmp_path / "run"
    plant_users_files(out)
    may_add = set(run_folder.OWNED) | {".lock", "test-a.jsonl"}
    before = listing(out)
    flags = ["--task-a", str(csv_path), "--task-b", "none", "--epochs", "2", "--batch-size", "8",
             "--dtype", "fp32", "--save-every", "1", "--out", str(out)]
    from test_train import crash_before_step

    real_step = crash_before_step(monkeypatch, 3, "the machine went away")
    with pytest.raises(RuntimeError, match="went away"):
        train_mod.main(flags)
    only_added(before, listing(out), may_add)
    (out / "later notes.md").write_text("written between the crash and the resume")
    before = listing(out)
    monkeypatch.setattr(train_mod, "train_step", real_step)
    train_mod.main(flags + ["--resume"])
    after = listing(out)
    mine = {k: v for k, v in before.items() if k not in may_add}  # the run's own files may change
    only_added(mine, {k: v for k, v in after.items() if k in mine or k not in before}, may_add)

    corpus_dir = tmp_path / "embeddings"
    plant_users_files(corpus_dir)
    lines = tmp_path / "lines.txt"
    lines.write_text("".join(f"line {i}\n" for i in range(30)))
    before = listing(corpus_dir)
    encoder = SentenceEncoder(MPNet(tiny).eval(), tokenizer)
    corpus.embed_file(encoder, lines, corpus_dir / "emb.npy", chunk_size=7)
    only_added(before, listing(corpus_dir), {"emb.npy", ".emb.npy.lock"})
