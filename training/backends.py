"""Three back ends behind one interface: one process, torch DDP, DeepSpeed.

The loop only calls ``model(...)``, ``backward``, ``step`` (False = step skipped)
and reads ``optimizer.param_groups`` (the lr scheduler writes them).  DeepSpeed
is imported here, lazily, and only for ``--deepspeed``.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import json
import os
import sys
from typing import Optional, Tuple

import torch
from torch import nn

from arch import gpt2_get_params_for_weight_decay_optimization, mpu
from common.dtypes import DTYPES

from .distributed import clip_grad_norm, is_model_parallel_split


class TorchBackend:
    """fp32 master weights, torch AdamW, autocast for bf16/fp16, GradScaler for fp16 (GPU).

    With several data-parallel ranks the model is wrapped in DistributedDataParallel
    over the data-parallel group; checkpoints always hold the bare module.
    """

    name = "torch"

    def __init__(self, module: nn.Module, args, device: torch.device):
        self.module = module.to(device)
        self.device = device
        self.args = args
        self.dtype = DTYPES[args.dtype]
        self.optimizer = torch.optim.AdamW(
            gpt2_get_params_for_weight_decay_optimization(module), lr=args.lr, weight_decay=args.weight_decay
        )
        self.model: nn.Module = self.module
        if mpu.get_data_parallel_world_size() > 1:
            self.model = nn.parallel.DistributedDataParallel(
                self.module,
                device_ids=[device] if device.type == "cuda" else None,
                process_group=mpu.get_data_parallel_group(),
            )
        self.scaler: Optional[torch.amp.GradScaler] = None
        if self.dtype == torch.float16:
            # dynamic scaling as the original's DynamicLossScaler (start 2^32, factor 2, window);
            # --loss-scale sets the start value; --min-scale/--hysteresis have no GradScaler twin
            self.scaler = torch.amp.GradScaler(
                "cuda",
                init_scale=args.loss_scale or 2.0**32,
                growth_factor=2.0,
                backoff_factor=0.5,
                growth_interval=int(args.loss_scale_window),
            )
        self.named_params = list(self.module.named_parameters())
        self.grad_norm = 0.0

    @property
    def compute_dtype(self) -> torch.dtype:
        return torch.float32  # autocast keeps master weights and masks in fp32

    def autocast(self):
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def train(self) -> None:
        self.model.train()

    def eval(self) -> None:
        self.model.eval()

    def backward(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        (self.scaler.scale(loss) if self.scaler else loss).backward()

    def step(self) -> bool:
        """Clip, step; False when fp16 overflowed and the step was skipped."""
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
            scale = self.scaler.get_scale()
            self.grad_norm = clip_grad_norm(self.named_params, self.args.clip_grad)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            return self.scaler.get_scale() >= scale
        self.grad_norm = clip_grad_norm(self.named_params, self.args.clip_grad)
        self.optimizer.step()
        return True

    @property
    def loss_scale(self) -> Optional[float]:
        return self.scaler.get_scale() if self.scaler else None

    def optimizer_state(self) -> dict:
        state = {"optimizer": self.optimizer.state_dict()}
        if self.scaler is not None:
            state["grad_scaler"] = self.scaler.state_dict()
        return state

    def load_optimizer_state(self, ckpt: dict) -> None:
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if self.scaler is not None and "grad_scaler" in ckpt:
            self.scaler.load_state_dict(ckpt["grad_scaler"])


# ------------------------------------------------------------------------- DeepSpeed


def prepare_deepspeed_environment(on_cpu: bool) -> None:
    """What DeepSpeed needs to run on CPU: the CPU accelerator, and no shm comm op.

    DS_ACCELERATOR=cpu stops accelerator auto-detection; the CPU accelerator then
    uses gloo (oneCCL is not installed).  DeepSpeed 0.19.8 has no switch for its
    shared-memory all-reduce op (``deepspeed/comm/torch.py: build_shm_op``), which
    JIT-compiles C++ for 30-80 s at every cold start; we replace that builder with
    one that returns None, DeepSpeed's own "op not available" path (plain gloo).
    Note ``import deepspeed.comm.torch as m`` binds torch itself (the package
    re-exports it), hence importlib.
    """
    if on_cpu:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if os.environ.get("COGVIEW_DS_SHM_COMM", "0") != "1":
        comm_torch = importlib.import_module("deepspeed.comm.torch")
        comm_torch.build_shm_op = lambda: None


def deepspeed_config(args, on_cpu: bool) -> Tuple[dict, dict]:
    """(config for deepspeed.initialize, the json's optimizer params).

    Adapted: our optimizer instance, the precision flags, CPU fallbacks.
    """
    if not args.deepspeed_config:
        raise ValueError("--deepspeed needs --deepspeed_config <json> (e.g. scripts/ds_config.json)")
    with open(args.deepspeed_config) as f:
        config = json.load(f)
    config = copy.deepcopy(config)
    opt_params = config.pop("optimizer", {}).get("params", {})  # we pass a torch AdamW (no C++ build)
    config.pop("scheduler", None)  # CogView keeps AnnealingLR outside DeepSpeed
    config["train_micro_batch_size_per_gpu"] = args.batch_size
    config.setdefault("gradient_accumulation_steps", args.gradient_accumulation_steps or 1)
    config.pop("train_batch_size", None)  # derived by DeepSpeed from the two above
    config.setdefault("gradient_clipping", args.clip_grad)
    fp16 = dict(config.get("fp16", {}))
    if args.dtype == "float16":
        fp16["enabled"] = True
    if args.dtype == "bfloat16":
        fp16["enabled"] = False
        config["bf16"] = {**config.get("bf16", {}), "enabled": True}
    if fp16.get("enabled") and on_cpu:
        print("WARNING: fp16 needs a GPU; DeepSpeed trains in bf16 on CPU instead", flush=True)
        fp16["enabled"] = False
        config["bf16"] = {**config.get("bf16", {}), "enabled": True}
    if not fp16.get("enabled"):
        fp16 = {"enabled": False}  # DeepSpeed validates the other keys even when disabled
    elif isinstance(fp16.get("min_loss_scale"), float) and not float(fp16["min_loss_scale"]).is_integer():
        # DeepSpeed 0.4 took 0.01 (ds_config.json); 0.19 wants an integer
        print(f"WARNING: fp16 min_loss_scale {fp16['min_loss_scale']} -> 1 (DeepSpeed needs an integer)", flush=True)
        fp16["min_loss_scale"] = 1
    config["fp16"] = fp16
    return config, opt_params


class DeepSpeedBackend:
    """deepspeed.initialize with a torch AdamW; ZeRO stages 0-3, bf16, fp16 (GPU)."""

    name = "deepspeed"

    def __init__(self, module: nn.Module, args, device: torch.device):
        on_cpu = device.type == "cpu"
        prepare_deepspeed_environment(on_cpu)
        import deepspeed

        self.config, opt_params = deepspeed_config(args, on_cpu)
        module = module.to(device)
        if mpu.get_model_parallel_world_size() > 1:
            # DeepSpeed's grad-norm counts flagged (split) parameters on every mp rank and the
            # others on mp rank 0 only, as Megatron does
            for name, param in module.named_parameters():
                param.model_parallel = is_model_parallel_split(name)
        optimizer = torch.optim.AdamW(
            gpt2_get_params_for_weight_decay_optimization(module),
            lr=args.lr,
            weight_decay=args.weight_decay,
            betas=tuple(opt_params.get("betas", (0.9, 0.999))),
            eps=opt_params.get("eps", 1e-8),
        )
        try:
            self.engine, self.optimizer, _, _ = deepspeed.initialize(
                model=module,
                optimizer=optimizer,
                config=self.config,
                mpu=mpu if mpu.get_model_parallel_world_size() > 1 else None,
                dist_init_required=False,
            )
        except (ValueError, TypeError, KeyError, AssertionError) as exc:  # DeepSpeed's config validation
            detail = " ".join(str(exc).split()) or type(exc).__name__
            raise ValueError(f"--deepspeed_config {args.deepspeed_config}: DeepSpeed refuses it: {detail}") from None
        self.model = self.engine
        self.module = self.engine.module
        self.device = device
        if self.config.get("bf16", {}).get("enabled"):
            self.dtype = torch.bfloat16
        elif self.config.get("fp16", {}).get("enabled"):
            self.dtype = torch.float16
        else:
            self.dtype = torch.float32

    @property
    def compute_dtype(self) -> torch.dtype:
        return self.dtype  # the engine casts the model, so the float mask must follow

    def autocast(self):
        return contextlib.nullcontext()

    def train(self) -> None:
        self.engine.train()

    def eval(self) -> None:
        self.engine.eval()

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss)

    def step(self) -> bool:
        self.engine.step()
        return bool(self.engine.was_step_applied())

    @property
    def grad_norm(self) -> float:
        norm = self.engine.get_global_grad_norm()
        return float(norm) if norm is not None else float("nan")

    @property
    def loss_scale(self) -> Optional[float]:
        if self.dtype != torch.float16:
            return None
        return float(getattr(self.optimizer, "cur_scale", getattr(self.optimizer, "loss_scale", 0)))


def make_backend(module: nn.Module, args, device: torch.device):
    """DeepSpeedBackend for --deepspeed, else TorchBackend (single process or DDP)."""
    if args.deepspeed:
        return DeepSpeedBackend(module, args, device)
    if args.dtype == "float16" and device.type != "cuda":
        print("WARNING: --fp16 needs a GPU; training in bf16 on CPU instead", file=sys.stderr, flush=True)
        args.dtype = "bfloat16"
    return TorchBackend(module, args, device)
