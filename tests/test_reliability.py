"""Interruption, checkpoint consistency, resume checks and the non-finite guard, on the tiny config
(plus one end-to-end signal test of the real `python train.py`)."""
import errno
import json
import os
import pickle
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from reliability import checkpoint, run_folder
import train as train_mod
from mpnet import MPNetConfig
from reliability.checkpoint import load_training_state, read_progress
from test_train import config, tasks, tiny_model, tokenizer  # noqa: F401  (the real tokenizer fixture)

ROOT_DIR = Path(__file__).resolve().parent.parent

# 8 examples in one pool, batch 2: 4 steps per epoch, 12 in all; step 6 is in the middle of epoch 2.
EPOCHS, BATCH, MID = 3, 2, 6


def check(cfg, resume):
    """What main() checks before anything loads."""
    return run_folder.check_before_start(Path(cfg.out), resume, asdict(cfg), asdict(train_mod.TrainConfig()),
                                         train_mod.precision(cfg))


def run_cfg(path, **kw):
    return config(path, **({"epochs": EPOCHS, "batch_size": BATCH} | kw))


def assert_same_weights(a, b):
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), name


@pytest.fixture(scope="module")
def straight(tmp_path_factory, tokenizer):  # noqa: F811
    """The uninterrupted run every interrupted one must reproduce."""
    model = tiny_model()
    train_mod.train(run_cfg(tmp_path_factory.mktemp("straight")), model, tokenizer, tasks(), tasks())
    return model


def step_hook(monkeypatch, at_step, action):
    """Call action() right after optimizer step `at_step` of the next run."""
    real_step = train_mod.train_step

    def step(run, batch):
        result = real_step(run, batch)
        if run.progress.step + 1 == at_step:  # the loop counts the step once it returns
            action()
        return result

    monkeypatch.setattr(train_mod, "train_step", step)


def resume(cfg, tokenizer):  # noqa: F811
    model = tiny_model(seed=123)  # its own weights are overwritten by the checkpoint
    train_mod.train(cfg, model, tokenizer, tasks(), tasks(), resume=True)
    return model


# ----------------------------------------------------------------------------- signals and mid-epoch resume
@pytest.mark.numerics
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])  # SIGHUP: a dropped ssh session
def test_signal_mid_epoch_saves_then_resume_equals_uninterrupted(tmp_path, tokenizer, monkeypatch, straight, sig):  # noqa: F811
    cfg, handler_before = run_cfg(tmp_path), signal.getsignal(sig)
    step_hook(monkeypatch, MID, lambda: signal.raise_signal(sig))
    with pytest.raises(run_folder.Interrupted) as stopped:
        train_mod.train(cfg, tiny_model(), tokenizer, tasks(), tasks())
    assert stopped.value.signum == sig and stopped.value.step == MID
    assert read_progress(tmp_path / "run" / "last.safetensors")["step"] == MID
    assert signal.getsignal(sig) == handler_before  # training no longer owns the signal
    monkeypatch.undo()
    assert_same_weights(straight, resume(cfg, tokenizer))


@pytest.mark.numerics
def test_a_signal_during_validation_stops_right_after_it(tmp_path, tokenizer, monkeypatch, straight):  # noqa: F811
    """Not one step later: the validation at the end of epoch 1 (step 4) is saved, and the run stops there."""
    cfg, real_accuracies = run_cfg(tmp_path), train_mod.accuracies

    def accuracies(*args, **kwargs):
        signal.raise_signal(signal.SIGTERM)  # arrives while the validation runs
        return real_accuracies(*args, **kwargs)

    monkeypatch.setattr(train_mod, "accuracies", accuracies)
    with pytest.raises(run_folder.Interrupted) as stopped:
        train_mod.train(cfg, tiny_model(), tokenizer, tasks(), tasks())
    assert stopped.value.step == 4 and read_progress(tmp_path / "run" / "last.safetensors")["step"] == 4
    monkeypatch.undo()
    assert_same_weights(straight, resume(cfg, tokenizer))


@pytest.mark.numerics
def test_save_every_then_crash_then_resume_equals_uninterrupted(tmp_path, tokenizer, monkeypatch, straight):  # noqa: F811
    cfg = run_cfg(tmp_path, save_every=3)

    def crash():
        raise RuntimeError("simulated crash")

    step_hook(monkeypatch, 7, crash)  # a step after the save at step 6: that step's work is lost
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_mod.train(cfg, tiny_model(), tokenizer, tasks(), tasks())
    assert read_progress(tmp_path / "run" / "last.safetensors")["step"] == 6
    monkeypatch.undo()
    assert_same_weights(straight, resume(cfg, tokenizer))


@pytest.mark.parametrize("save_every, steps_saved", [(0, [4, 8, 12]), (5, [5, 10, 12])])
def test_checkpoints_at_each_epoch_end_or_every_n_steps_instead(tmp_path, tokenizer, monkeypatch, save_every, steps_saved):  # noqa: F811
    """4 steps an epoch, 3 epochs: by default one save per epoch end (the last one after the loop,
    once); --save-every N saves every N steps and at the end, not at epoch ends (few-shot epochs are
    a step long, and each save writes weights plus AdamW's moments)."""
    saved, real_save = [], run_folder.save_training_state

    def save(path, model, optimizer, scheduler, sampler, progress, rng_states=None, weights=None):
        saved.append(progress["step"])
        real_save(path, model, optimizer, scheduler, sampler, progress, rng_states)

    monkeypatch.setattr(run_folder, "save_training_state", save)
    train_mod.train(run_cfg(tmp_path, save_every=save_every), tiny_model(), tokenizer, tasks(), tasks())
    assert saved == steps_saved


@pytest.mark.numerics
def test_same_seed_fp32_gives_bit_identical_weights(tmp_path, tokenizer, straight):  # noqa: F811
    again = tiny_model()
    train_mod.train(run_cfg(tmp_path), again, tokenizer, tasks(), tasks())
    assert_same_weights(straight, again)


def tiny_run_folder(tmp_path, dtype=torch.float32) -> Path:
    """A run folder as train.py writes it, for the tiny model; its weights saved in `dtype`."""
    from safetensors.torch import save_file

    from weights.fetch import fetch

    model, out = tiny_model(), tmp_path / "tiny"
    out.mkdir()
    info = {"config": {"normalize": False}, "backbone": asdict(model.backbone.cfg),
            "tasks": {"a": {"dataset": "toy", "label_names": ["q", "d", "p", "s"]},
                      "b": {"dataset": "toy", "label_names": ["neg", "pos"]}}}
    (out / "run.json").write_text(json.dumps(info))
    (out / "tokenizer.json").write_bytes((fetch() / "tokenizer.json").read_bytes())
    save_file({k: v.to(dtype).contiguous() for k, v in model.state_dict().items()}, out / "best.safetensors")
    return out


def test_run_json_normalize_must_be_a_boolean(tmp_path):
    from eval import load_run

    out = tiny_run_folder(tmp_path)
    info = json.loads((out / "run.json").read_text())
    (out / "run.json").write_text(json.dumps(info | {"config": {"normalize": "yes"}}))
    with pytest.raises(ValueError, match="config normalize is 'yes', expected true or false"):
        load_run(out)


def test_best_weights_of_another_dtype_are_refused(tmp_path):
    from eval import load_run

    with pytest.raises(ValueError, match=r"is torch.bfloat16, expected float32"):
        load_run(tiny_run_folder(tmp_path, torch.bfloat16))


@pytest.mark.parametrize("top", [0, -1, 1.5, True])
def test_predict_top_must_be_a_positive_integer(tmp_path, top):
    from predict import Classifier

    classifier = Classifier.from_checkpoint(tiny_run_folder(tmp_path))
    assert classifier.predict(["the parcel never came"], top=1)[0]["a"]["next"] == []
    with pytest.raises(ValueError, match="top must be an integer >= 1"):
        classifier.predict(["the parcel never came"], top=top)


# ----------------------------------------------------------------------------- fault injection
def fail_writing_halfway(tensors, path, metadata=None):
    Path(path).write_bytes(b"\x00" * 100)  # a torn write: some bytes, then the process dies
    raise OSError("simulated: killed while writing")


def fail_before_rename(src, dst):
    raise OSError("simulated: killed between writing the file and renaming it")


@pytest.mark.numerics
@pytest.mark.parametrize("where", ["while writing", "before the rename"])
def test_a_save_that_dies_leaves_the_previous_checkpoint_whole(tmp_path, tokenizer, monkeypatch, straight, where):  # noqa: F811
    """kill -9 at any instant of a save: last.safetensors is still the previous complete checkpoint."""
    cfg = run_cfg(tmp_path, save_every=2)
    real_save = checkpoint.save_training_state

    def save(path, model, optimizer, scheduler, sampler, progress, rng_states=None, weights=None):
        if progress["step"] == MID:  # the save after step 6 dies; the one after step 4 went through
            if where == "while writing":
                monkeypatch.setattr(checkpoint, "save_file", fail_writing_halfway)
            else:
                monkeypatch.setattr(checkpoint.os, "replace", fail_before_rename)
        real_save(path, model, optimizer, scheduler, sampler, progress, rng_states)

    monkeypatch.setattr(run_folder, "save_training_state", save)
    with pytest.raises(OSError, match="simulated"):
        train_mod.train(cfg, tiny_model(), tokenizer, tasks(), tasks())
    monkeypatch.undo()
    out = tmp_path / "run"
    assert not list(out.glob("*.tmp"))  # the failed save took its temporary file with it...
    weights, _, state = load_training_state(out / "last.safetensors")  # ...and left the whole checkpoint
    # the save at step 4, taken in the loop as the epoch's last batch was done (--save-every: the
    # epoch's end writes nothing more); the resume then does the epoch's end
    assert state["progress"]["step"] == 4 and state["sampler"]["position"] == 4
    assert_same_weights(straight, resume(cfg, tokenizer))


def disk_full_at(monkeypatch, target: str, nth: int) -> None:
    """The nth atomic write of `target` fails as a full disk does: some bytes land, then ENOSPC."""
    real, seen = checkpoint.write_atomic, []

    def write_atomic(write, path):
        seen.append(Path(path).name)
        if Path(path).name == target and seen.count(target) == nth:
            def fills_the_disk(tmp):
                Path(tmp).write_bytes(b"\0" * 64)
                raise OSError(errno.ENOSPC, "No space left on device", str(tmp))
            return real(fills_the_disk, path)
        return real(write, path)

    for module in (checkpoint, run_folder):
        monkeypatch.setattr(module, "write_atomic", write_atomic)


@pytest.mark.parametrize("target", ["last.safetensors", "best.safetensors", "metrics.jsonl", "losses.jsonl"])
def test_a_full_disk_at_each_write_of_training_leaves_the_previous_files_whole(tmp_path, tokenizer, monkeypatch,
                                                                              straight, target):  # noqa: F811
    """ENOSPC at the second write of each file: the error surfaces, no temporary file stays, the file keeps
    its previous version, and once there is space again the resume ends where an uninterrupted run does."""
    cfg = run_cfg(tmp_path)
    disk_full_at(monkeypatch, target, nth=2)
    with pytest.raises(OSError) as info:
        train_mod.train(cfg, tiny_model(), tokenizer, tasks(), tasks())
    monkeypatch.undo()
    assert info.value.errno == errno.ENOSPC
    out = tmp_path / "run"
    assert not list(out.glob("*.tmp"))
    load_training_state(out / "last.safetensors")  # readable: the previous complete checkpoint
    load_file(out / "best.safetensors")
    for name in ("metrics.jsonl", "losses.jsonl"):
        [json.loads(line) for line in (out / name).read_text().splitlines()]
    assert_same_weights(straight, resume(cfg, tokenizer))


@pytest.mark.parametrize("target", ["run.json", "tokenizer.json", "test-a.jsonl"])
def test_a_full_disk_while_a_run_folder_is_set_up_leaves_no_half_file(tmp_path, monkeypatch, target):
    from data import LabelledTexts

    source = tmp_path / "tokenizer-source.json"
    source.write_text("{}")
    disk_full_at(monkeypatch, target, nth=1)
    out = tmp_path / "run"
    with pytest.raises(OSError) as info:
        run_folder.start_fresh(out, {"config": {}}, source, {"a": LabelledTexts("mine", "test", ["x"], [0], ["p", "q"])})
    assert info.value.errno == errno.ENOSPC
    assert not (out / target).exists() and not list(out.glob("*.tmp"))


class Payload:
    """Unpickling this would create a file: the proof that code ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_sampler_of_twelve_million_rows_fits_in_a_checkpoint(tmp_path):
    """The remaining order travels as a tensor: as JSON in the header it would pass safetensors' 100 MB
    header limit, and the checkpoint could not be read back."""
    class Sampler:
        def state_dict(self):
            return {"rng": [3, [1, 2], None], "orders": [list(range(12_000_000)), [2, 0, 1]], "position": 5}

    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    path = tmp_path / "last.safetensors"
    checkpoint.save_training_state(path, model, optimizer, scheduler, Sampler(), {"step": 5})
    _, _, state = load_training_state(path)
    assert state["sampler"]["position"] == 5 and state["sampler"]["orders"][1] == [2, 0, 1]
    assert state["sampler"]["orders"][0] == list(range(12_000_000))  # 109 MB as JSON
    assert read_progress(path) == {"step": 5}


def test_a_pickle_in_place_of_the_checkpoint_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "code-ran"
    (tmp_path / "last.safetensors").write_bytes(pickle.dumps({"optimizer": Payload(str(marker))}))
    with pytest.raises(ValueError, match="is not a readable checkpoint"):
        load_training_state(tmp_path / "last.safetensors")
    torch.save({"optimizer": Payload(str(marker))}, tmp_path / "last.safetensors")  # the old state.pt format
    with pytest.raises(ValueError, match="is not a readable checkpoint"):
        load_training_state(tmp_path / "last.safetensors")
    assert not marker.exists()


def test_a_damaged_or_foreign_safetensors_file_is_refused(tmp_path, tokenizer):  # noqa: F811
    train_mod.train(run_cfg(tmp_path, epochs=1), tiny_model(), tokenizer, tasks(), tasks())
    last = tmp_path / "run" / "last.safetensors"
    good = last.read_bytes()
    last.write_bytes(good[:len(good) // 2])
    with pytest.raises(ValueError, match="is not a readable checkpoint"):
        load_training_state(last)
    with pytest.raises(ValueError, match="not a train.py checkpoint"):
        load_training_state(tmp_path / "run" / "best.safetensors")  # weights only: no optimizer, no RNG


# ----------------------------------------------------------------------------- resume checks
def test_resume_without_a_checkpoint_says_what_is_missing(tmp_path, capsys):
    with pytest.raises(SystemExit, match=r"--resume: .* has no last.safetensors and run.json, so there is nothing "
                                         r"to resume; run without --resume to start a fresh run there"):
        train_mod.main(["--out", str(tmp_path / "x"), "--resume"])


def write_unfinished_run(tmp_path, tokenizer, monkeypatch, **kw):  # noqa: F811
    cfg = run_cfg(tmp_path, **kw)
    step_hook(monkeypatch, 2, lambda: signal.raise_signal(signal.SIGTERM))
    with pytest.raises(run_folder.Interrupted):
        train_mod.train(cfg, tiny_model(), tokenizer, tasks(), tasks())
    monkeypatch.undo()
    info = run_folder.run_info(cfg, tiny_model().backbone.cfg, tasks())
    (Path(cfg.out) / "run.json").write_text(json.dumps(info))
    return cfg


def test_resume_with_other_flags_lists_the_differences(tmp_path, tokenizer, monkeypatch):  # noqa: F811
    cfg = write_unfinished_run(tmp_path, tokenizer, monkeypatch)
    changed = train_mod.TrainConfig(**(vars(cfg) | {"lr": 5e-4, "batch_size": 4, "log_every": 1}))
    with pytest.raises(ValueError) as e:
        check(changed, resume=True)
    assert "--batch-size 4 (run.json: 2)" in str(e.value) and "--lr 0.0005 (run.json: 0.001)" in str(e.value)
    assert "log-every" not in str(e.value)  # logging does not change what is computed
    info = check(cfg, resume=True)
    other_labels = tasks()
    other_labels["a"].label_names = ["w", "x", "y", "z"]
    with pytest.raises(ValueError, match=r"the data or model differ from .*run.json: tasks"):
        run_folder.check_resume_matches(info, run_folder.run_info(cfg, tiny_model().backbone.cfg, other_labels), tmp_path)
    bigger = MPNetConfig(**(vars(info_backbone := tiny_model().backbone.cfg) | {"num_hidden_layers": 4}))
    assert bigger != info_backbone
    with pytest.raises(ValueError, match=r"differ from .*run.json: backbone"):
        run_folder.check_resume_matches(info, run_folder.run_info(cfg, bigger, tasks()), tmp_path)


def test_a_run_resumes_in_the_precision_it_started_in(tmp_path, tokenizer, monkeypatch):  # noqa: F811
    """A run started with --dtype auto where it means fp32, resumed on a CPU where auto means bf16 (and
    back): refused with the flag to use, which then passes; a run.json without "precision" (from before
    it was recorded) is checked as before, flag by flag."""
    cfg = write_unfinished_run(tmp_path, tokenizer, monkeypatch, dtype="auto")
    info = json.loads((Path(cfg.out) / "run.json").read_text())
    started_in = info["precision"]
    other = "bf16" if started_in == "fp32" else "fp32"
    monkeypatch.setattr(train_mod, "precision",
                        lambda c: "bf16" if (c.dtype == "bf16") or (c.dtype == "auto" and other == "bf16") else "fp32")
    with pytest.raises(ValueError, match=rf"trains in {started_in} \(run.json\), and --dtype auto gives {other} on "
                                         rf"this CPU .* resume with --dtype {started_in}$"):
        check(cfg, resume=True)
    check(replace(cfg, dtype=started_in), resume=True)  # the flag it names
    with pytest.raises(ValueError, match=f"trains in {started_in}"):
        check(replace(cfg, dtype=other), resume=True)
    del info["precision"]
    (Path(cfg.out) / "run.json").write_text(json.dumps(info))
    check(cfg, resume=True)  # auto as before: no check of what it means here
    with pytest.raises(ValueError, match=rf"--dtype '{started_in}' \(run.json: 'auto'\)"):
        check(replace(cfg, dtype=started_in), resume=True)


def test_a_fresh_run_does_not_replace_an_unfinished_one(tmp_path, tokenizer, monkeypatch):  # noqa: F811
    cfg = write_unfinished_run(tmp_path, tokenizer, monkeypatch)
    with pytest.raises(ValueError, match=r"holds an unfinished run \(stopped at step 2\); continue it with --resume"):
        check(cfg, resume=False)


def test_a_fresh_run_never_replaces_a_trained_model_unless_asked(tmp_path):
    """Also when last.safetensors was deleted to save space, or is damaged: best.safetensors is the model."""
    cfg = run_cfg(tmp_path)
    out = Path(cfg.out)
    out.mkdir()
    (out / "run.json").write_text("{}")
    (out / "best.safetensors").write_bytes(b"a trained model")
    with pytest.raises(ValueError, match=r"holds a trained model \(best.safetensors.*--overwrite replaces it"):
        check(cfg, resume=False)
    (out / "last.safetensors").write_bytes(b"damaged")
    with pytest.raises(ValueError, match="holds a trained model"):
        check(cfg, resume=False)
    check(replace(cfg, overwrite=True), resume=False)  # asked for


def test_running_the_default_job_twice_keeps_the_first_model(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert train_mod.parse_args([])[0].out == "runs/default"
    for name in ("default", "default-2"):
        (tmp_path / "runs" / name).mkdir(parents=True)
        (tmp_path / "runs" / name / "best.safetensors").write_bytes(b"a trained model")
    assert train_mod.parse_args([])[0].out == "runs/default-3"
    assert train_mod.parse_args(["--resume"])[0].out == "runs/default"  # resume means the folder named
    assert train_mod.parse_args(["--out", "runs/default", "--overwrite"])[0].out == "runs/default"


def test_resume_command_repeats_every_flag_that_matters(tmp_path):
    cfg = train_mod.TrainConfig(task_a="banking77", batch_size=8, class_weights=True, out=str(tmp_path / "r x"))
    command = run_folder.resume_command(asdict(cfg), asdict(train_mod.TrainConfig()))
    assert command == f"python train.py --task-a banking77 --batch-size 8 --class-weights --out '{tmp_path}/r x' --resume"
    assert train_mod.parse_args(shlex.split(command)[2:])[:2] == (cfg, True)


# ----------------------------------------------------------------------------- non-finite guard
def nan_loss_at(monkeypatch, steps: set[int]):
    """Make the loss NaN at the given (1-based) steps."""
    real_loss, calls = train_mod.multitask_loss, {"n": 0}

    def loss(*args, **kw):
        calls["n"] += 1
        total, per_task = real_loss(*args, **kw)
        return (total * float("nan") if calls["n"] in steps else total), per_task

    monkeypatch.setattr(train_mod, "multitask_loss", loss)


def test_a_non_finite_step_is_skipped_and_counted(tmp_path, tokenizer, monkeypatch, capsys):  # noqa: F811
    nan_loss_at(monkeypatch, {3, 4})
    model = tiny_model()
    train_mod.train(run_cfg(tmp_path), model, tokenizer, tasks(), tasks())
    assert "step 3: non-finite loss or gradient norm, update skipped (1 in a row, 1 in all)" in capsys.readouterr().err
    lines = [json.loads(x) for x in open(tmp_path / "run" / "metrics.jsonl")]
    assert [x["skipped"] for x in lines] == [2, 2, 2]
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_max_bad_steps_in_a_row_stop_the_run_naming_step_lr_and_checkpoint(tmp_path, tokenizer, monkeypatch):  # noqa: F811
    nan_loss_at(monkeypatch, set(range(6, 20)))
    with pytest.raises(run_folder.Diverged) as e:
        train_mod.train(run_cfg(tmp_path, max_bad_steps=3), tiny_model(), tokenizer, tasks(), tasks())
    message = str(e.value)
    assert message.startswith("stopped at step 8: 3 steps in a row had a non-finite loss or gradient norm")
    assert "learning rates now" in message and f"{tmp_path / 'run' / 'last.safetensors'} (step 4)" in message


def test_non_finite_weights_are_never_saved(tmp_path, tokenizer, monkeypatch):  # noqa: F811
    def poison():
        with torch.no_grad():
            next(iter(model.heads.parameters()))[0, 0] = float("inf")

    model = tiny_model()
    step_hook(monkeypatch, 6, poison)
    with pytest.raises(run_folder.Diverged, match="weights became non-finite by step 8; not saved"):
        train_mod.train(run_cfg(tmp_path), model, tokenizer, tasks(), tasks())
    for name in ("best", "last"):
        saved = load_file(tmp_path / "run" / f"{name}.safetensors")
        assert all(torch.isfinite(t).all() for t in saved.values())
    assert read_progress(tmp_path / "run" / "last.safetensors")["step"] == 4


def test_a_huge_learning_rate_ends_cleanly(tmp_path, tokenizer):  # noqa: F811
    """--lr 1e4: either the run finishes with finite weights or it stops with Diverged; never a NaN checkpoint."""
    try:
        train_mod.train(run_cfg(tmp_path, lr=1e4, head_lr=1e4), tiny_model(), tokenizer, tasks(), tasks())
    except run_folder.Diverged:
        pass
    for name in ("best", "last"):
        path = tmp_path / "run" / f"{name}.safetensors"
        if path.exists():
            assert all(torch.isfinite(t).all() for t in load_file(path).values())


# ----------------------------------------------------------------------------- the real command, end to end
def wait_for(proc, text, timeout=120):
    deadline, seen = time.time() + timeout, []
    while time.time() < deadline:
        line = proc.stderr.readline()
        seen.append(line)
        if text in line:
            return "".join(seen)
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise AssertionError(f"never saw {text!r}:\n{''.join(seen)[-2000:]}")


def test_sigterm_to_train_py_saves_prints_the_resume_command_and_exits_143(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "train.py", "--batch-size", "2", "--max-steps", "400", "--log-every", "1", "--out", str(out)]
    proc = subprocess.Popen(cmd, cwd=ROOT_DIR, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    wait_for(proc, "step 2/400")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    step = read_progress(out / "last.safetensors")["step"]
    assert step >= 2 and f"SIGTERM at step {step}; saved {out / 'last.safetensors'}" in err
    assert f"python train.py --batch-size 2 --max-steps 400 --log-every 1 --out {out} --resume" in err

    # the printed command resumes; a second signal then exits at once, before the step ends
    proc = subprocess.Popen(cmd + ["--resume"], cwd=ROOT_DIR, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    wait_for(proc, f"step {step + 1}/400")
    proc.send_signal(signal.SIGTERM)
    wait_for(proc, "SIGTERM: finishing this step")
    proc.send_signal(signal.SIGTERM)  # while that step (or its save) is still running
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143 and "second SIGTERM: exiting now, without saving" in err
    assert read_progress(out / "last.safetensors")["step"] == step  # the interrupted save never happened


# ----------------------------------------------------------------------------- one run per folder, atomic writes
def test_a_second_train_py_on_the_same_out_is_refused_naming_the_first(tmp_path, monkeypatch, capsys):
    """A requeued job while the first is still in its grace period: refused before it reads or writes."""
    def loads(cfg):
        raise AssertionError("the second process went on to load the data")

    monkeypatch.setattr(train_mod.data, "load_tasks", loads)
    out = tmp_path / "run"
    with run_folder.locked(out):  # the first process
        with pytest.raises(SystemExit) as e:
            train_mod.main(["--out", str(out)])
    assert f"is in use by another train.py (PID {os.getpid()})" in str(e.value.code)
    assert sorted(p.name for p in out.iterdir()) == [".lock"]  # nothing of the first run's was touched
    with run_folder.locked(out):  # released when the first one ends
        pass


def test_two_writers_of_one_file_never_share_a_temporary_file(tmp_path):
    names = []

    def inner(p):
        names.append(p)
        p.write_text("inner")

    def outer(p):
        names.append(p)
        p.write_text("outer")
        checkpoint.write_atomic(inner, tmp_path / "f")  # a second writer, while the first one writes

    checkpoint.write_atomic(outer, tmp_path / "f")
    assert names[0] != names[1] and (tmp_path / "f").read_text() == "outer"
    assert not list(tmp_path.glob("*.tmp"))


def test_the_tokenizer_copy_is_atomic(tmp_path, monkeypatch):
    def dies_halfway(src, dst):
        Path(dst).write_bytes(Path(src).read_bytes()[:100])
        raise OSError("simulated: disk full")

    monkeypatch.setattr(run_folder.shutil, "copyfile", dies_halfway)
    source = tmp_path / "tokenizer-source.json"
    source.write_text("x" * 1000)
    out = tmp_path / "run"
    with pytest.raises(OSError, match="disk full"):
        run_folder.start_fresh(out, {"config": {}}, source)
    assert not (out / "tokenizer.json").exists() and not list(out.glob("*.tmp"))


# ----------------------------------------------------------------------------- run.json is input, not trust
def hostile_run(tmp_path, backbone=None, test_rows="test-a.jsonl") -> Path:
    out = tmp_path / "hostile"
    out.mkdir()
    (out / "best.safetensors").write_bytes(b"")
    info = {"config": {"normalize": False}, "backbone": {"num_hidden_layers": 2} | (backbone or {}),
            "tasks": {"a": {"dataset": "x", "label_names": ["p", "q"], "test_rows": test_rows}}}
    (out / "run.json").write_text(json.dumps(info))
    return out


@pytest.mark.parametrize("test_rows", ["../secret.jsonl", "/etc/passwd", "..", "sub/../../x.jsonl"])
def test_run_json_test_rows_may_not_leave_the_run_folder(tmp_path, test_rows):
    from eval import load_run

    with pytest.raises(ValueError, match=r"test_rows .* must name a file inside the run folder"):
        load_run(hostile_run(tmp_path, test_rows=test_rows))


@pytest.mark.parametrize("key, value", [("num_hidden_layers", 10**5), ("hidden_size", -1), ("vocab_size", "big"),
                                        ("layer_norm_eps", 1e-12), ("pad_token_id", 0)])
def test_run_json_sizes_are_bounded_before_anything_is_built(tmp_path, key, value):
    from eval import load_run

    started = time.time()
    with pytest.raises(ValueError, match=rf"backbone {key} is"):
        load_run(hostile_run(tmp_path, backbone={key: value}))
    assert time.time() - started < 5


# ----------------------------------------------------------------------------- fault injection
def test_kill_9_at_random_instants_then_resume_gives_the_uninterrupted_weights():
    """The short form of tests/fault_injection.py (the long form: --kills 200)."""
    import fault_injection

    result = fault_injection.run(kills=2, seed=1)
    assert result["kills"] >= 2 and result["corrupt_or_lost"] == 0  # run() raises on any difference


def test_kill_9_during_the_corpus_command_then_resume_gives_the_uninterrupted_embeddings():
    """The short form of tests/fault_injection.py --corpus."""
    import fault_injection

    result = fault_injection.run(kills=3, seed=1, corpus=True)
    assert result["kills"] >= 3 and result["corrupt_or_lost"] == 0 and result["work"] == "corpus"
