"""A train.py run folder read back for eval.py and predict.py: run.json is input, not trust.

    model, tokenizer, info = load_run("runs/default")

run.json's sizes are bounded before anything is built from them, the numbers no tensor shape checks
must agree with the backbone's own config.json, test_rows must name a file inside the folder, and
best.safetensors must be float32 and fit the model run.json describes. Each problem is one
ValueError naming the file and what is wrong.
"""
from __future__ import annotations

import re
from pathlib import Path

from reliability.checkpoint import read_json_object

# run.json is input, not trust: the sizes that decide how much gets built, bounded before anything is.
BACKBONE_LIMITS = {"vocab_size": 1_000_000, "hidden_size": 8192, "num_hidden_layers": 96, "num_attention_heads": 128,
                   "intermediate_size": 65536, "max_position_embeddings": 65536, "relative_attention_num_buckets": 1024}


# Numbers no tensor shape checks: a run.json that changed them would load and silently compute another model.
FIXED_BY_THE_CHECKPOINT = ("layer_norm_eps", "pad_token_id", "relative_attention_max_distance")


def check_run_info(info: dict) -> None:
    """Raise ValueError unless run.json's sizes are sane, the numbers no shape checks agree with the
    backbone's own config.json, and its test_rows stay inside the run folder."""
    from mpnet import MPNetConfig

    if not isinstance(info, dict) or not all(isinstance(info.get(k), dict) for k in ("config", "backbone", "tasks")):
        raise ValueError("expected a JSON object holding the objects config, backbone and tasks")
    for task, spec in info["tasks"].items():
        if isinstance(spec, dict) and "pair_loss" in spec:
            if spec["pair_loss"] not in ("cosent", "in-batch"):
                raise ValueError(f"task {task}'s pair_loss must be 'cosent' or 'in-batch', not {spec['pair_loss']!r}")
            continue
        names = spec.get("label_names") if isinstance(spec, dict) else None
        if not (isinstance(names, list) and len(names) >= 2 and all(isinstance(n, str) for n in names)):
            raise ValueError(f"task {task}'s label_names must be a list of at least 2 strings")
    for key, limit in BACKBONE_LIMITS.items():
        value = info["backbone"].get(key)
        if value is not None and (isinstance(value, bool) or not (isinstance(value, int) and 0 < value <= limit)):
            raise ValueError(f"backbone {key} is {value!r}, expected an integer in 1..{limit:,}")
    reference = MPNetConfig.of_weights()
    for key in FIXED_BY_THE_CHECKPOINT:
        if key in info["backbone"] and info["backbone"][key] != getattr(reference, key):
            raise ValueError(f"backbone {key} is {info['backbone'][key]!r}, but the backbone's config.json says "
                             f"{getattr(reference, key)!r}")
    if not isinstance(info["config"].get("normalize", False), bool):
        raise ValueError(f"config normalize is {info['config']['normalize']!r}, expected true or false")
    base = info.get("base_weights")
    if base is not None and not (isinstance(base, dict) and isinstance(base.get("file"), str)
                                 and re.fullmatch(r"[0-9a-f]{64}", str(base.get("sha256")))):
        raise ValueError(f"base_weights is {base!r}, expected {{\"file\": a path, \"sha256\": 64 hex digits}}")
    for task, spec in info["tasks"].items():
        rows = spec.get("test_rows")
        if rows is not None and (not isinstance(rows, str) or Path(rows).name != rows or rows in ("", ".", "..")):
            raise ValueError(f"task {task}'s test_rows {rows!r} must name a file inside the run folder")


def check_test_rows_stay_inside(folder: Path, info: dict) -> None:
    """A task's saved test rows are a plain file of the run folder's own: a symbolic link there, which
    could point anywhere (and have its rows printed), is refused."""
    for task, spec in info["tasks"].items():
        if "test_rows" in spec and (folder / spec["test_rows"]).is_symlink():
            raise ValueError(f"task {task}'s test_rows {folder / spec['test_rows']} is a symbolic link; the "
                             f"run's test rows must be the file train.py wrote there")


def load_run(folder: str | Path):
    """A trained MultiTaskModel, its tokenizer and run.json from a train.py output folder."""
    import torch
    from safetensors.torch import load_file

    from heads import MultiTaskModel
    from mpnet import MPNet, MPNetConfig, Tokenizer

    folder = Path(folder)
    info_path, weights_path = folder / "run.json", folder / "best.safetensors"
    for p in (info_path, weights_path):
        if not p.is_file():
            raise FileNotFoundError(f"{p} not found: is {folder} a train.py output folder?")
    try:
        info = read_json_object(info_path)
        check_run_info(info)
        check_test_rows_stay_inside(folder, info)
        with torch.device("meta"):
            model = MultiTaskModel(MPNet(MPNetConfig(**info["backbone"])),
                                   {t: len(v["label_names"]) for t, v in info["tasks"].items() if "label_names" in v},
                                   normalize=info["config"]["normalize"],
                                   pairs={t: v["pair_loss"] for t, v in info["tasks"].items() if "pair_loss" in v})
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{info_path} is not a train.py run.json ({type(e).__name__}: {e})") from None
    try:
        weights = load_file(weights_path)
    except Exception as e:  # safetensors raises its own error type for damaged files
        raise ValueError(f"{weights_path} is not a readable safetensors file ({e})") from None
    wrong_dtype = sorted(k for k, v in weights.items() if v.dtype != torch.float32)
    if wrong_dtype:
        raise ValueError(f"{weights_path}: {wrong_dtype[0]} is {weights[wrong_dtype[0]].dtype}, expected float32 "
                         f"(train.py saves float32 weights); was the file converted or written by another tool?")
    not_finite = sorted(k for k, v in weights.items() if not torch.isfinite(v).all())
    if not_finite:
        raise ValueError(f"{weights_path}: {not_finite[0]} holds NaN or infinite values; train.py never "
                         f"saves those, so the file was damaged or written by another tool")
    from reliability.base_weights import complete

    weights = complete(weights, info.get("base_weights"), model.backbone.cfg, str(weights_path))
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in weights.items()}
    if found != expected:
        name = sorted(set(expected) ^ set(found)) or sorted(k for k in expected if expected[k] != found[k])
        raise ValueError(f"{weights_path} does not fit the model that {info_path} describes (first difference: "
                         f"{name[0]}: {found.get(name[0], 'absent')} in the weights, {expected.get(name[0], 'absent')} "
                         f"expected); were the files copied from different runs?")
    model.load_state_dict(weights, assign=True)  # (the frozen rest, if any, memory-mapped from its file)
    return model.eval(), Tokenizer(folder / "tokenizer.json"), info
