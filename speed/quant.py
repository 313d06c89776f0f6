"""int8 inference for the encoder's linear layers: the fastest accurate path on a CPU.

    encoder = SentenceEncoder.from_pretrained(dtype="int8")     # or dtype="auto" (see hardware.py)

Over 90% of the encoder's work is its 72 linear layers (q, k, v, o, ffn_in, ffn_out in each of
12 layers). int8 is the narrow number format every current CPU multiplies in hardware: AVX2
multiplies int8 pairs and sums them (vpmaddubsw), AVX-512 VNNI and ARM's dot-product instructions
do it in one step, at twice the rate of bf16 where a CPU has bf16 at all. PyTorch exposes that as torch._int_mm
(int8 x int8 -> exact int32), which oneDNN runs on CPUs with VNNI.

Without VNNI, torch 2.13's _int_mm never calls oneDNN (ONEDNN_VERBOSE prints nothing on a 2-core AVX2-only
EPYC) and runs its own reference loop, 10-20x slower than an fp32 matmul of the same shape. x86 builds of
PyTorch carry a second int8 library, FBGEMM, whose AVX2 kernels run torch.ao's quantized layers. Those pick
one input scale for the whole batch, which is not accurate enough here (experiments/x86_int8.md), but one of
its ops takes the scale from the caller: Int8Linear rounds each token as always and hands FBGEMM the integers
with scale 1, and FBGEMM adds up exactly the int32 sums _int_mm would (fbgemm_sums below). Where neither
library is there, fp32 matmuls give the same sums (exact_int_mm), at about fp32's speed.
hardware.int8_kernel() chooses; whichever runs, the integers, so the embeddings, are the same.

The scheme, symmetric (the FFN output adds a zero point: see Int8Linear):

    weight W (out, in):  one scale per output row      s_w[o] = max|W[o, :]| / 63    (once, at load)
    input  x (T, in):    one scale per token (row)     s_x[t] = max|x[t, :]| / 127   (every call)
    y[t, o] = (sum_i q_x[t, i] * q_w[o, i]) * s_x[t] * s_w[o] + b[o]     (the sum is exact int32)

Why 63 and not 127 for the weights: without VNNI, x86 multiplies int8 with vpmaddubsw, which
adds two products into an int16 *with saturation*; oneDNN shifts the input to unsigned (0..255)
for it. Two products of 255 x 127 overflow int16, and torch._int_mm then returns wrong sums: on
this project's AVX-512 machine with oneDNN capped at AVX2 (ONEDNN_MAX_CPU_ISA=AVX2), a product of
full-range int8 matrices was off by up to 12 million. 7-bit weights (|q| <= 63) keep every pair
below 2 x 255 x 63 = 32,130 < 32,767, and the sums are exact on every kernel path (tested in
tests/test_quant.py under AVX2 and baseline kernels too). It costs one bit of weight precision on
every CPU, and buys the same integers, so the same embeddings, on every CPU. (Issue #9 met a trap
of the same kind from the outside: ONNX Runtime's avx512_vnni int8 config, run on an AVX2-only
CPU, scored 6.66 on STS-B.)

Per token, not one scale for the whole batch (torch.ao's quantize_dynamic, which cost 3.8 STS-B
points when it was tried): one unusual sentence would otherwise set the step size for every
token in the batch.

Per token is not enough on its own. A few input *channels* are huge for every token: the input
of layer 0's FFN has a channel that reaches 25.6 where the others stay below 5.3. A token's scale
is set by that channel, and everything else is rounded to a few levels. SmoothQuant (Xiao et al.
2023) moves that range into the weight, which is quantised per output row and does not mind:

    x W^T = (x / m) (W * m)^T,     m[i] = max|x[:, i]|^alpha / max|W[:, i]|^(1 - alpha)

max|x[:, i]| comes from a calibration pass of the fp32 model over CALIBRATION (sentences written
for this file) when the model is loaded. (SmoothQuant folds 1/m into the LayerNorm before the
layer; in this post-LN model that LayerNorm's output is also the residual stream, so here the
division is one multiply on the input instead.)

Smoothing shrinks the outlier channels but does not remove them: at alpha 0.5 a channel's range
becomes sqrt(max|x| * max|W|), still the largest in its token. So, as in LLM.int8() (Dettmers et al.
2022), the OUTLIER_CHANNELS input channels with the largest smoothed range in the calibration pass
skip int8 altogether: their columns are zero in the int8 weight (and in the input, through inv_smooth),
and one small fp32 matmul adds them back:

    x W^T = x[:, rest] W[:, rest]^T (int8, as above) + x[:, outliers] W[:, outliers]^T (fp32, 8 columns)

Each token's scale is then set by the channels that remain. On a fine-tuned Banking77 + SST-2 run this
cut the labels that differ from fp32 from 28 to 19 of 3,952 (speed/int8_check.py; experiments/predict_int8.md).

Which layers stay in fp32, alpha, and the outlier count are measured decisions: experiments/int8_layers.py
and its table, experiments/int8_layers.md.
"""
from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import torch
import torch.nn as nn

from speed.hardware import int8_kernel
from mpnet import checkpoint_names
from speed.memory import read_tensor, release_freed_memory

LINEAR_NAMES = ("attn.q", "attn.k", "attn.v", "attn.o", "ffn_in", "ffn_out")
ALPHA = 0.5
# q, k and v read the same input, so they share one smoothing vector (and the equality stays true)
SMOOTHING_GROUPS = (("attn.q", "attn.k", "attn.v"), ("attn.o",), ("ffn_in",), ("ffn_out",))
ZERO_POINT = ("ffn_out",)  # its input is GELU's one-sided output: see Int8Linear
WEIGHT_MAX = 63  # 7-bit weights: see "Why 63" above
INPUT_MAX = 127
# fp32 holds every integer up to 2^24 exactly, and one product is at most INPUT_MAX * WEIGHT_MAX = 8,001 in
# size, so a sum of this many products never rounds, in whatever order a GEMM adds them (exact_int_mm)
EXACT_FP32_TERMS = 2**24 // (INPUT_MAX * WEIGHT_MAX)  # 2,096
# (layer index, linear name) kept in fp32: none. With smoothing at alpha 0.5 and zero points for the
# FFN output, all 72 layers in int8 meet the accuracy targets (experiments/int8_layers.md); one fp32
# layer would cost as much time as several int8 ones.
KEEP_FLOAT: tuple[tuple[int, str], ...] = ()
# input channels per layer that skip int8 (see the module docstring): 8 of 768 or 3,072. 16 and 32 gave the
# same labels as fp32 no more often on a fine-tuned run, and 32 lifted the fixture's worst cosine only from
# 0.995 to 0.997 (experiments/int8_layers.md)
OUTLIER_CHANNELS = 8
CALIBRATION = [
    "How do I reset my password if I no longer have access to my email?",
    "The train was forty minutes late, so we missed the start of the concert.",
    "A man is playing a guitar on a street corner.",
    "Two dogs are running through a field of tall grass.",
    "What is the capital of Australia?",
    "I really did not enjoy this film; the plot made no sense at all.",
    "An absolutely wonderful, heart-warming performance by the whole cast!",
    "Quarterly revenue rose 12% to $4.3 billion, beating analysts' estimates.",
    "The patient was given 5 mg of the drug twice a day for two weeks.",
    "Please transfer 250 euros from my savings account to my current account.",
    "Why was my card declined at the supermarket this morning?",
    "She said she would call back later, but she never did.",
    "ok",
    "Thanks!",
    "The committee will meet on Tuesday to discuss the new budget proposal.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "Is it safe to swim in the lake after heavy rain?",
    "The new update broke the app: it crashes every time I open the settings page.",
    "A woman is slicing tomatoes in a kitchen.",
    "Stocks fell sharply after the central bank raised interest rates again.",
    "Der Zug nach Berlin fährt um acht Uhr ab.",
    "Où se trouve la gare la plus proche ?",
    "Can you recommend a good book about the history of mathematics?",
    "The weather is lovely today, let's have lunch in the park.",
    # one long text: long inputs round differently (more tokens share the attention) and must be seen
    "The history of the bicycle begins in the early nineteenth century, when inventors in Germany and "
    "France built two-wheeled machines that riders pushed along with their feet. Pedals attached to the "
    "front wheel came decades later, followed by the high-wheeled penny-farthing, whose large front "
    "wheel made it fast but dangerous. The safety bicycle of the 1880s, with two wheels of equal size "
    "and a chain driving the rear wheel, settled the basic design that is still used today. Pneumatic "
    "tyres, gears and lighter frames made cycling comfortable enough for everyday travel, and within a "
    "few years millions of people, many of them women, gained a new independence. Today bicycles are "
    "used for commuting, sport and delivery work in cities around the world, and electric motors have "
    "made longer and hillier journeys possible for riders of every age.",
]


def fbgemm_pack(weight: torch.Tensor):
    """FBGEMM's packed copy of int8 weights (out, in), with scale 1: its products are then the bare sums.
    torch 2.13 (pinned in requirements.txt) warns that it will remove the quantized-tensor constructors."""
    engine = torch.backends.quantized.engine
    torch.backends.quantized.engine = "fbgemm"  # prepack packs for the engine in force; put back below
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            ones, zeros = torch.ones(len(weight), dtype=torch.double), torch.zeros(len(weight), dtype=torch.long)
            w = torch._make_per_channel_quantized_tensor(weight, ones, zeros, 0)
            return torch.ops.quantized.linear_prepack(w, None)
    finally:
        torch.backends.quantized.engine = engine


def fbgemm_sums(q: torch.Tensor, packed) -> torch.Tensor:
    """q @ W^T for integer-valued float q (|q| <= INPUT_MAX) and packed 7-bit weights W: the exact int32 sums,
    returned as fp32 (rounded above 2^24 just as Int8Linear's next multiply rounds _int_mm's int32).
    FBGEMM quantises q with the scale and zero point given, 1 and 128, so it stores q + 128 (1..255, the
    unsigned bytes its kernels want) exactly, and takes the 128 back off in int32. On AVX2 it multiplies with
    vpmaddubsw, whose int16 pair sums reach at most 2 x 255 x 63 < 32,767 (see "Why 63"): none saturates."""
    return torch.ops.quantized.linear_with_input_q_dq_qweight_dq_output_fp32(q, 1.0, 128, packed)


def exact_int_mm(q: torch.Tensor, w_t: torch.Tensor) -> torch.Tensor:
    """torch._int_mm(q, w_t) for integer inputs within INPUT_MAX and WEIGHT_MAX (int8, or integer-valued
    floats), from fp32 matmuls: the same exact int32 sums on a CPU with neither fast kernel. A row longer
    than EXACT_FP32_TERMS (the FFN output's 3,072) is split into equal chunks, each summed exactly in fp32,
    added in int32."""
    k = q.shape[1]
    chunks = -(-k // EXACT_FP32_TERMS)
    step = -(-k // chunks)
    y = torch.mm(q[:, :step].float(), w_t[:step].float()).to(torch.int32)
    for i in range(step, k, step):
        y += torch.mm(q[:, i:i + step].float(), w_t[i:i + step].float()).to(torch.int32)
    return y


# Int8Linear's kernels (hardware.int8_kernel picks one), as its repr names them
KERNEL_NAMES = {"onednn": "torch._int_mm (oneDNN)", "fbgemm": "FBGEMM", "fp32": "exact fp32 matmuls"}


class Int8Linear(nn.Module):
    """A frozen nn.Linear whose matmul runs in int8 with int32 accumulation (see the module docstring).

    zero_point: quantise each token's [min, max] instead of [-max|x|, max|x|]. For an input that is
    one-sided, like GELU's output (never below -0.17), the symmetric range leaves almost half of the
    int8 codes unused; with the midpoint z subtracted first, the step halves. Since
    x = s q + z, x W^T = s (q W^T) + z * (sum of each row of W): one more term, precomputed.

    outliers: input channels summed in fp32 instead (a LongTensor of indices; see the module docstring)."""

    def __init__(self, linear: nn.Linear, smooth: torch.Tensor | None = None, zero_point: bool = False,
                 kernel: str | None = None, outliers: torch.Tensor | None = None):
        super().__init__()
        w = linear.weight.detach().float()
        if smooth is None:
            smooth = torch.ones(linear.in_features)
        if outliers is None:
            outliers = torch.zeros(0, dtype=torch.long)
        self.register_buffer("outliers", outliers)
        self.register_buffer("outlier_weight", w[:, outliers].t().contiguous())  # (k, out), fp32, not smoothed
        inv_smooth = 1 / smooth
        inv_smooth[outliers] = 0  # the outlier channels reach the int8 sums as zeros...
        w = w * smooth  # x W^T = (x / smooth) (W * smooth)^T; a copy, so in place below is safe
        w[:, outliers] = 0  # ...and their weights neither count nor set a row's scale
        scale = w.abs().amax(dim=1).clamp(min=1e-12) / WEIGHT_MAX
        q = w.div_(scale[:, None]).round_()
        self.register_buffer("weight", q.to(torch.int8))  # (out, in) as in nn.Linear
        self.register_buffer("scale", scale)
        self.register_buffer("inv_smooth", inv_smooth)
        self.register_buffer("bias", linear.bias.detach().float() if linear.bias is not None else torch.zeros_like(scale))
        self.register_buffer("row_sums", q.sum(dim=1) * scale if zero_point else None)  # sum_i W^[o, i]
        self.in_features, self.out_features, self.zero_point = linear.in_features, linear.out_features, zero_point
        self.kernel = kernel or int8_kernel()  # onednn | fbgemm | fp32: the same integers whichever
        if self.kernel not in KERNEL_NAMES:
            raise ValueError(f"kernel must be 'onednn', 'fbgemm' or 'fp32', not {self.kernel!r}")
        self.packed = fbgemm_pack(self.weight) if self.kernel == "fbgemm" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape, dtype = x.shape, x.dtype
        x = x.reshape(-1, shape[-1])
        outliers = x[:, self.outliers].float()  # (T, k): summed in fp32 at the end
        x = x.float() * self.inv_smooth  # a new tensor: the in-place ops below are safe
        # Row-wise amax and amin, not torch.aminmax or vector_norm(x, inf): on a (332, 3072) input on 2 EPYC
        # cores, torch 2.13 took 1.1 and 1.3 ms for those two against 0.06 ms for amax + amin, and they were
        # a fifth of the int8 forward's profile.
        lo, hi = x.amin(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)  # (T, 1) each
        if self.zero_point:
            zero, s = (hi + lo) / 2, ((hi - lo) / (2 * INPUT_MAX)).clamp(min=1e-12)
            x.sub_(zero)
        else:
            s = torch.maximum(hi, -lo).clamp(min=1e-12) / INPUT_MAX  # max |x[t, :]|
        q = x.div_(s).round_()  # integers, |x / s| <= 127, so no clamping is needed
        y = self.int_sums(q)  # exact: |sum| <= 3072 * 127 * 63 < 2^31
        y = torch.addcmul(self.bias, torch.mul(y, self.scale), s)  # y * s_w[o] * s_x[t] + b[o], in fp32
        if self.zero_point:
            y.addcmul_(zero, self.row_sums)  # + z[t] * sum_i W^[o, i]
        y.addmm_(outliers, self.outlier_weight)  # + x[:, outliers] W[:, outliers]^T
        return y.reshape(*shape[:-1], self.out_features).to(dtype)

    def int_sums(self, q: torch.Tensor) -> torch.Tensor:
        """sum_i q[t, i] * W^[o, i] for every token t and output o, on this layer's kernel."""
        if self.kernel == "onednn":
            return torch._int_mm(q.to(torch.int8), self.weight.t())  # int32
        if self.kernel == "fbgemm":
            return fbgemm_sums(q, self.packed)  # fp32: the int32 sums, rounded as torch.mul below would
        return exact_int_mm(q, self.weight.t())  # int32

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, int8: weights per output "
                f"channel, inputs per token{' with a zero point' if self.zero_point else ''}, sums by "
                f"{KERNEL_NAMES[self.kernel]}, {len(self.outliers)} outlier input channels in fp32")


def set_kernel(encoder, kernel: str) -> None:
    """Sum every Int8Linear's integers on another kernel (the same integers: only the speed differs)."""
    if kernel not in KERNEL_NAMES:
        raise ValueError(f"kernel must be 'onednn', 'fbgemm' or 'fp32', not {kernel!r}")
    for m in encoder.model.modules():
        if isinstance(m, Int8Linear):
            m.kernel, m.packed = kernel, fbgemm_pack(m.weight) if kernel == "fbgemm" else None


def linears(layer: nn.Module) -> dict[str, nn.Linear]:
    return {name: getattr(layer.attn, name[5:]) if name.startswith("attn.") else getattr(layer, name)
            for name in LINEAR_NAMES}


def set_linear(layer: nn.Module, name: str, module: nn.Module) -> None:
    """Put `module` where the linear layer `name` (one of LINEAR_NAMES) sits in one encoder layer."""
    if name.startswith("attn."):
        setattr(layer.attn, name[5:], module)
    else:
        setattr(layer, name, module)


@torch.inference_mode()
def input_ranges(encoder, sentences: list[str]) -> dict[tuple[int, str], torch.Tensor]:
    """max |input| per channel of every linear layer over `sentences`, from the model as it is (fp32)."""
    ranges, hooks = {}, []
    for i, layer in enumerate(encoder.model.layers):
        for name, module in linears(layer).items():
            def record(module, inputs, output, key=(i, name)):
                a = inputs[0].detach().float().abs().reshape(-1, inputs[0].shape[-1]).amax(dim=0)
                ranges[key] = torch.maximum(ranges[key], a) if key in ranges else a
            hooks.append(module.register_forward_hook(record))
    try:
        encoder.encode(sentences)
    finally:
        for h in hooks:
            h.remove()
    return ranges


def cached_ranges(encoder, weights_file: Path, calibration: list[str] = CALIBRATION) -> dict:
    """input_ranges of the encoder loaded from weights_file, kept in the user's cache folder beside
    speed.tune's choice: the calibration pass is 1.3-1.6 s of an int8 load on a 2-core AVX2 EPYC (one
    169-token sentence, padded with the rest). The key holds the weights file (path, size, modification
    time), the calibration text, and what else decides fp32's rounding here (hardware.machine_key), so a
    cached pass gives the integers a fresh one would. A file that cannot be read is measured again."""
    from safetensors.torch import load_file, save_file

    from reliability.checkpoint import write_atomic
    from speed.hardware import cache_file, machine_key

    stat = weights_file.stat()
    key = machine_key() | {"weights": str(weights_file.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
                           "calibration": hashlib.sha256("\n".join(calibration).encode()).hexdigest()}
    path = cache_file(key, kind="calibration", suffix=".safetensors")
    expected = {f"{i}.{name}" for i in range(len(encoder.model.layers)) for name in LINEAR_NAMES}
    try:
        saved = load_file(path)
        if set(saved) == expected:
            return {(int(k.split(".")[0]), k.split(".", 1)[1]): v for k, v in saved.items()}
    except Exception:  # absent, damaged or foreign (safetensors raises its own type): measured again
        pass
    ranges = input_ranges(encoder, calibration)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {f"{i}.{name}": v.contiguous() for (i, name), v in ranges.items()}
        write_atomic(lambda p: save_file(tensors, p), path)
    except OSError:
        pass  # a read-only cache folder: measured again next time
    return ranges


def quantize(encoder, alpha: float = ALPHA, keep_float=KEEP_FLOAT, zero_point=ZERO_POINT,
             calibration: list[str] = CALIBRATION, outlier_channels: int = OUTLIER_CHANNELS, make=Int8Linear,
             ranges: dict | None = None, weights_file: Path | None = None):
    """Replace the encoder's linear layers by smoothed Int8Linear, except the (layer, name) pairs in
    keep_float; the names in zero_point get per-token zero points, and each layer's outlier_channels
    largest smoothed input channels stay fp32. alpha = 0 quantises without smoothing. In place; returns
    the encoder. Inference only. make(linear, smooth, zero_point=..., outliers=...) builds each int8
    layer: Int8Linear, or another kernel route to compare (experiments/x86_int8.py). ranges: the
    calibration's input_ranges, if already known (cached_ranges). weights_file: the model.safetensors the
    encoder was loaded from; each fp32 weight is then read from it into memory of its own, a layer at a
    time, rather than through the map (memory.read_tensor: the peak stays that of the int8 model)."""
    unknown = {name for _, name in keep_float} - set(LINEAR_NAMES)
    if unknown:
        raise ValueError(f"keep_float names {sorted(unknown)} are not linear layers; choose from {LINEAR_NAMES}")
    ranges = input_ranges(encoder, calibration) if ranges is None else ranges
    file_names = {ours: theirs for theirs, ours in checkpoint_names(encoder.model.cfg).items()}
    for i, layer in enumerate(encoder.model.layers):
        found = linears(layer)
        if weights_file is not None:
            for name, linear in found.items():
                weight = read_tensor(weights_file, file_names[f"layers.{i}.{name}.weight"])
                if weight.shape != linear.weight.shape or not torch.equal(weight[0], linear.weight[0]):
                    raise ValueError(f"{weights_file} is not the file this encoder was loaded from")
                linear.weight = nn.Parameter(weight, requires_grad=False)
        for group in SMOOTHING_GROUPS:
            w_range = torch.stack([found[n].weight.detach().float().abs().amax(dim=0) for n in group]).amax(dim=0)
            smooth = (ranges[(i, group[0])].clamp(min=1e-5) ** alpha / w_range.clamp(min=1e-5) ** (1 - alpha)).clamp(min=1e-5)
            outliers = (ranges[(i, group[0])] / smooth).topk(outlier_channels).indices.sort().values
            for name in group:
                if (i, name) in keep_float:
                    continue
                set_linear(layer, name, make(found[name], smooth, zero_point=name in zero_point, outliers=outliers))
        release_freed_memory()
    return encoder
