"""Loading a model's weights without a second copy of them in memory.

The released model is 3.9B parameters: 7.9 GB in bf16.  Building it in float32 first
and holding the checkpoint beside it needs three times that.  Here instead:

1. the model is built on the meta device (no memory), cast to its final dtype there,
   its linear layers turned int8 when asked (arch.quantize), then allocated once, on
   its final device;
2. the checkpoint is read through a memory map, one tensor at a time: each is
   converted (or quantised) straight into its parameter, then its file pages are
   given back (``madvise(MADV_DONTNEED)``) 64 MB at a time, so the process never holds
   more than the model plus that much of the file.

Formats: the original layout (``torch.save`` zip files; the legacy pickle format
cannot be mapped and is read whole) and safetensors (``model.safetensors``, made by
``python -m arch.convert_checkpoint``), which needs no unpickling at all.  A
safetensors file holds the whole model; under model parallelism each rank copies
its own slice of every tensor.
"""

from __future__ import annotations

import ctypes
import mmap
import os
from contextlib import contextmanager
from typing import Dict, Iterator, Optional, Tuple

import torch
from torch import nn

from . import mpu
from .checkpoint import (
    CheckpointError,
    check_state_dict,
    extract_module_state,
    file_kind,
    resolve_checkpoint_file,
    split_rule,
    torch_load_checkpoint,
)
from .config import GPT2Config
from .model import GPT2Model
from .mpu.layers import strided_rows
from .quantize import SCALE_SUFFIX, quantize_layers_, quantize_rows_into

SAFETENSORS_FILENAME = "model.safetensors"
SAFETENSORS_SUFFIX = ".safetensors"
_MADV_DONTNEED = getattr(mmap, "MADV_DONTNEED", 4)
_COPY_BYTES = 64 << 20  # a tensor is copied (and its pages given back) this many bytes at a time


def is_safetensors(path: str) -> bool:
    """``path`` is a safetensors file, or a folder holding ``model.safetensors``."""
    if os.path.isdir(path):
        return os.path.isfile(os.path.join(path, SAFETENSORS_FILENAME))
    return path.endswith(SAFETENSORS_SUFFIX)


def resolve_weights_file(path: str, mp_rank: int = 0) -> str:
    """The file holding the weights ``path`` (a safetensors file or folder, or any
    checkpoint of the original layout) stands for."""
    if is_safetensors(path):
        file = os.path.join(path, SAFETENSORS_FILENAME) if os.path.isdir(path) else path
        if not os.path.isfile(file):
            raise CheckpointError(f"{path}: no such safetensors file (check --load)")
        return file
    return resolve_checkpoint_file(path, mp_rank)


def model_bytes(model: nn.Module) -> int:
    """Bytes of the model's parameters and buffers (works on the meta device too)."""
    tensors = {id(t): t for t in list(model.parameters()) + list(model.buffers())}
    return sum(t.numel() * t.element_size() for t in tensors.values())


def build_inference_model(
    config: GPT2Config, dtype: torch.dtype, device: str = "cpu", quantize: str = "none"
) -> GPT2Model:
    """The model ``config`` describes, allocated once on ``device`` in ``dtype`` (linear
    layers int8 when ``quantize == "int8"``), values uninitialised: load_model_weights fills them."""
    model = build_meta_model(config, dtype, quantize)
    return model.to_empty(device=device)


def build_meta_model(config: GPT2Config, dtype: torch.dtype, quantize: str = "none") -> GPT2Model:
    """The same model on the meta device: its sizes without any memory (model_bytes)."""
    with torch.device("meta"):
        model = GPT2Model.from_config(config)
    model = model.to(dtype)
    if quantize == "int8":
        quantize_layers_(model, scale_dtype=dtype)
    elif quantize != "none":
        raise ValueError(f"--quantize {quantize}: expected none or int8")
    return model


_libc = None


def _release_pages(tensor: torch.Tensor) -> None:
    """Give back the pages of a memory-mapped file the tensor's bytes lie on (whole pages
    only: a neighbour's page stays); they are read again from the file if ever touched."""
    global _libc
    size = tensor.numel() * tensor.element_size()
    page = mmap.PAGESIZE
    start = (tensor.data_ptr() + page - 1) // page * page
    end = (tensor.data_ptr() + size) // page * page
    if end <= start:
        return
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    _libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), _MADV_DONTNEED)


class TensorSource:
    """A checkpoint's tensors, read one at a time.

    ``shapes`` maps every key to its shape without reading data; ``whole_model`` says the
    tensors are unsplit (safetensors), so model-parallel ranks slice them.
    """

    def __init__(self, file: str, trust: bool = False):
        self.file = file
        self.whole_model = file.endswith(SAFETENSORS_SUFFIX)
        self._mapped = self.whole_model  # safetensors' get_tensor returns a view of its map
        if self.whole_model:
            from safetensors import SafetensorError, safe_open

            try:
                with safe_open(file, framework="pt") as f:
                    self.shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
            except (SafetensorError, OSError, ValueError) as exc:
                raise CheckpointError(f"{file}: not a readable safetensors file ({exc})") from None
            self._state: Optional[Dict[str, torch.Tensor]] = None
        else:
            self._mapped = file_kind(file) == "zip"  # the legacy pickle format cannot be mapped
            self._state = extract_module_state(torch_load_checkpoint(file, trust, mmap=self._mapped), file)
            self.shapes = {k: tuple(v.shape) for k, v in self._state.items()}

    def tensors(self) -> Iterator[Tuple[str, torch.Tensor]]:
        """(key, tensor) in file order; ``release`` gives a tensor's pages back once copied."""
        if self._state is not None:
            for key in list(self._state):
                yield key, self._state.pop(key)
            return
        from safetensors import safe_open

        with safe_open(self.file, framework="pt") as f:  # tensors are views of its map
            for key in self.shapes:
                yield key, f.get_tensor(key)

    def release(self, tensor: torch.Tensor) -> None:
        """Give back the memory of the part of a tensor from ``tensors`` that is copied."""
        if self._mapped:
            _release_pages(tensor)


@contextmanager
def open_tensors(path: str, trust: bool = False, mp_rank: int = 0) -> Iterator[TensorSource]:
    source = TensorSource(resolve_weights_file(path, mp_rank), trust)
    try:
        yield source
    finally:
        source._state = None


def _rank_slice(key: str, tensor: torch.Tensor) -> torch.Tensor:
    """This model-parallel rank's part of a whole-model tensor (the original mpu split)."""
    world = mpu.get_model_parallel_world_size()
    if world == 1:
        return tensor
    dim, stride = split_rule(key)
    rank = mpu.get_model_parallel_rank()
    if dim is None:
        return tensor
    if dim == 0:
        return strided_rows(tensor, rank, world, stride)
    return strided_rows(tensor.t(), rank, world, stride).t()


def _rank_shape(key: str, shape: Tuple[int, ...]) -> Tuple[int, ...]:
    return tuple(_rank_slice(key, torch.empty(shape, device="meta")).shape)


@torch.no_grad()
def load_model_weights(model: nn.Module, path: str, trust: bool = False, mp_rank: int = 0) -> None:
    """Fill every parameter and buffer of ``model`` (as build_inference_model makes it) from
    the checkpoint at ``path``, strictly: a missing, unexpected or mis-shaped key is one
    CheckpointError naming the file, before anything is copied."""
    with open_tensors(path, trust, mp_rank) as source:
        shapes = source.shapes
        if source.whole_model:
            shapes = {k: _rank_shape(k, s) for k, s in shapes.items()}
        check_state_dict(model, {k: torch.empty(s, device="meta") for k, s in shapes.items()}, source.file)
        targets = model.state_dict(keep_vars=True)
        for key, tensor in source.tensors():
            sliced = _rank_slice(key, tensor) if source.whole_model else tensor
            target = targets[key]
            scale = targets[key[: -len("weight")] + SCALE_SUFFIX] if target.dtype == torch.int8 else None
            # pages are given back only of the file's own bytes, not of a rank's sliced copy
            _copy_rows(sliced, target, scale, source.release if sliced is tensor else None)
            del tensor, sliced  # the last references to its mapped pages


def _copy_rows(tensor: torch.Tensor, target: torch.Tensor, scale: Optional[torch.Tensor], release) -> None:
    """Copy (or, with a ``scale``, quantise) ``tensor`` into ``target`` _COPY_BYTES at a time,
    calling ``release`` on each block once copied."""
    if tensor.dim() == 0:
        target.copy_(tensor)
        return
    step = max(1, _COPY_BYTES // max(1, tensor[0].numel() * tensor.element_size()))
    for start in range(0, tensor.size(0), step):
        block = tensor[start : start + step]
        if scale is not None:
            quantize_rows_into(block, target[start : start + step], scale[start : start + step])
        else:
            target[start : start + step].copy_(block)
        if release is not None and block.is_contiguous():
            release(block)
