"""Tokenizer-facing API: build / load a VQ-VAE, images <-> codes."""

from __future__ import annotations

import json
import math
import os
import re
from typing import Any, Mapping

import torch

from .image_io import denormalize
from .vqvae_zc import VQVAE

# Hyper-parameters of the released vqvae_hard_biggerset_011.pt.
RELEASED_CONFIG: dict[str, Any] = dict(
    channel=512, n_res_block=0, n_res_channel=32, embed_dim=256, n_embed=8192, stride=6, simple=True
)
CONSTRUCTOR_ARGS = (
    "in_channel",
    "channel",
    "n_res_block",
    "n_res_channel",
    "embed_dim",
    "n_embed",
    "stride",
    "simple",
    "decay",
    "legacy_inplace_relu",
)
TRACKER = "latest"


def new_model(**overrides: Any) -> VQVAE:
    """A VQ-VAE with the released model's structure (random weights)."""
    return VQVAE(**{**RELEASED_CONFIG, **overrides})


def _unwrap(model: torch.nn.Module) -> VQVAE:
    return getattr(model, "module", model)


def img2code(model: VQVAE, img: torch.Tensor) -> torch.Tensor:
    """Normalised images [b, 3, H, W] -> codes [b, (H/f)*(W/f)] (row-major LongTensor).

    Never touches the codebook, even when the model is in training mode.
    """
    with torch.no_grad():
        _, _, ids = _unwrap(model).encode(img, update_ema=False)
    return ids.reshape(img.shape[0], -1)


def code2img(model: VQVAE, code: torch.Tensor) -> torch.Tensor:
    """Codes [b, h, w], [b, h*w] or [h*w] -> images [b, 3, H, W] in [0, 1] space (not clamped).

    The original took the grid side of [b, h*w] codes from the total element count, so it only
    worked for b = 1; here the side comes from each sample's length.
    """
    code = torch.as_tensor(code).long()
    if code.dim() == 1:
        code = code.unsqueeze(0)
    if code.dim() == 2:
        side = math.isqrt(code.shape[1])
        if side * side != code.shape[1]:
            raise ValueError(f"code2img: {code.shape[1]} codes per image is not a square grid")
        code = code.reshape(code.shape[0], side, side)
    if code.dim() != 3:
        raise ValueError(f"code2img: codes must be [b, h, w] or [b, h*w], got {tuple(code.shape)}")
    model = _unwrap(model)
    with torch.no_grad():
        out = model.decode_code(code.to(model.quantize_t.embed.device))
    return denormalize(out)


# ----------------------------------------------------------------------------- loading


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _resolve(path: str) -> str:
    """A directory written by vqvae.train resolves to the checkpoint its ``latest`` names."""
    if os.path.isdir(path):
        tracker = os.path.join(path, TRACKER)
        if not os.path.isfile(tracker):
            raise ValueError(f"cannot load VQ-VAE from {path}: directory without a '{TRACKER}' file")
        with open(tracker) as f:
            it = f.read().strip()
        if not it.isdigit():
            raise ValueError(f"cannot load VQ-VAE from {path}: '{TRACKER}' holds {it!r}, not an iteration")
        return os.path.join(path, f"vqvae_{int(it)}.pt")
    return path


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict | None, Any]:
    """-> (state dict without ``module.`` prefixes, stored config or None, the whole object).

    Accepts a bare state dict or a dict holding it under 'model', 'state_dict' or 'module'.
    """
    path = _resolve(os.fspath(path))
    if not os.path.exists(path):
        raise ValueError(f"cannot load VQ-VAE from {path}: no such file")
    if path.endswith(".safetensors"):  # python -m arch.convert_checkpoint: no pickle to run
        return _read_safetensors(path)
    with open(path, "rb") as f:
        head = f.read(4)
    if not head.startswith(b"PK\x03\x04") and head[:1] != b"\x80":  # neither torch.save's zip nor a pickle
        kind = "an empty file" if not head else "not a zip/pickle file torch can read"
        kind = f"not a readable torch checkpoint ({kind})"
        raise ValueError(f"cannot load VQ-VAE from {path}: {kind}; pass --img-tokenizer-path a VQ-VAE checkpoint (.pt)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for truncated / foreign files
        raise ValueError(
            f"cannot load VQ-VAE from {path}: not a readable torch checkpoint "
            f"({type(exc).__name__}: {_one_line(exc)[:200]})"
        ) from None
    config = None
    sd = obj
    if isinstance(obj, Mapping):
        for key in ("model", "state_dict", "module"):
            if isinstance(obj.get(key), Mapping):
                sd = obj[key]
                break
        if isinstance(obj.get("config"), Mapping):
            config = dict(obj["config"])
    if (
        not isinstance(sd, Mapping)
        or not sd
        or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in sd.items())
    ):
        raise ValueError(f"cannot load VQ-VAE from {path}: it does not hold a state dict (got {type(obj).__name__})")
    if all(k.startswith("module.") for k in sd):
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    return dict(sd), config, obj


def _read_safetensors(path: str) -> tuple[dict[str, torch.Tensor], dict | None, Any]:
    """read_checkpoint for a safetensors file; its stored config is the metadata's JSON ``config``."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework="pt") as f:
            sd = {k: f.get_tensor(k) for k in f.keys()}
            metadata = f.metadata() or {}
        config = json.loads(metadata["config"]) if "config" in metadata else None
    except (SafetensorError, OSError, ValueError) as exc:
        raise ValueError(
            f"cannot load VQ-VAE from {path}: not a readable safetensors file ({_one_line(exc)})"
        ) from None
    return sd, config, sd


def infer_config(sd: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Constructor arguments from state-dict key names and shapes (decay cannot be seen: 0.99)."""
    if "quantize_t.embed" not in sd or "enc_b.blocks.0.weight" not in sd:
        raise ValueError("not a VQ-VAE state dict (no quantize_t.embed / enc_b.blocks.0.weight)")
    embed_dim, n_embed = sd["quantize_t.embed"].shape
    convs: dict[int, torch.Size] = {}
    res: dict[int, torch.Size] = {}
    for key, value in sd.items():
        m = re.fullmatch(r"enc_b\.blocks\.(\d+)\.(conv\.1\.)?weight", key)
        if m:
            (res if m.group(2) else convs)[int(m.group(1))] = value.shape
    order = [convs[i] for i in sorted(convs)]
    n_down = sum(1 for s in order if len(s) == 4 and s[-1] == 4)
    if n_down not in (1, 2, 3) or order[-1][-1] != 1:
        raise ValueError(f"unrecognised VQ-VAE encoder layout (kernel shapes {[tuple(s) for s in order]})")
    channel = order[-1][1]
    return dict(
        in_channel=order[0][1],
        channel=channel,
        n_res_block=len(res),
        n_res_channel=next(iter(res.values()))[0] if res else 32,
        embed_dim=embed_dim,
        n_embed=n_embed,
        stride={3: 6, 2: 4, 1: 2}[n_down],
        simple=not (n_down == 3 and order[0][0] != channel),
        decay=0.99,
    )


def check_state_dict(model: torch.nn.Module, sd: Mapping[str, torch.Tensor], where: str) -> None:
    """ValueError (one line) naming the first missing / unexpected / mis-shaped key."""
    own = model.state_dict()
    for key, value in own.items():
        if key not in sd:
            raise ValueError(
                f"cannot load VQ-VAE from {where}: missing key {key} (expected shape "
                f"{list(value.shape)}; {len(own)} keys expected, {len(sd)} found)"
            )
        if tuple(sd[key].shape) != tuple(value.shape):
            raise ValueError(
                f"cannot load VQ-VAE from {where}: {key} has shape {list(sd[key].shape)} "
                f"in the file, the model expects {list(value.shape)}"
            )
    extra = [k for k in sd if k not in own]
    if extra:
        raise ValueError(f"cannot load VQ-VAE from {where}: unexpected key {extra[0]} ({len(extra)} unexpected in all)")


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu", **constructor_kwargs: Any) -> VQVAE:
    """Load a VQ-VAE checkpoint (original or vqvae.train) into a model in eval mode.

    Constructor arguments come from the file's stored 'config', else from the state dict's key
    names and shapes; explicit ``constructor_kwargs`` override either. Any problem raises a
    one-line ValueError naming the file.

    A checkpoint without a stored config was written by the original code, whose ResBlocks
    had the in-place ReLU (the skip adds relu(input)); such a model was trained with that
    function, so it is loaded with ``legacy_inplace_relu=True`` unless the caller says
    otherwise (moot for the released model, which has no ResBlocks).
    """
    where = os.fspath(path)
    sd, config, _ = read_checkpoint(where)
    try:
        kwargs = {k: v for k, v in (config or infer_config(sd)).items() if k in CONSTRUCTOR_ARGS}
    except ValueError as exc:
        raise ValueError(f"cannot load VQ-VAE from {where}: {exc}") from None
    if config is None and kwargs.get("n_res_block", 0) > 0:
        kwargs.setdefault("legacy_inplace_relu", True)
    kwargs.update(constructor_kwargs)
    try:
        model = VQVAE(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"cannot load VQ-VAE from {where}: bad constructor arguments ({exc})") from None
    check_state_dict(model, sd, where)
    model.load_state_dict(sd, strict=True)
    return model.to(device).eval()
