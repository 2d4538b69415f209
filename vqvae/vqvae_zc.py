"""The original CogView VQ-VAE (encoder, EMA quantiser, decoder) with the same parameter names.

Module and buffer names (``enc_b.blocks.N``, ``quantize_t.embed`` ..., ``dec.blocks.N``) match the
original so its checkpoints load strictly. ``stride`` is the original's *mode number* (6, 4 or 2 =
three, two or one stride-2 convolutions), not a factor; the decoder is built with ``stride - 2``.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F

STRIDE_MODES = (6, 4, 2)
DOWNSAMPLE = {6: 8, 4: 4, 2: 2}


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class Quantize(nn.Module):
    """Hard vector quantiser whose codebook follows an exponential moving average (no gradients).

    The EMA statistics are all-reduced across ranks when torch.distributed is initialised (the
    original had that commented out, so each rank drifted its own codebook).
    """

    def __init__(self, dim: int, n_embed: int, decay: float = 0.99, eps: float = 1e-5):
        super().__init__()
        self.dim = dim
        self.n_embed = n_embed
        self.decay = decay
        self.eps = eps
        embed = torch.randn(dim, n_embed)
        nn.init.xavier_uniform_(embed, gain=nn.init.calculate_gain("tanh"))
        self.register_buffer("embed", embed)
        self.register_buffer("cluster_size", torch.zeros(n_embed))
        self.register_buffer("embed_avg", embed.clone())

    def forward(
        self, input: torch.Tensor, update_ema: bool | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """input [..., dim] -> (straight-through quantised [..., dim], diff (scalar), ids [...]).

        The codebook EMA is updated in training mode unless ``update_ema`` says otherwise.
        """
        flatten = input.reshape(-1, self.dim)
        # |e|^2 - 2 z.e in one fused [N, n_embed] buffer: |z|^2 is the same for every code of a
        # row, so the nearest code is unchanged and a large batch needs a third of the memory.
        dist_map = torch.addmm(self.embed.pow(2).sum(0, keepdim=True), flatten.detach(), self.embed, alpha=-2)
        embed_ind = dist_map.argmin(1)  # first index on ties, as the original's max(-dist)
        embed_ind = embed_ind.view(*input.shape[:-1])
        quantize = self.embed_code(embed_ind)
        if self.training if update_ema is None else update_ema:
            self._ema_update(flatten, embed_ind.reshape(-1))
        diff = (quantize.detach() - input).pow(2).mean()
        quantize = input + (quantize - input).detach()
        return quantize, diff, embed_ind

    @torch.no_grad()
    def _ema_update(self, flatten: torch.Tensor, ids: torch.Tensor) -> None:
        onehot = F.one_hot(ids, self.n_embed).type(flatten.dtype)
        onehot_sum = onehot.sum(0)
        embed_sum = flatten.detach().transpose(0, 1) @ onehot
        if _distributed():
            dist.all_reduce(onehot_sum)
            dist.all_reduce(embed_sum)
        self.cluster_size.mul_(self.decay).add_(onehot_sum, alpha=1 - self.decay)
        self.embed_avg.mul_(self.decay).add_(embed_sum, alpha=1 - self.decay)
        n = self.cluster_size.sum()
        cluster_size = (self.cluster_size + self.eps) / (n + self.n_embed * self.eps) * n
        self.embed.copy_(self.embed_avg / cluster_size.unsqueeze(0))

    @torch.no_grad()
    def restart_dead_codes(
        self, flatten: torch.Tensor, threshold: float, generator: torch.Generator | None = None
    ) -> int:
        """Re-initialise codes whose EMA count fell below ``threshold`` from random rows of
        ``flatten`` [..., dim] (encoder outputs). Returns how many codes were restarted.

        Under torch.distributed rank 0's choice is broadcast so all codebooks stay identical.
        """
        dead = self.cluster_size < threshold
        n_dead = int(dead.sum())
        if n_dead:
            flat = flatten.detach().reshape(-1, self.dim)
            rows = torch.randint(0, flat.shape[0], (n_dead,), generator=generator)
            new = flat[rows.to(flat.device)].t()
            self.embed[:, dead] = new.to(self.embed.dtype)
            self.embed_avg[:, dead] = new.to(self.embed.dtype)
            self.cluster_size[dead] = 1.0
        if _distributed():
            for buf in (self.embed, self.embed_avg, self.cluster_size):
                dist.broadcast(buf, 0)
        return n_dead

    def embed_code(self, embed_id: torch.Tensor) -> torch.Tensor:
        return F.embedding(embed_id, self.embed.transpose(0, 1))


class ResBlock(nn.Module):
    """ReLU, 3x3 conv, ReLU, 1x1 conv, plus the input.

    The original's first ReLU was in place, so its skip added relu(input); that is fixed here (the
    raw input is added) unless ``legacy_inplace_relu`` is set.
    """

    def __init__(self, in_channel: int, channel: int, legacy_inplace_relu: bool = False):
        super().__init__()
        self.legacy_inplace_relu = legacy_inplace_relu
        self.conv = nn.Sequential(
            nn.ReLU(),
            nn.Conv2d(in_channel, channel, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(channel, in_channel, 1),
        )

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if self.legacy_inplace_relu:
            input = F.relu(input)
        return self.conv(input) + input


def _res_blocks(channel: int, n_res_block: int, n_res_channel: int, legacy: bool) -> list:
    return [ResBlock(channel, n_res_channel, legacy) for _ in range(n_res_block)]


class Encoder(nn.Module):
    """Image [b, 3, H, W] -> latents [b, H/f, W/f, embed_dim] (channels last, as the quantiser wants)."""

    def __init__(
        self,
        in_channel: int,
        channel: int,
        n_res_block: int,
        n_res_channel: int,
        stride: int,
        embed_dim: int,
        simple: bool,
        legacy_inplace_relu: bool = False,
    ):
        super().__init__()
        if stride == 6 and simple:
            widths = [channel, channel, channel]
        elif stride == 6:
            widths = [channel // 4, channel // 2, channel]
        elif stride in (4, 2):
            widths = [channel // 2, channel] if stride == 4 else [channel // 2]
        else:
            raise ValueError(f"stride mode must be one of {STRIDE_MODES}, got {stride}")
        blocks: list[nn.Module] = []
        prev = in_channel
        for i, width in enumerate(widths):
            if i:
                blocks.append(nn.ReLU(inplace=True))
            blocks.append(nn.Conv2d(prev, width, 4, stride=2, padding=1))
            prev = width
        if stride in (4, 2):  # modes 4 and 2 end their stem with a 3x3 conv
            blocks += [nn.ReLU(inplace=True), nn.Conv2d(prev, channel, 3, padding=1)]
        blocks += _res_blocks(channel, n_res_block, n_res_channel, legacy_inplace_relu)
        blocks += [nn.ReLU(inplace=True), nn.Conv2d(channel, embed_dim, 1)]
        self.blocks = nn.Sequential(*blocks)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return self.blocks(input).permute(0, 2, 3, 1)


class Decoder(nn.Module):
    """Quantised latents [b, embed_dim, h, w] -> image [b, 3, h*f, w*f]; ``stride`` = encoder mode - 2.

    The original's mode-0 decoder (encoder mode 2) stopped at ``channel`` output channels, so it
    could not reconstruct an image; here it ends with a 1x1 conv to ``out_channel``.
    """

    def __init__(
        self,
        in_channel: int,
        out_channel: int,
        channel: int,
        n_res_block: int,
        n_res_channel: int,
        stride: int,
        simple: bool,
        legacy_inplace_relu: bool = False,
    ):
        super().__init__()
        blocks: list[nn.Module] = [nn.ConvTranspose2d(in_channel, channel, 4, stride=2, padding=1)]
        blocks += _res_blocks(channel, n_res_block, n_res_channel, legacy_inplace_relu)
        blocks.append(nn.ReLU(inplace=True))
        if stride == 4 and simple:
            blocks += [
                nn.ConvTranspose2d(channel, channel, 4, stride=2, padding=1),
                nn.ReLU(inplace=True),
                nn.ConvTranspose2d(channel, channel, 4, stride=2, padding=1),
                nn.ReLU(inplace=True),
                nn.Conv2d(channel, out_channel, 1),
            ]
        elif stride == 4:
            blocks += [
                nn.ConvTranspose2d(channel, channel, 4, stride=2, padding=1),
                nn.ReLU(inplace=True),
                nn.ConvTranspose2d(channel, channel // 2, 1),
                nn.ReLU(inplace=True),
                nn.ConvTranspose2d(channel // 2, out_channel, 4, stride=2, padding=1),
            ]
        elif stride == 2:
            blocks.append(nn.ConvTranspose2d(channel, out_channel, 4, stride=2, padding=1))
        elif stride == 0:
            blocks.append(nn.Conv2d(channel, out_channel, 1))
        else:
            raise ValueError(f"decoder stride must be 4, 2 or 0, got {stride}")
        self.blocks = nn.Sequential(*blocks)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return self.blocks(input)


class VQVAE(nn.Module):
    """Single-level VQ-VAE: ``enc_b`` -> ``quantize_t`` (EMA codebook) -> ``dec``.

    Images live in the normalised space of :func:`vqvae.normalize`.
    """

    def __init__(
        self,
        in_channel: int = 3,
        channel: int = 128,
        n_res_block: int = 2,
        n_res_channel: int = 32,
        embed_dim: int = 64,
        n_embed: int = 512,
        stride: int = 4,
        simple: bool = True,
        decay: float = 0.99,
        legacy_inplace_relu: bool = False,
    ):
        super().__init__()
        if stride not in STRIDE_MODES:
            raise ValueError(f"stride mode must be one of {STRIDE_MODES}, got {stride}")
        if channel == 2048:  # as the original: the widest model has no residual blocks
            n_res_block = 0
        self.config = dict(
            in_channel=in_channel,
            channel=channel,
            n_res_block=n_res_block,
            n_res_channel=n_res_channel,
            embed_dim=embed_dim,
            n_embed=n_embed,
            stride=stride,
            simple=bool(simple),
            decay=decay,
            legacy_inplace_relu=bool(legacy_inplace_relu),
        )
        self.downsample = DOWNSAMPLE[stride]
        self.enc_b = Encoder(
            in_channel, channel, n_res_block, n_res_channel, stride, embed_dim, simple, legacy_inplace_relu
        )
        self.quantize_t = Quantize(embed_dim, n_embed, decay=decay)
        self.dec = Decoder(
            embed_dim, in_channel, channel, n_res_block, n_res_channel, stride - 2, simple, legacy_inplace_relu
        )

    def forward(self, input: torch.Tensor, return_latents: bool = False):
        """-> (decoded, diff [1]); with ``return_latents`` also (encoder output [b,h,w,D], ids).

        The latents let a training loop restart dead codes without a second encoder pass (and
        go through DDP's forward).
        """
        latents = self.enc_b(input)
        quant, diff, ids = self.quantize_t(latents)
        dec = self.dec(quant.permute(0, 3, 1, 2))
        if return_latents:
            return dec, diff.unsqueeze(0), latents, ids
        return dec, diff.unsqueeze(0)

    def encode(
        self, input: torch.Tensor, update_ema: bool | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> (quant [b, D, h, w], diff [1], ids [b, h, w]); EMA as in Quantize.forward."""
        quant, diff, ids = self.quantize_t(self.enc_b(input), update_ema)
        return quant.permute(0, 3, 1, 2), diff.unsqueeze(0), ids

    def decode(self, quant: torch.Tensor) -> torch.Tensor:
        return self.dec(quant)

    def decode_code(self, code: torch.Tensor) -> torch.Tensor:
        """ids [b, h, w] -> image [b, 3, h*f, w*f] in normalised space."""
        return self.dec(self.quantize_t.embed_code(code).permute(0, 3, 1, 2))
