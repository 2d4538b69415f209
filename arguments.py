"""Command-line arguments of every CogView entry point.

Every flag of the original ``arguments.py`` is here with the same spelling, type
and default, in the same groups.  Flags the original parsed but never read are
still accepted (old command lines keep working) and say so in ``--help``.
Additions of this re-implementation are marked "(new)".

The DeepSpeed flags are declared here by hand, with the spelling of
``deepspeed.add_config_arguments``, so that ``--help`` and argument parsing do
not import DeepSpeed (several seconds of start-up).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import List, Optional, Sequence, Set

UNUSED = "(accepted for compatibility with the original; has no effect)"

GENERATION_TASKS = [
    "text2image",
    "image2text",
    "super-resolution",
    "low-level super-resolution",
    "post-selection",
    "inpainting",
    "raw",
]
LR_DECAY_STYLES = ["constant", "linear", "cosine", "exponential"]
DATASET_TYPES = ["TokenizedDataset", "TextCodeDataset", "CompactBinaryDataset"]


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse that reports a bad command line as one line and exits with 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: error: {message} (see --help)\n")
        sys.exit(2)


def add_model_config_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model", "model configuration")
    group.add_argument("--attention-dropout", type=float, default=0.1, help="dropout probability for attention weights")
    group.add_argument("--num-attention-heads", type=int, default=16, help="number of transformer attention heads")
    group.add_argument("--hidden-size", type=int, default=1024, help="transformer hidden size")
    group.add_argument("--num-layers", type=int, default=24, help="number of transformer layers")
    group.add_argument(
        "--layernorm-epsilon",
        type=float,
        default=1e-5,
        help="layer norm epsilon " + UNUSED + " (the model always uses 1e-5)",
    )
    group.add_argument(
        "--hidden-dropout", type=float, default=0.1, help="dropout probability for hidden state transformer"
    )
    group.add_argument(
        "--max-position-embeddings",
        type=int,
        default=512,
        help="maximum number of position embeddings to use; also the length of a training sample",
    )
    group.add_argument(
        "--vocab-size",
        type=int,
        default=30522,
        help="vocab size to use for non-character-level tokenization; "
        "overwritten by the padded tokenizer size at start-up",
    )
    group.add_argument("--deep-init", action="store_true", help=UNUSED)
    group.add_argument(
        "--make-vocab-size-divisible-by",
        type=int,
        default=128,
        help="pad the vocab size to be divisible by this value (times the model-parallel size)",
    )
    group.add_argument("--cpu-optimizer", action="store_true", help="run the optimizer on CPU")
    group.add_argument("--cpu_torch_adam", action="store_true", help="use torch AdamW for the CPU optimizer")
    group.add_argument(
        "--max-position-embeddings-finetune",
        type=int,
        default=-1,
        help="longer sample length for finetuning; the position table is not enlarged, positions restart at [ROI2]",
    )
    group.add_argument(
        "--sr-text-length",
        type=int,
        default=0,
        help="(new) super-resolution models: the caption is padded with [PAD] to this "
        "many tokens in training rows and in queries, so the low-resolution codes "
        "sit at fixed positions (stored in model_config.json); 0 = not padded, "
        "as the original",
    )
    group.add_argument(
        "--magnify-position-init",
        action="store_true",
        help="(new) super-resolution training: start the position rows "
        "of the low-res window and high-res block codes as 2-D sinusoids of their "
        "cell centres, so each high-res code's row is nearest its low-res parent's "
        "(arch/magnify_positions.py); needs --sr-text-length and positions that "
        "count on through the row (no --roi2-positions); a --finetune checkpoint "
        "with another position table size loads all but the table, a resumed "
        "run or a same-size --finetune checkpoint keeps its own table",
    )
    # new: our model switches
    group.add_argument(
        "--pb-relax-attention",
        action="store_true",
        help="(new) compute attention scores as in the paper's PB-relax "
        "(Q/(alpha*sqrt(d)))K^T, max subtracted, times alpha; "
        "off by default like the original code",
    )
    group.add_argument("--pb-relax-alpha", type=float, default=32.0, help="(new) alpha of --pb-relax-attention")


def add_fp16_config_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("fp16", "fp16 configurations")
    group.add_argument("--fp16", action="store_true", help="run model in fp16 mode")
    group.add_argument("--bf16", action="store_true", help="(new) run model in bfloat16 (default is float32)")
    group.add_argument("--fp32-embedding", action="store_true", help=UNUSED)
    group.add_argument("--fp32-layernorm", action="store_true", help=UNUSED)
    group.add_argument("--fp32-tokentypes", action="store_true", help=UNUSED)
    group.add_argument("--fp32-allreduce", action="store_true", help="all-reduce in fp32 " + UNUSED)
    group.add_argument("--hysteresis", type=int, default=2, help="hysteresis for dynamic loss scaling")
    group.add_argument(
        "--loss-scale", type=float, default=None, help="static loss scaling; None (default) means dynamic"
    )
    group.add_argument(
        "--loss-scale-window", type=float, default=1000, help="window over which to raise/lower dynamic scale"
    )
    group.add_argument("--min-scale", type=float, default=1, help="minimum loss scale for dynamic loss scale")


def add_training_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("train", "training configurations")
    group.add_argument(
        "--experiment-name",
        type=str,
        default="CogView",
        help="experiment name; a timestamp is appended unless --load is given",
    )
    group.add_argument(
        "--batch-size",
        type=int,
        default=4,
        help="data loader batch size per process (training); samples per query (generation)",
    )
    group.add_argument(
        "--weight-decay", type=float, default=0.01, help="weight decay coefficient for L2 regularization"
    )
    group.add_argument(
        "--checkpoint-activations", action="store_true", help="checkpoint activations (required by --is-sparse 1)"
    )
    group.add_argument("--checkpoint-num-layers", type=int, default=1, help="layers per activation-checkpoint chunk")
    group.add_argument(
        "--deepspeed-activation-checkpointing", action="store_true", help="use DeepSpeed's activation checkpointing"
    )
    group.add_argument("--clip-grad", type=float, default=1.0, help="gradient clipping")
    group.add_argument(
        "--train-iters", type=int, default=1000000, help="total number of iterations to train over all training runs"
    )
    group.add_argument("--log-interval", type=int, default=50, help="report interval")
    group.add_argument(
        "--exit-interval", type=int, default=None, help="exit after the iteration divisible by this value"
    )
    group.add_argument("--summary-dir", type=str, default="", help="directory to save tensorboard summaries")
    group.add_argument("--seed", type=int, default=1234, help="random seed")
    group.add_argument(
        "--img-tokenizer-path", type=str, default=None, help="the VQ-VAE checkpoint of the image tokenizer"
    )
    group.add_argument(
        "--img-tokenizer-num-tokens",
        type=int,
        default=None,
        help="without --img-tokenizer-path: number of image tokens (training on pre-tokenized data)",
    )
    group.add_argument(
        "--txt-tokenizer-path",
        type=str,
        default=None,
        help="(new) sentencepiece model of the text tokenizer (default: "
        "pretrained/chinese_sentencepiece/cog-pretrain.model when "
        "present, else the project's own model)",
    )
    group.add_argument("--reset-position-ids", action="store_true", help=UNUSED)
    group.add_argument("--reset-attention-mask", action="store_true", help=UNUSED)
    group.add_argument(
        "--lr-decay-iters",
        type=int,
        default=None,
        help="number of iterations to decay LR over; None means --train-iters",
    )
    group.add_argument(
        "--lr-decay-style", type=str, default="linear", choices=LR_DECAY_STYLES, help="learning rate decay function"
    )
    group.add_argument("--lr-decay-ratio", type=float, default=0.1, help="final lr as a fraction of --lr (cosine)")
    group.add_argument("--lr", type=float, default=1.0e-4, help="initial learning rate")
    group.add_argument(
        "--warmup", type=float, default=0.01, help="percentage of data to warmup on (.01 = 1%% of all training iters)"
    )
    group.add_argument("--save", type=str, default=None, help="output directory to save checkpoints to")
    group.add_argument("--save-interval", type=int, default=5000, help="number of iterations between saves")
    group.add_argument("--no-save-optim", action="store_true", help="do not save current optimizer")
    group.add_argument("--no-save-rng", action="store_true", help="do not save current rng state")
    group.add_argument("--load", type=str, default=None, help="path to a directory containing a model checkpoint")
    group.add_argument("--no-load-optim", action="store_true", help="do not load optimizer when loading checkpoint")
    group.add_argument("--no-load-rng", action="store_true", help="do not load rng state when loading checkpoint")
    group.add_argument(
        "--finetune",
        action="store_true",
        help="load model for finetuning: weights only, restart at iteration 0, positions restart at [ROI2]",
    )
    group.add_argument(
        "--roi2-positions",
        action="store_true",
        help="(new) the finetune sequence rule without --finetune: samples "
        "are --max-position-embeddings-finetune long and positions "
        "restart at [ROI2], while --load resumes normally (train a "
        "super-resolution model from scratch, resumably)",
    )
    group.add_argument("--resume-dataloader", action="store_true", help="resume the dataloader at the loaded iteration")
    group.add_argument(
        "--distributed-backend",
        default="nccl",
        help="which backend to use for distributed training (nccl, gloo); gloo is used automatically on CPU",
    )
    group.add_argument("--local_rank", type=int, default=None, help="local rank passed from distributed launcher")
    group.add_argument("--txt-loss-scale", type=float, default=1, help="weight of text positions in the loss")
    group.add_argument("--fast-load", action="store_true", help="load checkpoints without taking the file lock")
    group.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="(new) allow full unpickling of checkpoint files (needed only "
        "for the RNG entries of real DeepSpeed files; only for files "
        "you trust)",
    )


def add_evaluation_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("validation", "validation configurations")
    group.add_argument(
        "--eval-batch-size", type=int, default=None, help="data loader batch size for evaluation (default --batch-size)"
    )
    group.add_argument("--eval-iters", type=int, default=100, help="number of iterations to run for evaluation")
    group.add_argument(
        "--eval-interval", type=int, default=1000, help="interval between running evaluation on validation set"
    )


def add_text_generate_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("Text generation", "configurations")
    group.add_argument("--temperature", type=float, default=1.0)
    group.add_argument("--top_p", type=float, default=0.0)
    group.add_argument(
        "--top_k",
        type=int,
        default=0,
        help="sample among the k most likely tokens (0 = all); unset, the checkpoint's "
        "model_config.json value when it records one",
    )
    group.add_argument(
        "--guidance-scale",
        type=float,
        default=0.0,
        help="(new) text2image and image2text: classifier-free guidance against "
        "the checkpoint's own unconditional prior (logits + s * (logits - "
        "prior)); needs a model trained on both directions, like the demo "
        "model. 0 = off (the original's sampling); unset, a value the "
        "checkpoint's model_config.json records for the task is used",
    )
    group.add_argument(
        "--guidance-top-k",
        type=int,
        default=0,
        help="(new) with --guidance-scale: draw each guided token only among the "
        "K tokens the conditioned model finds most likely (guidance reorders "
        "them, so it cannot pick one the model finds implausible). 0 = all; "
        "unset, a value the checkpoint's model_config.json records for the "
        "task is used",
    )
    group.add_argument(
        "--caption-rerank",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="(new) image2text: print each image's sampled captions ranked by "
        "log p(image | caption), best first (the text->image direction of a "
        "model trained on both, like the demo model); unset, the checkpoint's "
        "model_config.json decides (off when it says nothing)",
    )
    group.add_argument(
        "--caption-rerank-weight",
        type=float,
        default=None,
        metavar="W",
        help="(new) image2text with --caption-rerank: rank by log p(image | caption) "
        "+ W * log p(caption | image) (noisy-channel reranking); unset, the "
        "checkpoint's model_config.json value, else 0",
    )
    group.add_argument(
        "--post-select",
        type=int,
        default=0,
        metavar="N",
        help="(new) text2image: draw max(N, --batch-size) images per query and write the "
        "--batch-size best by post-selection (log p(text | image), the caption direction of a model "
        "trained on both, like the demo model), best first as 0.jpg; 0 = off; unset, the "
        "checkpoint's model_config.json value",
    )
    group.add_argument(
        "--roi2-position-restart",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="(new) positions restart after [ROI2] while sampling (the original's "
        "rule, default); --no-roi2-position-restart for a model trained with "
        "positions counting on through the whole sequence; unset, the "
        "checkpoint's model_config.json decides",
    )
    group.add_argument(
        "--generation-task", type=str, default="text2image", choices=GENERATION_TASKS, help="what task to run"
    )
    group.add_argument(
        "--input-source", type=str, default="interactive", help='"interactive" or a file with one query per line'
    )
    group.add_argument("--output-path", type=str, default="./samples", help="output folder")
    group.add_argument("--debug", action="store_true", help="save one dated grid per query instead of numbered files")
    group.add_argument(
        "--with-id", action="store_true", help="each input line starts with id<TAB>; outputs go to <output-path>/<id>/"
    )
    group.add_argument("--max-inference-batch-size", type=int, default=12, help="samples per sampler call")
    group.add_argument(
        "--img-size",
        type=int,
        default=256,
        help="(new) image side the model works at: 256 px = 32x32 codes ([BASE]), "
        "128 px = 16x16 ([SMALL]); low-level super-resolution reads its "
        "input at half this size",
    )
    group.add_argument(
        "--quantize",
        type=str,
        default="none",
        choices=["none", "int8"],
        help="(new) int8: the transformer's linear layers as int8 weights with one scale per "
        "output channel (weight-only, as torchao's/bitsandbytes' int8): half the memory of "
        "--bf16/--fp16 and faster decoding on CPU; activations keep --bf16/--fp16/float32",
    )
    group.add_argument(
        "--threads",
        type=int,
        default=0,
        help="(new) CPU threads for sampling; 0 (default): OMP_NUM_THREADS when set, else "
        "chosen while sampling by timing steps on 1 and on every core (one thread is faster "
        "beside a busy process)",
    )
    group.add_argument(
        "--sampler",
        type=str,
        default="kv-cache",
        choices=["kv-cache", "mems"],
        help="(new) kv-cache (fast, default) or mems (the original's "
        "algorithm: every key and value recomputed at every step)",
    )


def add_data_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("data", "data configurations")
    group.add_argument("--model-parallel-size", type=int, default=1, help="size of the model parallel")
    group.add_argument("--shuffle", action="store_true", help=UNUSED)
    group.add_argument("--train-data", nargs="+", default=None, help="LMDB folders or .bin files to train on")
    group.add_argument("--valid-data", nargs="*", default=None, help="separate validation data")
    group.add_argument("--test-data", nargs="*", default=None, help="separate test data")
    group.add_argument("--split", default="1000,1,1", help="comma-separated train/valid/test proportions")
    group.add_argument("--num-workers", type=int, default=2, help="number of data loader workers")
    group.add_argument(
        "--dataset-type",
        type=str,
        default="TokenizedDataset",
        choices=DATASET_TYPES,
        help="what type of dataset to use",
    )
    group.add_argument("--max-memory-length", type=int, default=2048, help="max memory buffer for attention (0 = none)")
    group.add_argument(
        "--new-dataset-path", type=str, default=None, help="folder polled for new *lmdb / *bin data during training"
    )


def add_api_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("api", "api configurations")
    group.add_argument("--img_folder_path", default="image/", help=UNUSED)
    group.add_argument("--input_folder_path", default="input/", help=UNUSED)
    group.add_argument("--input_rec_path", default="input/", help=UNUSED)
    group.add_argument("--check_mode", default="code", help=UNUSED)
    group.add_argument("--time_interval", default=10, help=UNUSED)
    group.add_argument(
        "--device",
        default=None,
        help="cpu, cuda, cuda:N or a CUDA device index N (default: cuda when available, else cpu)",
    )


def add_sparse_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("Sparse Attention", "sparse configurations")
    group.add_argument(
        "--is-sparse", type=int, default=0, choices=[0, 1, 2], help="0 dense, 1 sparse training, 2 sparse inference"
    )
    group.add_argument("--query-window", type=int, default=128)
    group.add_argument("--key-window-times", type=int, default=6)
    group.add_argument("--num-pivot", type=int, default=768)


def add_deepspeed_args(parser: argparse.ArgumentParser) -> None:
    """The flags of ``deepspeed.add_config_arguments``, without importing DeepSpeed."""
    group = parser.add_argument_group("DeepSpeed", "DeepSpeed configurations")
    group.add_argument(
        "--deepspeed",
        default=False,
        action="store_true",
        help="enable DeepSpeed (helper flag for user code, no impact on DeepSpeed backend)",
    )
    group.add_argument("--deepspeed_config", default=None, type=str, help="DeepSpeed json configuration file")
    group.add_argument(
        "--deepscale",
        default=False,
        action="store_true",
        help="deprecated enable DeepSpeed (helper flag for user code, no impact on DeepSpeed backend)",
    )
    group.add_argument(
        "--deepscale_config", default=None, type=str, help="deprecated DeepSpeed json configuration file"
    )
    group.add_argument(
        "--deepspeed_mpi",
        default=False,
        action="store_true",
        help="run via MPI, this will attempt to discover the necessary "
        "variables to initialize torch distributed from the MPI "
        "environment",
    )


def get_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(description="PyTorch CogView Model")
    add_model_config_args(parser)
    add_fp16_config_args(parser)
    add_training_args(parser)
    add_evaluation_args(parser)
    add_text_generate_args(parser)
    add_data_args(parser)
    add_api_args(parser)
    add_sparse_args(parser)
    add_deepspeed_args(parser)
    return parser


_NOT_GIVEN = object()  # default of every flag while explicit_dests re-parses


def explicit_dests(argv: Optional[Sequence[str]] = None) -> Set[str]:
    """Destinations of the flags given in ``argv`` (default: sys.argv[1:]), whatever their value.

    A value read from a checkpoint's model_config.json must not replace a flag the user
    typed, even one equal to its default; re-parsing with every default set to a sentinel
    tells the two apart.
    """
    parser = get_parser()
    dests = vars(parser.parse_known_args([])[0])
    parser.set_defaults(**{dest: _NOT_GIVEN for dest in dests})
    parsed, _ = parser.parse_known_args(list(argv) if argv is not None else None)
    return {dest for dest, value in vars(parsed).items() if value is not _NOT_GIVEN}


def parse_device(value: Optional[str]) -> str:
    """Map ``--device`` (cpu, cuda, cuda:N, N or None) to a torch device string."""
    import torch

    if value is None or value == "":
        return "cuda" if torch.cuda.is_available() else "cpu"
    text = str(value).strip().lower()
    if text.isdigit():
        text = f"cuda:{text}"
    if text == "cpu":
        return "cpu"
    if text == "cuda" or (text.startswith("cuda:") and text[5:].isdigit()):
        if not torch.cuda.is_available():
            raise ValueError(f"--device {value}: CUDA is not available on this machine; use --device cpu")
        index = int(text[5:]) if ":" in text else 0
        if index >= torch.cuda.device_count():
            raise ValueError(f"--device {value}: only {torch.cuda.device_count()} CUDA device(s) present")
        return text
    raise ValueError(f"--device {value}: expected cpu, cuda, cuda:N or an integer N")


def _check_conflicts(args: argparse.Namespace, check_shape: bool = True) -> Optional[str]:
    """Return a one-line message for contradictory flags, else None (``check_shape`` False:
    the caller checks the model shape after applying a checkpoint's model_config.json)."""
    if args.fp16 and args.bf16:
        return "--fp16 and --bf16 are mutually exclusive: choose one precision"
    if args.with_id and args.debug:
        return (
            "--with-id and --debug conflict: --debug writes one dated grid per query, "
            "--with-id one folder per id; drop one of them"
        )
    if args.is_sparse == 1:
        if not args.train_data:
            return "--is-sparse 1 is sparse *training* and needs --train-data (use 2 for inference)"
        if not args.checkpoint_activations:
            return "--is-sparse 1 needs --checkpoint-activations (pivots are drawn per chunk)"
        if (args.max_position_embeddings - 1) % args.query_window != 0:
            return (
                f"--is-sparse 1 needs (--max-position-embeddings - 1) divisible by "
                f"--query-window ({args.max_position_embeddings} - 1 vs "
                f"{args.query_window})"
            )
    if check_shape:
        for flag in ("num_layers", "hidden_size", "num_attention_heads"):
            if getattr(args, flag) < 1:  # the three shape flags, always declared
                return f"--{flag.replace('_', '-')} must be at least 1, got {getattr(args, flag)}"
    if check_shape and args.hidden_size % args.num_attention_heads != 0:
        return f"--hidden-size {args.hidden_size} is not divisible by --num-attention-heads {args.num_attention_heads}"
    if args.batch_size < 1 or args.max_inference_batch_size < 1:
        return "--batch-size and --max-inference-batch-size must be at least 1"
    if args.temperature <= 0:
        return "--temperature must be > 0"
    if not 0.0 <= args.top_p <= 1.0:
        return "--top_p must be within [0, 1]"
    if args.guidance_top_k < 0:
        return "--guidance-top-k must be >= 0 (0: every token)"
    if args.top_k < 0:
        return "--top_k must be >= 0"
    return None


def _check_deepspeed_config(config: object, path: str) -> None:
    """ValueError naming the key of a DeepSpeed json whose value has the wrong type."""
    if not isinstance(config, dict):
        raise ValueError(f"--deepspeed_config {path}: expected a JSON object ({{...}}), got a {type(config).__name__}")
    for key in ("optimizer", "fp16", "bf16", "zero_optimization", "scheduler"):
        if key in config and not isinstance(config[key], dict):
            raise ValueError(f"--deepspeed_config {path}: {key!r} must be an object, got {config[key]!r}")
    params = config.get("optimizer", {}).get("params", {})
    if not isinstance(params, dict):
        raise ValueError(f"--deepspeed_config {path}: 'optimizer.params' must be an object, got {params!r}")
    for key in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "train_batch_size"):
        value = config.get(key, 1)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"--deepspeed_config {path}: {key!r} must be an integer >= 1, got {value!r}")
    for key in ("lr", "weight_decay"):
        value = params.get(key, 0)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ValueError(
                f"--deepspeed_config {path}: 'optimizer.params.{key}' must be a number >= 0, got {value!r}"
            )


def _apply_deepspeed_config(args: argparse.Namespace) -> None:
    """Copy batch size, accumulation, lr and weight decay from the DeepSpeed json."""
    if args.deepscale and not args.deepspeed:
        args.deepspeed = True
    if args.deepscale_config and not args.deepspeed_config:
        args.deepspeed_config = args.deepscale_config
    args.gradient_accumulation_steps = None
    if not (args.deepspeed and args.deepspeed_config):
        return
    try:
        with open(args.deepspeed_config) as f:
            config = json.load(f)
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"--deepspeed_config {args.deepspeed_config}: cannot read it as json ({exc})") from None
    _check_deepspeed_config(config, args.deepspeed_config)
    if "train_micro_batch_size_per_gpu" in config:
        args.batch_size = config["train_micro_batch_size_per_gpu"]
    args.gradient_accumulation_steps = config.get("gradient_accumulation_steps")
    params = config.get("optimizer", {}).get("params", {})
    if "lr" in params:
        args.lr = params["lr"]
    if "weight_decay" in params:
        args.weight_decay = params["weight_decay"]


def get_args(argv: Optional[List[str]] = None, check_shape: bool = True) -> argparse.Namespace:
    """Parse and post-process the command line the way the original get_args does
    (``check_shape`` False: see _check_conflicts)."""
    parser = get_parser()
    args = parser.parse_args(argv)
    message = _check_conflicts(args, check_shape)
    if message:
        parser.error(message)
    try:
        args.device = parse_device(args.device)
        _apply_deepspeed_config(args)
    except ValueError as exc:
        parser.error(str(exc))
    args.dtype = "float16" if args.fp16 else ("bfloat16" if args.bf16 else "float32")
    args.cuda = args.device.startswith("cuda")
    args.rank = int(os.getenv("RANK", "0"))
    args.world_size = int(os.getenv("WORLD_SIZE", "1"))
    if args.local_rank is None:
        args.local_rank = int(os.getenv("LOCAL_RANK", "0"))
    args.requested_model_parallel_size = args.model_parallel_size  # generation refuses what it cannot launch
    args.model_parallel_size = max(1, min(args.model_parallel_size, args.world_size))
    if not args.train_data:
        args.train_data = None
    args.dynamic_loss_scale = args.loss_scale is None
    if not args.fp16:
        args.fp32_embedding = args.fp32_layernorm = args.fp32_tokentypes = False
    return args
