"""Train a VQ-VAE tokenizer (the original repository shipped none).

    python -m vqvae.train --data IMAGES_OR_LMDB --save DIR [--iters N] [--device cuda] ...
    torchrun --nproc_per_node 8 -m vqvae.train --data ... --save DIR --device cuda

Loss = MSE(reconstruction, input) + latent_loss_weight * diff (commitment); the codebook follows
an EMA of its assigned encoder outputs (statistics all-reduced across ranks) and codes whose EMA
count falls below --dead-code-threshold are restarted from random encoder outputs of the batch.
With --decoder-only (after --init) the encoder and codebook are frozen: images keep their codes
and only the decoder learns to draw them, e.g. sharper, without retraining the GPTs over the codes.
Checkpoints: DIR/vqvae_<iter>.pt (+ DIR/latest naming the newest, written last), loadable with
``vqvae.load_model`` and ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import time
from typing import Any, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch.nn import functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from common.fileio import remove_stale_temps, torch_save_atomic, write_text_atomic
from vqvae.api import TRACKER, load_model
from vqvae.data import InfiniteSampler, make_dataset
from vqvae.image_io import denormalize, save_image
from vqvae.vqvae_zc import VQVAE


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Train CogView's VQ-VAE image tokenizer.", formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    g = p.add_argument_group("data")
    g.add_argument("--data", required=True, help="folder of images (recursive: jpg/jpeg/png/webp) or an image LMDB")
    g.add_argument("--img-size", type=int, default=256, help="training crop size (pixels)")
    g.add_argument("--num-workers", type=int, default=2, help="DataLoader worker processes")
    g = p.add_argument_group("model (defaults: the released new_model())")
    g.add_argument("--channel", type=int, default=512, help="convolution width C")
    g.add_argument("--n-res-block", type=int, default=0, help="ResBlocks in encoder and decoder")
    g.add_argument("--n-res-channel", type=int, default=32, help="ResBlock inner width")
    g.add_argument("--embed-dim", type=int, default=256, help="code vector size D")
    g.add_argument("--n-embed", type=int, default=8192, help="codebook size")
    g.add_argument("--stride", type=int, default=6, choices=(6, 4, 2), help="mode: 6 = x8 downsampling, 4 = x4, 2 = x2")
    g.add_argument(
        "--simple",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="mode-6 layout: constant width (simple) or widening C/4, C/2, C",
    )
    g.add_argument("--decay", type=float, default=0.99, help="codebook EMA decay")
    g.add_argument(
        "--legacy-inplace-relu", action="store_true", help="reproduce the original ResBlock skip (adds relu(input))"
    )
    g = p.add_argument_group("optimisation")
    g.add_argument("--batch-size", type=int, default=32, help="per process")
    g.add_argument("--lr", type=float, default=3e-4, help="Adam learning rate")
    g.add_argument("--iters", type=int, default=100000, help="total iterations")
    g.add_argument("--latent-loss-weight", type=float, default=0.25, help="weight of the commitment term diff")
    g.add_argument(
        "--dead-code-threshold",
        type=float,
        default=0.01,
        help="restart codes whose EMA count is below this (0 disables)",
    )
    g.add_argument("--seed", type=int, default=1234, help="seed (rank r uses seed + r)")
    g.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="cpu, cuda or cuda:N (under torchrun 'cuda' means cuda:LOCAL_RANK)",
    )
    g = p.add_argument_group("logging and checkpoints")
    g.add_argument("--save", required=True, help="output directory")
    g.add_argument(
        "--save-interval",
        type=int,
        default=5000,
        help="checkpoint + reconstruction grid every N iterations (and at the end)",
    )
    g.add_argument(
        "--log-interval", type=int, default=100, help="log loss, PSNR, code usage and perplexity every N iterations"
    )
    g.add_argument("--keep-last", type=int, default=0, help="keep only the newest N checkpoints (0: all)")
    g.add_argument("--resume", action="store_true", help="continue from DIR/latest when it exists")
    g = p.add_argument_group("fine-tuning")
    g.add_argument(
        "--init",
        metavar="CKPT",
        help="start from these weights (a VQ-VAE release or training file; its config "
        "replaces the model flags) when there is nothing to resume",
    )
    g.add_argument(
        "--decoder-only",
        action="store_true",
        help="train the decoder alone: encoder and codebook stay frozen, so every image "
        "keeps its codes and models trained on them stay valid (use with --init)",
    )
    return p


def model_config(args: argparse.Namespace) -> dict[str, Any]:
    return dict(
        in_channel=3,
        channel=args.channel,
        n_res_block=args.n_res_block,
        n_res_channel=args.n_res_channel,
        embed_dim=args.embed_dim,
        n_embed=args.n_embed,
        stride=args.stride,
        simple=args.simple,
        decay=args.decay,
        legacy_inplace_relu=args.legacy_inplace_relu,
    )


# ----------------------------------------------------------------------------- distributed / RNG


def setup_distributed(device: str) -> tuple[int, int, torch.device]:
    """(rank, world size, device); initialises torch.distributed when launched by torchrun."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device} requested but CUDA is not available")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        dist.init_process_group(backend)
    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    if device == "cuda" and world > 1:
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    return rank, world, dev


def rng_state() -> dict[str, Any]:
    """Every RNG as tensors / numbers, so the checkpoint loads with weights_only=True."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": {
            "version": py_state[0],
            "state": torch.tensor(py_state[1], dtype=torch.int64),
            "gauss_next": py_state[2],
        },
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(
        ("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["state"].tolist()), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"][: torch.cuda.device_count()])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)


# ----------------------------------------------------------------------------- checkpoints


def checkpoint_path(save_dir: str, iteration: int) -> str:
    return os.path.join(save_dir, f"vqvae_{iteration}.pt")


def read_latest(save_dir: str) -> int | None:
    """Iteration named by DIR/latest, or None when there is no usable tracker."""
    try:
        with open(os.path.join(save_dir, TRACKER)) as f:
            text = f.read().strip()
    except OSError:
        return None
    if not text.isdigit() or not os.path.isfile(checkpoint_path(save_dir, int(text))):
        raise ValueError(f"{save_dir}/{TRACKER} holds {text!r}, which names no checkpoint")
    return int(text)


def save_checkpoint(
    save_dir: str, model: VQVAE, optimizer: torch.optim.Optimizer, iteration: int, args: argparse.Namespace
) -> str:
    """Write DIR/vqvae_<iteration>.pt, then DIR/latest (so latest never names a partial file)."""
    os.makedirs(save_dir, exist_ok=True)
    state = {
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "config": dict(model.config),
        "optimizer": optimizer.state_dict(),
        "iteration": iteration,
        "rng": rng_state(),
        "args": vars(args),
    }
    path = checkpoint_path(save_dir, iteration)
    torch_save_atomic(state, path)
    write_text_atomic(os.path.join(save_dir, TRACKER), str(iteration))
    if args.keep_last > 0:
        done = sorted(
            int(f[6:-3])
            for f in os.listdir(save_dir)
            if f.startswith("vqvae_") and f.endswith(".pt") and f[6:-3].isdigit()
        )
        for old in done[: -args.keep_last]:
            os.remove(checkpoint_path(save_dir, old))
    return path


def load_training_state(save_dir: str, iteration: int, device: torch.device) -> dict[str, Any]:
    path = checkpoint_path(save_dir, iteration)
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:
        raise ValueError(f"cannot resume from {path}: {type(exc).__name__}: {exc}") from None


# ----------------------------------------------------------------------------- metrics


def psnr(decoded: torch.Tensor, target: torch.Tensor) -> float:
    """PSNR (dB) of the de-normalised, clamped images: what a viewer of the output sees."""
    mse = F.mse_loss(denormalize(decoded).clamp(0, 1), denormalize(target).clamp(0, 1)).item()
    return 10 * math.log10(1.0 / max(mse, 1e-12))


def code_usage(counts: torch.Tensor) -> tuple[float, float]:
    """(fraction of codes used, perplexity) of a code histogram."""
    p = counts.float() / counts.sum().clamp(min=1)
    entropy = -(p[p > 0] * p[p > 0].log()).sum().item()
    return (counts > 0).float().mean().item(), math.exp(entropy)


def save_reconstructions(path: str, x: torch.Tensor, dec: torch.Tensor, n: int = 8) -> None:
    """Originals on the first row, reconstructions below."""
    n = min(n, x.shape[0])
    grid = torch.cat([denormalize(x[:n]), denormalize(dec[:n])]).detach()
    save_image(grid, path, nrow=n)


# ----------------------------------------------------------------------------- training


def trainable_parameters(model: VQVAE, decoder_only: bool) -> list[torch.nn.Parameter]:
    """What the optimiser updates: everything, or (``decoder_only``) the decoder alone, with
    the encoder's gradients switched off (the codebook has none: it follows an EMA)."""
    if not decoder_only:
        return list(model.parameters())
    model.enc_b.requires_grad_(False)
    return list(model.dec.parameters())


def train(args: argparse.Namespace) -> dict[str, Any]:
    """Run training; returns {'model', 'iteration', 'history'} (history: one dict per logged step)."""
    rank, world, device = setup_distributed(args.device)
    if rank == 0:  # the one writer of args.save: drop what a run killed mid-save left
        remove_stale_temps(args.save)
    seed_everything(args.seed + rank)
    model = VQVAE(**model_config(args)).to(device)
    iteration = 0
    latest = read_latest(args.save) if args.resume else None
    state = None
    if latest is not None:
        state = load_training_state(args.save, latest, device)
        saved_mode = bool(state.get("args", {}).get("decoder_only", False))
        if saved_mode != args.decoder_only:
            raise ValueError(
                f"{checkpoint_path(args.save, latest)} was trained "
                f"{'with' if saved_mode else 'without'} --decoder-only; resume it the same way"
            )
        if state["config"] != model.config:
            if rank == 0:
                print(f"resuming with the checkpoint's model config {state['config']}")
            model = VQVAE(**state["config"]).to(device)
        model.load_state_dict(state["model"])
    elif args.init:
        model = load_model(args.init, device=device).train()
        if rank == 0:
            print(f"starting from {args.init} (config {model.config})")
    if args.decoder_only and state is None and not args.init:
        raise ValueError(
            f"--decoder-only trains the decoder of an existing VQ-VAE: nothing to resume "
            f"in {args.save}; pass --init CKPT"
        )
    optimizer = torch.optim.Adam(trainable_parameters(model, args.decoder_only), lr=args.lr)
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        for group in optimizer.param_groups:  # --lr may change between runs
            group["lr"] = args.lr
        iteration = int(state["iteration"])
        if rank == 0:
            print(f"resumed from {checkpoint_path(args.save, latest)} at iteration {iteration}")
    net: torch.nn.Module = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )

    dataset = make_dataset(args.data, args.img_size)
    sampler = InfiniteSampler(len(dataset), seed=args.seed, start=iteration * args.batch_size, rank=rank, world=world)
    loader = DataLoader(
        dataset,
        batch_size=args.batch_size,
        sampler=sampler,
        drop_last=True,
        num_workers=args.num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=args.num_workers > 0,
    )
    batches = iter(loader)  # draws its worker seed: restore the RNG only after this
    if state is not None:
        if world == 1:
            set_rng_state(state["rng"])
        else:  # one saved RNG cannot serve every rank: reseed deterministically instead
            seed_everything(args.seed + rank + 7919 * iteration)
        del state
    history: list[dict[str, Any]] = []
    counts = torch.zeros(model.quantize_t.n_embed, device=device)
    restarted = steps = 0
    model.train()
    if args.decoder_only:  # frozen codebook: no EMA updates, no restarts
        model.quantize_t.eval()
    bar = tqdm(total=args.iters, initial=iteration, disable=rank != 0, dynamic_ncols=True, desc="vqvae")
    start = time.time()
    while iteration < args.iters:
        x = next(batches).to(device, non_blocking=True)
        dec, diff, latents, ids = net(x, return_latents=True)
        recon = F.mse_loss(dec, x)
        latent = diff.mean()
        loss = recon + args.latent_loss_weight * latent
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if args.dead_code_threshold > 0 and not args.decoder_only:
            restarted += model.quantize_t.restart_dead_codes(latents, args.dead_code_threshold)
        iteration += 1
        steps += 1
        counts += torch.bincount(ids.reshape(-1), minlength=counts.numel())
        bar.update(1)
        if iteration % args.log_interval == 0 or iteration == args.iters:
            if world > 1:
                dist.all_reduce(counts)
            used, perplexity = code_usage(counts)
            row = {
                "iteration": iteration,
                "loss": loss.item(),
                "recon": recon.item(),
                "latent": latent.item(),
                "psnr": psnr(dec.detach(), x),
                "code_usage": used,
                "perplexity": perplexity,
                "restarted": restarted,
                "s_per_iter": (time.time() - start) / steps,
            }
            history.append(row)
            if rank == 0:
                bar.set_postfix(
                    loss=f"{row['loss']:.4f}", psnr=f"{row['psnr']:.2f}", usage=f"{used:.3f}", ppl=f"{perplexity:.1f}"
                )
                bar.write(" ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))
                with open(os.path.join(args.save, "log.jsonl"), "a") as f:
                    f.write(json.dumps(row) + "\n")
            counts.zero_()
            restarted = steps = 0
            start = time.time()
        if rank == 0 and (iteration % args.save_interval == 0 or iteration == args.iters):
            path = save_checkpoint(args.save, model, optimizer, iteration, args)
            save_reconstructions(os.path.join(args.save, f"recon_{iteration}.png"), x, dec)
            bar.write(f"saved {path}")
    bar.close()
    if world > 1:
        dist.barrier()
    return {"model": model, "iteration": iteration, "history": history}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    if args.batch_size < 1 or args.iters < 0 or args.save_interval < 1 or args.log_interval < 1:
        raise SystemExit("--batch-size, --save-interval and --log-interval must be >= 1, --iters >= 0")
    os.makedirs(args.save, exist_ok=True)
    try:
        return train(args)
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
