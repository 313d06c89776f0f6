"""The peers of `bench.py --compare`: sentence-transformers on its torch, ONNX Runtime and OpenVINO backends.

Bench-only (requirements-bench.txt); nothing at run time imports this file. Each peer is built the
way sentence-transformers' own efficiency guide does it, from the local weights folder (which
weights/fetch.py fills with sentence-transformers' module files too), so no Hub access is needed:

    st-cpu-fp32        SentenceTransformer(folder)                              (the baseline: x ST = 1.00)
    onnx-cpu-fp32      SentenceTransformer(folder, backend="onnx")              exported by optimum
    onnx-cpu-O3        export_optimized_onnx_model(model, "O3", ...)            fused attention/GELU/LayerNorm
    onnx-cpu-int8      export_dynamic_quantized_onnx_model(model, CONFIG, ...)  CONFIG from this CPU's flags:
                       avx512_vnni where it has VNNI, else avx2 (arm64 on ARM); the VNNI config on an AVX2-only
                       CPU computes garbage (STS-B 6.66 in issue #9), so it must match the hardware
    openvino-cpu-fp32  SentenceTransformer(folder, backend="openvino"): OpenVINO's defaults, which on a CPU with
                       AVX-512 BF16 or AMX compute in bf16 (its INFERENCE_PRECISION_HINT), so there it is a
                       bf16 engine under an fp32 name
    openvino-cpu-f32   the same with INFERENCE_PRECISION_HINT f32: OpenVINO really in fp32
    openvino-cpu-int8  static int8 (NNCF via optimum-intel's OVQuantizer, its default OVQuantizationConfig),
                       calibrated on STS-B *train* sentences (NNCF takes its default subset of them) padded to
                       384 tokens, as sentence-transformers' export_static_quantized_openvino_model does (it
                       would fetch GLUE SST-2 from the Hub instead)

The exported models are written once into runs/peers/ (git-ignored) and reused.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from speed.hardware import cpu_flags

ROOT = Path(__file__).resolve().parent.parent
EXPORTS = ROOT / "runs" / "peers"
PEERS = ("onnx-cpu-fp32", "onnx-cpu-O3", "onnx-cpu-int8", "openvino-cpu-fp32", "openvino-cpu-f32", "openvino-cpu-int8")
FILE_NAMES = {"onnx-cpu-fp32": "onnx/model.onnx", "onnx-cpu-O3": "onnx/model_O3.onnx",
              "openvino-cpu-fp32": "openvino/openvino_model.xml", "openvino-cpu-f32": "openvino/openvino_model.xml",
              "openvino-cpu-int8": "openvino/openvino_model_qint8_quantized.xml"}


def onnx_int8_config() -> str:
    """optimum's dynamic-quantisation config that matches this CPU."""
    import platform

    if platform.machine().lower() in ("arm64", "aarch64"):
        return "arm64"
    return "avx512_vnni" if "avx512_vnni" in cpu_flags() else "avx2"


def file_name(name: str) -> str:
    """The peer's model file in the export folder. sentence-transformers names its int8 export after the
    config's weight type: model_qint8_avx512_vnni.onnx, but model_quint8_avx2.onnx (unsigned weights)."""
    if name in FILE_NAMES:
        return FILE_NAMES[name]
    from optimum.onnxruntime import AutoQuantizationConfig

    config = onnx_int8_config()
    weights = getattr(AutoQuantizationConfig, config)(is_static=False).weights_dtype.name.lower()
    return f"onnx/model_{weights}_{config}.onnx"


def available() -> list[str]:
    """The peers whose packages are installed."""
    import importlib.util

    found = []
    if importlib.util.find_spec("optimum") and importlib.util.find_spec("onnxruntime"):
        found += [p for p in PEERS if p.startswith("onnx")]
    if importlib.util.find_spec("optimum.intel") and importlib.util.find_spec("openvino"):
        found += [p for p in PEERS if p.startswith("openvino")]
    return found


def model_folder(weights: Path) -> Path:
    """runs/peers/all-mpnet-base-v2: a copy of the weights folder, plus the exports.

    A copy, not links: sentence-transformers' save_pretrained() rewrites config.json, modules.json
    and the tokenizer files in the folder it saves to, and through a link it would rewrite the
    weights folder's own files."""
    folder = EXPORTS / weights.name
    for f in weights.rglob("*"):
        target = folder / f.relative_to(weights)
        if f.is_file() and not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, target.with_name(target.name + ".partial"))
            os.replace(target.with_name(target.name + ".partial"), target)
    return folder


def prepare(names: list[str], weights: Path, calibration: list[str]) -> Path:
    """Export every peer in `names` that runs/peers/ does not hold yet; returns the model folder."""
    from sentence_transformers import SentenceTransformer

    folder = model_folder(weights)
    for backend in ("onnx", "openvino"):
        if any(n.startswith(backend) for n in names) and not (folder / FILE_NAMES[f"{backend}-cpu-fp32"]).is_file():
            print(f"exporting {backend} model into {folder} ...", flush=True)
            SentenceTransformer(str(folder), backend=backend, device="cpu").save_pretrained(str(folder))
    if "onnx-cpu-O3" in names and not (folder / file_name("onnx-cpu-O3")).is_file():
        from sentence_transformers import export_optimized_onnx_model

        export_optimized_onnx_model(SentenceTransformer(str(folder), backend="onnx"), "O3", str(folder))
    if "onnx-cpu-int8" in names and not (folder / file_name("onnx-cpu-int8")).is_file():
        from sentence_transformers import export_dynamic_quantized_onnx_model

        export_dynamic_quantized_onnx_model(SentenceTransformer(str(folder), backend="onnx"), onnx_int8_config(),
                                            str(folder))
    if "openvino-cpu-int8" in names and not (folder / file_name("openvino-cpu-int8")).is_file():
        openvino_static_int8(folder, calibration)
    return folder


def openvino_static_int8(folder: Path, calibration: list[str]) -> None:
    """sentence-transformers' export_static_quantized_openvino_model, with a local calibration set."""
    from datasets import Dataset
    from optimum.intel import OVConfig, OVQuantizationConfig, OVQuantizer
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(folder), backend="openvino")
    config = OVQuantizationConfig()
    texts = Dataset.from_dict({"sentence": calibration[:config.num_samples]})  # None: all; NNCF samples 128
    tokenized = texts.map(lambda rows: model.tokenizer(rows["sentence"], padding="max_length", max_length=384,
                                                       truncation=True), batched=True, remove_columns=["sentence"])
    scratch = folder / "openvino-int8.partial"
    shutil.rmtree(scratch, ignore_errors=True)
    OVQuantizer.from_pretrained(model.transformers_model).quantize(tokenized, save_directory=scratch,
                                                                  ov_config=OVConfig(quantization_config=config))
    target = folder / file_name("openvino-cpu-int8")
    for suffix in (".bin", ".xml"):  # .xml last: its presence marks the export complete
        os.replace(scratch / "openvino" / f"openvino_model{suffix}", target.with_suffix(suffix))
    shutil.rmtree(scratch, ignore_errors=True)


def load(name: str, folder: Path):
    """-> encode(list[str], batch_size) -> (N, 768) float32 tensor, for one of PEERS."""
    from sentence_transformers import SentenceTransformer

    backend = name.split("-")[0]
    kwargs = {"file_name": file_name(name)}
    if name == "openvino-cpu-f32":
        kwargs["ov_config"] = {"INFERENCE_PRECISION_HINT": "f32"}
    st = SentenceTransformer(str(folder), backend=backend, device="cpu", model_kwargs=kwargs)
    return lambda s, bs: torch.as_tensor(st.encode(s, batch_size=bs, convert_to_numpy=True)).float()
