"""Int8 weight-only quantisation of the transformer's linear layers, for inference.

Decoding one token reads every weight once, so its time is the bytes of the weights
over the memory bandwidth: one byte per weight instead of two nearly halves it, and
halves the memory a model needs.  Each output channel (row) of a weight gets one
scale: ``w ~ q * scale`` with ``q = round(w / scale)`` in [-127, 127] and
``scale = max|row| / 127`` (symmetric, per channel, as torchao's and bitsandbytes'
int8 weight-only schemes).  Activations stay in the model's dtype.

The decoding matmul on CPU is torch's ``_weight_int8pack_mm`` (bf16/fp16 activations,
up to PACKED_KERNEL_ROWS rows), the kernel torchao's int8 weight-only layout lowers to
there: it streams the int8 rows and applies the scales to the outputs.  Elsewhere
(GPU, fp32 activations, long prompts) the weight is widened to the activation dtype
per call: the same numbers, the memory still halved.
The word embeddings (also the output layer) stay in the model's dtype: sampling an
image code reads only their 8192 image rows.
"""

from __future__ import annotations

from typing import Iterator, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

QUANTIZE_CHOICES = ("none", "int8")
SCALE_SUFFIX = "weight_scale"  # state-dict name of a quantised layer's per-row scales
# rows up to which the int8 kernel beats widening the weight for a GEMM (measured on a
# 2560x10240 bf16 layer, 2 cores: 0.053 vs 0.066 s at 32 rows, 0.107 vs 0.073 s at 64)
PACKED_KERNEL_ROWS = 32
_CHUNK_ELEMENTS = 1 << 18  # weights quantised at a time: the float32 working copy stays at 1 MB


def quantize_rows_into(weight: torch.Tensor, q_out: torch.Tensor, scale_out: torch.Tensor) -> None:
    """Quantise ``weight`` (any float dtype/device) row by row into ``q_out`` (int8) and
    ``scale_out``, a few rows at a time (about a megabyte of float32), so that loading a
    quantised model needs no more than its int8 bytes and this small working copy."""
    rows, cols = weight.shape
    step = max(1, _CHUNK_ELEMENTS // max(1, cols))
    for start in range(0, rows, step):
        end = min(rows, start + step)
        w = weight[start:end].to(device=q_out.device, dtype=torch.float32, copy=True)
        scale = w.abs().amax(dim=1).clamp_min_(torch.finfo(torch.float32).tiny).div_(127.0)
        q_out[start:end] = w.div_(scale[:, None]).round_().clamp_(-127, 127)
        scale_out[start:end] = scale


def quantize_rows(weight: torch.Tensor, scale_dtype: torch.dtype = torch.float32) -> Tuple[torch.Tensor, torch.Tensor]:
    """(int8 rows, per-row scales) of a 2-D float weight."""
    q = torch.empty(weight.shape, dtype=torch.int8, device=weight.device)
    scale = torch.empty(weight.size(0), dtype=scale_dtype, device=weight.device)
    quantize_rows_into(weight, q, scale)
    return q, scale


def int8_linear(
    x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, bias: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """``x @ (weight * scale[:, None]).T + bias`` for an int8 ``weight`` with per-row ``scale``."""
    n_rows = x.numel() // max(1, x.size(-1))
    if x.device.type == "cpu" and x.dtype in (torch.bfloat16, torch.float16) and n_rows <= PACKED_KERNEL_ROWS:
        rows = x.reshape(-1, x.size(-1))
        if not rows.is_contiguous():
            rows = rows.contiguous()
        out = torch.ops.aten._weight_int8pack_mm(rows, weight, scale.to(x.dtype))
        out = out.view(*x.shape[:-1], weight.size(0))
    else:
        out = F.linear(x, weight.to(x.dtype)) * scale.to(x.dtype)
    return out + bias if bias is not None else out


def quantizable_layers(model: nn.Module) -> Iterator[Tuple[str, nn.Module]]:
    """(name, module) of every linear layer int8 applies to: the model-parallel column and
    row layers (qkv, attention output, both MLP matrices)."""
    from .mpu.layers import ColumnParallelLinear, RowParallelLinear

    for name, module in model.named_modules():
        if isinstance(module, (ColumnParallelLinear, RowParallelLinear)):
            yield name, module


def quantize_layers_(model: nn.Module, scale_dtype: torch.dtype) -> nn.Module:
    """Turn every quantizable layer's float weight into an int8 buffer + per-row scales.

    Meant for a model still on the meta device (nothing is computed: the loader fills
    the int8 rows and scales from the checkpoint's float weights); on a real model the
    weights are quantised in place.  The state-dict key of the weight is kept.
    """
    for _, module in quantizable_layers(model):
        weight = module.weight
        del module.weight
        if weight.device.type == "meta":
            q = torch.empty(weight.shape, dtype=torch.int8, device="meta")
            scale = torch.empty(weight.size(0), dtype=scale_dtype, device="meta")
        else:
            q, scale = quantize_rows(weight.detach(), scale_dtype)
        module.register_buffer("weight", q)
        module.register_buffer(SCALE_SUFFIX, scale)
    return model


def is_scale_key(key: str) -> bool:
    """A key a float checkpoint never has: it is derived when the weight is quantised."""
    return key.endswith("." + SCALE_SUFFIX)
