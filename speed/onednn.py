"""fp32 linear layers through oneDNN instead of MKL: twice the encoder's fp32 speed on an AMD CPU with AVX-512.

    from speed.onednn import use_onednn
    use_onednn(encoder)       # after SentenceEncoder.from_pretrained; speed.load_encoder does it where it helps

PyTorch runs an fp32 nn.Linear on the CPU as an MKL sgemm. MKL chooses its kernels by the CPU's maker as
well as its flags, and on an AMD EPYC it takes the kernels it has for any x86 processor, whatever the flags
say (MKL_VERBOSE=1 names the path: "Intel(R) Architecture processors"). oneDNN, the other math library inside
PyTorch (it already runs the int8 and bf16 products), goes by the flags alone, and runs its AVX-512 kernels
on such a CPU (ONEDNN_VERBOSE=1: "brg_matmul:avx512_core").

On a 2-core AMD EPYC of family 26 (Zen 5, full-width AVX-512), one (332 x 768) by (768 x 3072) product, the
FFN's, ran at 202 GFLOP/s through F.linear and 444 through oneDNN, and the encoder went from 100 to 195
sentences/s, ahead of ONNX Runtime's and OpenVINO's fp32 in the same run (`python -m tools.bench --compare`,
experiments/encoding_speed.md). On a CPU whose AVX-512 is half width (Zen 4), or with AVX2 only, the two
libraries' kernels do the same work per cycle; that was not measured, so speed.load_encoder swaps only
where the CPU has AVX-512 (onednn_helps below).

What changes: only the order in which each dot product is summed. The weights are the same tensors (not
copied, not repacked), so the state dict, memory and parity are those of the plain model; the embeddings of
the 512 STS-B sentences moved by at most 3e-7 (tests/test_onednn.py holds it to the parity test's 1e-5).

oneDNN's call has no backward, so whenever autograd is recording, or autocast or another dtype is on, a
layer falls back to F.linear: a model that trains keeps training exactly as before.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from speed import hardware
from speed.quant import linears, set_linear


def onednn_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def onednn_helps() -> tuple[bool, str]:
    """Whether speed.load_encoder routes fp32 linear layers through oneDNN here, and why."""
    if not onednn_available():
        return False, "this PyTorch build has no oneDNN linear kernel"
    if "avx512f" not in hardware.cpu_flags():
        return False, "no AVX-512: MKL and oneDNN run the same AVX2 work, so the plain nn.Linear stays (not measured)"
    return True, "AVX-512: oneDNN runs its AVX-512 kernels, where MKL may run generic ones (1.9x on a Zen 5 EPYC)"


class OneDNNLinear(nn.Module):
    """nn.Linear's weight and bias (the same tensors), multiplied by oneDNN when nothing needs a gradient."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.weight, self.bias = linear.weight, linear.bias
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        plain = (torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad)
                 or torch.is_autocast_enabled("cpu") or x.dtype != torch.float32 or self.weight.dtype != torch.float32
                 or x.device.type != "cpu")
        if plain:
            return F.linear(x, self.weight, self.bias)
        shape = x.shape
        y = torch.ops.mkldnn._linear_pointwise(x.reshape(-1, shape[-1]), self.weight, self.bias, "none", [], "")
        return y.view(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def use_onednn(encoder) -> None:
    """Swap the 72 linear layers of encoder.model (a SentenceEncoder's MPNet) for OneDNNLinear, in place."""
    if not onednn_available():
        raise RuntimeError("this PyTorch build has no oneDNN (torch.backends.mkldnn) linear kernel")
    for layer in encoder.model.layers:
        for name, linear in linears(layer).items():
            if isinstance(linear, nn.Linear):  # an int8 layer (quant.py) stays as it is
                set_linear(layer, name, OneDNNLinear(linear))


def use_where_it_helps(encoder, device: str | torch.device | None = None) -> None:
    """use_onednn on a CPU where onednn_helps(); elsewhere leave the encoder as it is."""
    if torch.device(device or "cpu").type == "cpu" and onednn_helps()[0]:
        use_onednn(encoder)
