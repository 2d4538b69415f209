"""Column-, row- and vocab-parallel layers (Megatron style).

Every rank draws the full ("master") weight with the same RNG state and keeps
its slice, so a model's values do not depend on the model-parallel size.  The
parameter names (``weight``, ``bias``) are those of the original checkpoints.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..quantize import SCALE_SUFFIX, int8_linear
from .initialize import get_model_parallel_rank, get_model_parallel_world_size
from .mappings import (
    copy_to_model_parallel_region,
    gather_from_model_parallel_region,
    reduce_from_model_parallel_region,
    scatter_to_model_parallel_region,
)
from .utils import divide, vocab_range_for_rank

InitMethod = Callable[[torch.Tensor], torch.Tensor]


SKINNY_ROWS = 16
# dtypes whose batched GEMM streams a weight faster than F.linear (fp16's is slower on CPU)
_BATCHED_GEMM_DTYPES = (torch.float32, torch.float64, torch.bfloat16)


def linear(
    x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None, scale: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """``F.linear``, with a faster kernel choice for decoding on CPU.

    An int8 ``weight`` (``--quantize int8``) comes with its per-row ``scale`` and goes to
    arch.quantize.int8_linear.

    With a handful of rows (one token per sample) a linear layer only streams its
    weight from memory; MKL's skinny-GEMM path does that at about a third of the
    machine's read bandwidth, while a batched GEMM over row blocks of the weight
    (one block per thread) reaches it.  Same maths, summed in a different order;
    used only without autograd, so training always takes ``F.linear``.  Whether this
    path is taken never depends on the thread count, and each output is summed the same
    way whatever the number of blocks, so a seed gives the same tokens on any number of
    threads (generation/threads.py changes it between steps).
    """
    if weight.dtype == torch.int8:
        return int8_linear(x, weight, scale, bias)
    rows = x.numel() // max(1, x.size(-1))
    if (
        x.device.type != "cpu"
        or weight.dtype not in _BATCHED_GEMM_DTYPES
        or rows > SKINNY_ROWS
        or torch.is_grad_enabled()
        or not weight.is_contiguous()
    ):
        return F.linear(x, weight, bias)
    parts = torch.get_num_threads()
    if weight.size(0) % parts:
        parts = 1
    out_features, in_features = weight.shape
    blocks = weight.view(parts, out_features // parts, in_features)
    columns = x.reshape(rows, in_features).t().unsqueeze(0).expand(parts, in_features, rows)
    # contiguous: a strided result would send attention (SDPA) to its slow float32 path
    out = torch.bmm(blocks, columns).permute(2, 0, 1).reshape(*x.shape[:-1], out_features).contiguous()
    return out + bias if bias is not None else out


def strided_rows(master: torch.Tensor, rank: int, world: int, stride: int = 1) -> torch.Tensor:
    """Rows of ``master`` owned by ``rank``: cut into stride*world pieces, keep r, r+world, ..."""
    pieces = torch.chunk(master, stride * world, dim=0)
    return torch.cat([pieces[i * world + rank] for i in range(stride)], dim=0)


def _init_master(shape, init_method: InitMethod, dtype: torch.dtype) -> torch.Tensor:
    master = torch.empty(*shape, dtype=torch.float32)
    init_method(master)
    return master.to(dtype)


class ColumnParallelLinear(nn.Module):
    """Y = XA + b with A split along its output dimension.

    ``stride`` > 1 keeps interleaved pieces (the qkv matrix uses stride 3, so
    each rank holds [Q_r; K_r; V_r]).
    """

    def __init__(
        self,
        input_size: int,
        output_size: int,
        bias: bool = True,
        gather_output: bool = True,
        init_method: InitMethod = nn.init.xavier_normal_,
        stride: int = 1,
        dtype: torch.dtype = torch.float32,
    ):
        super().__init__()
        world = get_model_parallel_world_size()
        self.input_size, self.output_size = input_size, output_size
        self.gather_output = gather_output
        self.output_size_per_partition = divide(output_size, world)
        master = _init_master((output_size, input_size), init_method, dtype)
        self.weight = nn.Parameter(strided_rows(master, get_model_parallel_rank(), world, stride))
        if bias:
            self.bias = nn.Parameter(torch.zeros(self.output_size_per_partition, dtype=dtype))
        else:
            self.register_parameter("bias", None)
        self.register_buffer(SCALE_SUFFIX, None)  # per-row scales once quantised to int8

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = linear(copy_to_model_parallel_region(x), self.weight, self.bias, self.weight_scale)
        return gather_from_model_parallel_region(out) if self.gather_output else out


class RowParallelLinear(nn.Module):
    """Y = XA + b with A split along its input dimension; partial sums all-reduced."""

    def __init__(
        self,
        input_size: int,
        output_size: int,
        bias: bool = True,
        input_is_parallel: bool = False,
        init_method: InitMethod = nn.init.xavier_normal_,
        stride: int = 1,
        dtype: torch.dtype = torch.float32,
    ):
        super().__init__()
        world = get_model_parallel_world_size()
        self.input_size, self.output_size = input_size, output_size
        self.input_is_parallel = input_is_parallel
        self.input_size_per_partition = divide(input_size, world)
        master = _init_master((output_size, input_size), init_method, dtype)
        self.weight = nn.Parameter(strided_rows(master.t(), get_model_parallel_rank(), world, stride).t().contiguous())
        if bias:
            self.bias = nn.Parameter(torch.zeros(output_size, dtype=dtype))
        else:
            self.register_parameter("bias", None)
        self.register_buffer(SCALE_SUFFIX, None)  # per-row scales once quantised to int8

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.input_is_parallel:
            x = scatter_to_model_parallel_region(x)
        out = reduce_from_model_parallel_region(linear(x, self.weight, scale=self.weight_scale))
        return out + self.bias if self.bias is not None else out


class VocabParallelEmbedding(nn.Module):
    """Embedding whose rows (vocabulary) are split; out-of-range ids give zeros."""

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        init_method: InitMethod = nn.init.xavier_normal_,
        dtype: torch.dtype = torch.float32,
    ):
        super().__init__()
        world, rank = get_model_parallel_world_size(), get_model_parallel_rank()
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.vocab_start_index, self.vocab_end_index = vocab_range_for_rank(num_embeddings, rank, world)
        master = _init_master((num_embeddings, embedding_dim), init_method, dtype)
        self.weight = nn.Parameter(master[self.vocab_start_index : self.vocab_end_index].clone())

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if get_model_parallel_world_size() == 1:
            return F.embedding(ids, self.weight)
        outside = (ids < self.vocab_start_index) | (ids >= self.vocab_end_index)
        local = (ids - self.vocab_start_index).masked_fill(outside, 0)
        out = F.embedding(local, self.weight).masked_fill(outside.unsqueeze(-1), 0.0)
        return reduce_from_model_parallel_region(out)


def parallel_lm_logits(
    hidden: torch.Tensor,
    word_embeddings_weight: torch.Tensor,
    parallel_output: bool,
    bias: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Logits against the (vocab-split) tied embedding; gathered unless ``parallel_output``."""
    logits = linear(copy_to_model_parallel_region(hidden), word_embeddings_weight, bias)
    return logits if parallel_output else gather_from_model_parallel_region(logits)
