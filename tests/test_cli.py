"""Bad flags are refused at parse time, in one line that says what is allowed; the precision choice."""
import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

import eval as eval_mod
from speed import hardware
import train as train_mod
from reliability import run_folder

ROOT_DIR = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("flags, message", [
    (["--freeze", "top-99"], "--freeze top-99: K must be between 0 and 12"),
    (["--freeze", "head:b", "--task-b", "none"], "--freeze head:b: no head named 'b'; heads: a"),
    (["--freeze", "gradual:0"], "--freeze: unknown spec 'gradual:0'; use none, all, backbone"),
    (["--lr-groups", "llrd:abc"], "--lr-groups llrd:abc: llrd needs a number, e.g. llrd:0.9"),
    (["--lr-groups", "llrd:1.5"], "the llrd decay must be in (0, 1]"),
    (["--batch-size", "0"], "argument --batch-size: must be an integer >= 1, got '0'"),
    (["--epochs", "-1"], "argument --epochs: must be an integer >= 1, got '-1'"),
    (["--lr", "nan"], "argument --lr: must be a number > 0, got 'nan'"),
    (["--val-fraction", "1"], "argument --val-fraction: must be a number in [0, 1), got '1'"),
    (["--attention-dropout", "-0.1"], "argument --attention-dropout: must be a number in [0, 1), got '-0.1'"),
    (["--dtype", "fp16"], "argument --dtype: invalid choice: 'fp16'"),
    (["--device", "tpu"], "argument --device: must be cpu, cuda or cuda:N, got 'tpu'"),
    (["--task-b", "imdb"], "argument --task-b: unknown dataset 'imdb'; known: reviews-topic"),
])
def test_train_flags_are_checked_before_anything_loads(capsys, flags, message):
    with pytest.raises(SystemExit) as e:
        train_mod.parse_args(flags)  # parse_args loads nothing: no data, no weights
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and message in err[-1] and err[-1].startswith("usage:") is False


@pytest.mark.parametrize("script, flags, message", [
    ("-m tools.bench", ["--batch-size", "0"], "argument --batch-size: must be an integer >= 1, got '0'"),
    ("-m tools.bench", ["--rounds", "x"], "argument --rounds: must be an integer >= 1, got 'x'"),
    ("eval.py", ["--stsb", "valid"], "argument --stsb: invalid choice: 'valid'"),
    ("eval.py", ["--checkpoint", "nowhere", "--dataset", "sst2"], "--checkpoint nowhere: no run.json there"),
    ("eval.py", ["--checkpoint", "x", "--dataset", "imdb"], "argument --dataset: invalid choice: 'imdb'"),
    ("mpnet.py", ["--dtype", "int4", "hello"], "argument --dtype: invalid choice: 'int4'"),
    ("mpnet.py", [], "the following arguments are required: sentences"),
    ("-m scale.corpus", ["--input", "nowhere.txt", "--output", "e.npy"], "--input nowhere.txt: no such file"),
    ("-m scale.corpus", ["--input", "mpnet.py", "--output", "e.txt"], "--input needs --output FILE.npy"),
    ("-m scale.corpus", ["--input", "mpnet.py", "--output", "e.npy", "--dtype", "int4"], "invalid choice: 'int4'"),
])
def test_other_commands_refuse_bad_flags_in_one_line(script, flags, message):
    done = subprocess.run([sys.executable, *script.split(), *flags], cwd=ROOT_DIR, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2 and message in done.stderr.strip().splitlines()[-1], done.stderr


def test_eval_refuses_weights_from_another_model_config(tmp_path):
    from test_train import config, tasks, tiny_model, tokenizer  # noqa: F401

    model = tiny_model()
    cfg = config(tmp_path, epochs=1)
    from safetensors.torch import save_file

    run = tmp_path / "run"
    run.mkdir()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, run / "best.safetensors")
    info = run_folder.run_info(cfg, model.backbone.cfg, tasks())
    info["backbone"]["intermediate_size"] = 128  # run.json from a different model
    (run / "run.json").write_text(json.dumps(info))
    with pytest.raises(ValueError, match=r"best.safetensors does not fit the model that .*run.json describes "
                                         r"\(first difference: backbone.layers.0.ffn_in.bias: \(64,\) in the weights, "
                                         r"\(128,\) expected\)"):
        eval_mod.load_run(run)


# ----------------------------------------------------------------------------- precision choice
def test_auto_picks_bf16_only_where_it_is_native(cpu):
    cpu("avx2", "avx512f", "avx512_bf16")
    assert hardware.resolve_dtype("auto") == torch.bfloat16
    cpu("avx2", "amx_bf16")
    assert hardware.resolve_dtype("auto") == torch.bfloat16
    cpu("avx2", "fma")
    assert hardware.resolve_dtype("auto") == torch.float32
    cpu("asimd", "bf16", machine="aarch64")
    assert hardware.resolve_dtype("auto") == torch.bfloat16
    cpu("asimd", machine="aarch64")
    assert hardware.resolve_dtype("auto") == torch.float32


def test_encoder_auto_picks_int8_only_where_int8_is_native(cpu, monkeypatch):
    for flags in [("avx2", "avx512f", "avx512_vnni", "avx512_bf16"), ("avx2", "avx_vnni"), ("avx2", "amx_int8")]:
        cpu(*flags)
        assert hardware.encoder_precision("auto")[0] == "int8"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # native: silent
        assert hardware.encoder_precision("int8")[0] == "int8"
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")  # oneDNN capped: PyTorch still calls it, and it runs AVX2 int8
    assert hardware.encoder_precision("auto")[0] == "int8"
    fbgemm = "fbgemm" in torch.backends.quantized.supported_engines  # every x86 build of torch
    for flags in [("avx2", "fma"), ("avx2", "avx512f")]:  # x86 without VNNI: int8 on FBGEMM, silent; auto stays fp32
        cpu(*flags)
        if fbgemm:
            assert hardware.encoder_precision("auto") == (
                "fp32", "no VNNI on this CPU, so the flags table says fp32 (int8 on FBGEMM may be faster "
                        "here: python -m speed.tune measures)")
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                assert hardware.encoder_precision("int8")[0] == "int8"
    cpu("asimd", "asimddp", machine="aarch64")
    assert hardware.encoder_precision("auto") == ("fp32", "no VNNI on this CPU, so int8 would be no faster than fp32")
    with pytest.warns(RuntimeWarning, match=r"int8 has no fast kernel on this CPU \(no VNNI, and no FBGEMM in this "
                                            r"torch\): its exact sums run as fp32 matmuls"):
        assert hardware.encoder_precision("int8")[0] == "int8"
    assert hardware.encoder_precision(None)[0] == hardware.encoder_precision("fp32")[0] == "fp32"
    with pytest.raises(ValueError, match="dtype='int8' is a CPU path"):
        hardware.encoder_precision("int8", "cuda")


def test_emulated_bf16_runs_as_asked_with_one_warning_naming_the_missing_instructions(cpu):
    cpu("avx2", "fma")
    with pytest.warns(RuntimeWarning, match=r"bf16 matrix multiplies are emulated on this CPU \(no avx512_bf16 or "
                                            r"amx_bf16\).*9 vs 48 sentences/s"):
        assert hardware.resolve_dtype("bf16") == torch.bfloat16
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once only
        assert hardware.resolve_dtype(torch.bfloat16) == torch.bfloat16
    cpu("avx512_bf16")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # native: silent
        assert hardware.resolve_dtype("bf16") == torch.bfloat16


def test_capping_onednn_below_avx512_counts_as_no_native_bf16(cpu, monkeypatch):
    cpu("avx512_bf16")
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert hardware.resolve_dtype("auto") == torch.float32
    with pytest.warns(RuntimeWarning, match="oneDNN is capped below it by ONEDNN_MAX_CPU_ISA"):
        hardware.resolve_dtype("bf16")


def test_bad_dtype_is_refused():
    with pytest.raises(ValueError, match="dtype must be 'auto', 'fp32', 'bf16' or a torch dtype, not 'int4'"):
        hardware.resolve_dtype("int4")


def test_describe_names_the_cpu_and_its_flags(cpu):
    cpu("avx2", "avx512_bf16", "sse4_2")
    line = hardware.describe()
    assert "avx2 avx512_bf16" in line and "sse4_2" not in line and "threads" in line
