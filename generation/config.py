"""GenerationConfig: every setting generate_samples.py reads, resolved once.

Three sources, in order of precedence: a flag given on the command line, the
checkpoint's ``<load>/model_config.json`` (arch/model_config.py), the flag's
default.  The command line itself is parsed by the top-level ``arguments``
module; this module only sees the parsed namespace and the set of flags the user
gave, so the library never imports the entry point's parser.
"""

from __future__ import annotations

import argparse
import math
import os
from dataclasses import dataclass
from typing import AbstractSet, Any, Dict, FrozenSet, Optional, Tuple

from arch import CheckpointError, GPT2Config
from arch.model_config import FLAG_KEYS, PATH_KEYS, model_config_path, read_model_config, resolve_path

# tasks classifier-free guidance applies to (each has its own scale and top-k)
GUIDED_TASKS = ("text2image", "image2text")


@dataclass(frozen=True)
class GenerationConfig:
    """What a generation run does, with the checkpoint's recorded values already applied."""

    # ---- what to run, where
    task: str
    """--generation-task: text2image, image2text, super-resolution, low-level super-resolution,
    post-selection, inpainting (or raw, refused by setup)."""
    device: str
    """torch device string (cpu, cuda, cuda:N), as arguments.parse_device resolved it."""
    dtype: str
    """Weights' dtype name: float32, float16 (--fp16) or bfloat16 (--bf16)."""
    quantize: str
    """--quantize: none, or int8 (weight-only, per-channel scales) for the linear layers."""
    threads: int
    """--threads: CPU threads for sampling; 0 = OMP_NUM_THREADS or chosen by timing steps."""
    seed: int
    """Seeds python, numpy, torch and the sampler's generator."""
    rank: int
    """This process's rank (RANK); its model takes input lines data_parallel_rank,
    data_parallel_rank + data_parallel_size, ..."""
    world_size: int
    """Processes launched (WORLD_SIZE): model_parallel_size per model, the models sharing the input file."""

    # ---- checkpoint and tokenizers
    load: Optional[str]
    """Checkpoint folder (--load); generation refuses to run without one."""
    trust_checkpoint: bool
    """Allow full unpickling of the checkpoint files (only for files you trust)."""
    model_config_path: Optional[str]
    """The model_config.json whose values were applied, None when the checkpoint has none."""
    img_tokenizer_path: Optional[str]
    """VQ-VAE checkpoint of the image tokenizer (relative paths in model_config.json are
    resolved against its folder)."""
    txt_tokenizer_path: Optional[str]
    """sentencepiece model of the text tokenizer (None: the project's default)."""
    img_size: int
    """Image side the model works at, in pixels (256 = 32x32 codes, [BASE])."""

    # ---- model shape (the checkpoint's unless a flag says otherwise)
    num_layers: int
    """Transformer layers."""
    hidden_size: int
    """Hidden state width."""
    num_attention_heads: int
    """Attention heads per layer."""
    max_position_embeddings: int
    """Rows of the position table: the longest query the model can run."""
    max_position_embeddings_finetune: int
    """Finetune sample length of the training run (recorded, not used for sampling)."""
    make_vocab_size_divisible_by: int
    """The tokenizer's size is padded to a multiple of this for the embedding."""
    max_memory_length: int
    """Memory window of the original's incremental sampler (--sampler mems); 0 = none."""
    query_window: int
    """Sparse attention: queries per window."""
    key_window_times: int
    """Sparse attention: key window length in query windows."""
    num_pivot: int
    """Sparse attention: text pivots per image position."""
    pb_relax_attention: bool
    """Attention scores computed the PB-relax way (the checkpoint must be trained so)."""
    pb_relax_alpha: float
    """alpha of pb_relax_attention."""

    # ---- sampling
    temperature: float
    """Logits are divided by this before top-k / top-p."""
    top_k: int
    """Sample among the k most likely tokens (0 = all): --top_k, else the checkpoint's value."""
    top_p: float
    """Nucleus sampling threshold (0 = off)."""
    sampler: str
    """kv-cache (default) or mems (the original's algorithm)."""
    batch_size: int
    """Samples per query."""
    max_inference_batch_size: int
    """Samples per sampler call."""
    guidance_scale: Dict[str, float]
    """Classifier-free guidance scale per task in GUIDED_TASKS (0 = off): --guidance-scale when
    given, else the checkpoint's value for the task, else --guidance-scale's default."""
    guidance_top_k: Dict[str, int]
    """Guided tokens are drawn among this many of the conditioned model's most likely (0 = all);
    per task, resolved like guidance_scale."""
    caption_rerank: bool
    """image2text: print the captions ranked by log p(image | caption), best first."""
    post_select: int
    """text2image: draw max(post_select, batch_size) images and keep the batch_size best by
    log p(text | image), best first (0 or 1 = off)."""
    caption_rerank_weight: float
    """Weight W of the added W * log p(caption | image) term of the ranking (0 = none)."""
    roi2_position_restart: bool
    """Positions restart after [ROI2] while sampling (the original's rule); False for a model
    trained with positions counting on through the whole row."""
    sr_text_length: int
    """Super-resolution: the caption is padded with [PAD] to this many tokens (0 = not padded)."""

    # ---- input and output
    input_source: str
    """"interactive" or a file with one query per line."""
    output_path: str
    """Folder the images and scores go to."""
    with_id: bool
    """Each input line starts with id<TAB>; outputs go to <output_path>/<id>/."""
    debug: bool
    """One dated grid per query (with the inputs) instead of numbered files."""

    # ---- where the values came from (for messages)
    explicit: FrozenSet[str] = frozenset()
    """Flags (dests) given on the command line."""
    from_file: FrozenSet[str] = frozenset()
    """Keys whose value was taken from model_config.json."""
    model_parallel_size: int = 1
    """Processes holding one slice each of the model (--model-parallel-size): ranks k*N .. k*N+N-1
    run one model (generation/distributed.py)."""

    @property
    def model_parallel_rank(self) -> int:
        """The slice of the model this process holds: its mp_rank_XX file."""
        return self.rank % self.model_parallel_size

    @property
    def data_parallel_rank(self) -> int:
        """Which model this process belongs to: the share of the input lines it runs."""
        return self.rank // self.model_parallel_size

    @property
    def data_parallel_size(self) -> int:
        """Models sharing the input file."""
        return max(1, self.world_size // self.model_parallel_size)

    @property
    def reports(self) -> bool:
        """The model's first process writes the outputs and prints; its other slices only compute."""
        return self.model_parallel_rank == 0

    def source(self, key: str) -> str:
        """Where ``key``'s value came from: "flag", "file" (model_config.json) or "default"."""
        return "flag" if key in self.explicit else "file" if key in self.from_file else "default"

    def describe(self, key: str) -> str:
        """``key``'s value and where it came from, for an error message."""
        value = getattr(self, key)
        if self.source(key) == "file":
            return f"{key} {value} (from {self.model_config_path})"
        flag = "--" + key.replace("_", "-")
        return f"{flag} {value}" + (" (its default)" if self.source(key) == "default" else "")

    def check_tokenizer_paths(self) -> None:
        """A tokenizer path taken from model_config.json that does not exist is blamed on the
        file (a checkpoint folder copied elsewhere keeps its old relative paths)."""
        for key in PATH_KEYS:
            path = getattr(self, key)
            if self.source(key) == "file" and path and not os.path.exists(path):
                raise CheckpointError(
                    f"{self.model_config_path} names {key} {path}, which does not exist; pass --{key.replace('_', '-')}"
                )

    def check(self) -> None:
        """ValueError, one line naming each value's source, for settings that cannot build a model."""
        for key in ("num_layers", "hidden_size", "num_attention_heads", "max_position_embeddings"):
            if getattr(self, key) < 1:
                raise ValueError(f"{self.describe(key)} must be at least 1")
        if self.post_select < 0:
            raise ValueError(f"{self.describe('post_select')} must be 0 (off) or the number of images to draw")
        if self.threads < 0:
            raise ValueError(f"--threads {self.threads} must be 0 (choose by timing) or a thread count")
        if not math.isfinite(self.temperature):
            raise ValueError(f"--temperature {self.temperature} must be a finite number > 0")
        numbers = {"--caption-rerank-weight": self.caption_rerank_weight}
        numbers.update({f"--guidance-scale ({task})": value for task, value in self.guidance_scale.items()})
        for name, value in numbers.items():
            if not math.isfinite(value):
                raise ValueError(f"{name} {value} must be a finite number")
        if self.hidden_size % self.num_attention_heads:
            divisors = [n for n in range(1, self.hidden_size + 1) if self.hidden_size % n == 0]
            nearest = min(divisors, key=lambda n: (abs(n - self.num_attention_heads), n))
            raise ValueError(
                f"{self.describe('hidden_size')} is not divisible by {self.describe('num_attention_heads')} "
                f"(NHIDDEN / NATT in the scripts); pick a head count that divides it, e.g. {nearest}"
                + ("" if self.source("num_attention_heads") != "flag" else ", or drop the flag")
            )

    def guidance(self, task: str) -> Tuple[float, int]:
        """(scale, top-k) of classifier-free guidance for ``task``; scale 0 when it has none."""
        return self.guidance_scale.get(task, 0.0), self.guidance_top_k.get(task, 0)

    def gpt2_config(self, vocab_size: int) -> GPT2Config:
        """The GPT to build for ``vocab_size`` tokens (no dropout: generation runs in eval mode)."""
        return GPT2Config(
            num_layers=self.num_layers,
            vocab_size=vocab_size,
            hidden_size=self.hidden_size,
            num_attention_heads=self.num_attention_heads,
            embedding_dropout_prob=0.0,
            attention_dropout_prob=0.0,
            output_dropout_prob=0.0,
            max_sequence_length=self.max_position_embeddings,
            max_memory_length=max(self.max_memory_length, 0),
            checkpoint_activations=False,
            query_window=self.query_window,
            key_window_times=self.key_window_times,
            num_pivot=self.num_pivot,
            pb_relax_attention=self.pb_relax_attention,
            pb_relax_alpha=self.pb_relax_alpha,
            parallel_output=False,  # sampling and scoring read whole rows of logits: gathered over the slices
        )

    @classmethod
    def from_args(cls, args: argparse.Namespace, explicit: AbstractSet[str]) -> "GenerationConfig":
        """The settings of ``args`` (arguments.get_args's namespace) with ``<args.load>/model_config.json``
        applied to every flag whose dest is not in ``explicit`` (the flags given on the command
        line, arguments.explicit_dests).

        Raises CheckpointError, one line naming the file (and key), for an unreadable or
        mistyped model_config.json, and ValueError (GenerationConfig.check) for a model shape that cannot be built.
        """
        flags: Dict[str, Any] = vars(args)
        file_values = read_model_config(args.load) if args.load else None
        stored = file_values or {}

        def pick(key: str) -> Any:
            """The flag when given, else the checkpoint's value, else the flag's default."""
            return stored[key] if key in stored and key not in explicit else flags[key]

        recorded = {key: pick(key) for key in FLAG_KEYS}
        from_file = {key for key in stored if key not in explicit}
        for key in PATH_KEYS:
            if key in stored and key not in explicit:
                recorded[key] = resolve_path(args.load, recorded[key])
        recorded["sr_text_length"] = int(recorded["sr_text_length"] or 0)
        config = cls(
            task=args.generation_task,
            device=args.device,
            dtype=args.dtype,
            quantize=args.quantize,
            threads=args.threads,
            seed=args.seed,
            rank=args.rank,
            world_size=args.world_size,
            load=args.load,
            trust_checkpoint=args.trust_checkpoint,
            model_config_path=model_config_path(args.load) if file_values is not None else None,
            **recorded,
            max_memory_length=args.max_memory_length,
            pb_relax_attention=args.pb_relax_attention,
            pb_relax_alpha=args.pb_relax_alpha,
            temperature=args.temperature,
            top_k=int(pick("top_k")),
            top_p=args.top_p,
            sampler=args.sampler,
            batch_size=args.batch_size,
            max_inference_batch_size=args.max_inference_batch_size,
            guidance_scale=_per_task(
                args.guidance_scale, None if "guidance_scale" in explicit else stored.get("guidance_scale"), float
            ),
            guidance_top_k=_per_task(
                args.guidance_top_k, None if "guidance_top_k" in explicit else stored.get("guidance_top_k"), int
            ),
            caption_rerank=bool(pick("caption_rerank")),
            post_select=int(pick("post_select") or 0),
            caption_rerank_weight=float(pick("caption_rerank_weight") or 0.0),
            roi2_position_restart=pick("roi2_position_restart") is not False,
            input_source=args.input_source,
            output_path=args.output_path,
            with_id=args.with_id,
            debug=args.debug,
            explicit=frozenset(explicit),
            from_file=frozenset(from_file),
            model_parallel_size=args.model_parallel_size,
        )
        config.check()
        return config


def _per_task(flag: Any, stored: Optional[Dict[str, Any]], kind: type) -> Dict[str, Any]:
    """{task: value} for GUIDED_TASKS: the checkpoint's value for a task it records, else ``flag``."""
    stored = stored or {}
    return {task: kind(stored.get(task, flag)) for task in GUIDED_TASKS}
