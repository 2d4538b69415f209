"""arguments.py: the original's flags, defaults and groups, plus ours."""

from __future__ import annotations

import subprocess
import sys

import pytest

from arguments import get_args, get_parser, parse_device

ORIGINAL_DEFAULTS = {
    # model
    "attention_dropout": 0.1,
    "num_attention_heads": 16,
    "hidden_size": 1024,
    "num_layers": 24,
    "layernorm_epsilon": 1e-5,
    "hidden_dropout": 0.1,
    "max_position_embeddings": 512,
    "vocab_size": 30522,
    "deep_init": False,
    "make_vocab_size_divisible_by": 128,
    "cpu_optimizer": False,
    "cpu_torch_adam": False,
    "max_position_embeddings_finetune": -1,
    # fp16
    "fp16": False,
    "fp32_embedding": False,
    "fp32_layernorm": False,
    "fp32_tokentypes": False,
    "fp32_allreduce": False,
    "hysteresis": 2,
    "loss_scale": None,
    "loss_scale_window": 1000,
    "min_scale": 1,
    # train
    "experiment_name": "CogView",
    "batch_size": 4,
    "weight_decay": 0.01,
    "checkpoint_activations": False,
    "checkpoint_num_layers": 1,
    "deepspeed_activation_checkpointing": False,
    "clip_grad": 1.0,
    "train_iters": 1000000,
    "log_interval": 50,
    "exit_interval": None,
    "summary_dir": "",
    "seed": 1234,
    "img_tokenizer_path": None,
    "img_tokenizer_num_tokens": None,
    "reset_position_ids": False,
    "reset_attention_mask": False,
    "lr_decay_iters": None,
    "lr_decay_style": "linear",
    "lr_decay_ratio": 0.1,
    "lr": 1.0e-4,
    "warmup": 0.01,
    "save": None,
    "save_interval": 5000,
    "no_save_optim": False,
    "no_save_rng": False,
    "load": None,
    "no_load_optim": False,
    "no_load_rng": False,
    "finetune": False,
    "resume_dataloader": False,
    "distributed_backend": "nccl",
    "txt_loss_scale": 1,
    "fast_load": False,
    # validation
    "eval_batch_size": None,
    "eval_iters": 100,
    "eval_interval": 1000,
    # text generation
    "temperature": 1.0,
    "top_p": 0.0,
    "top_k": 0,
    "generation_task": "text2image",
    "input_source": "interactive",
    "output_path": "./samples",
    "debug": False,
    "with_id": False,
    "max_inference_batch_size": 12,
    # data
    "model_parallel_size": 1,
    "shuffle": False,
    "train_data": None,
    "valid_data": None,
    "test_data": None,
    "split": "1000,1,1",
    "num_workers": 2,
    "dataset_type": "TokenizedDataset",
    "max_memory_length": 2048,
    "new_dataset_path": None,
    # api
    "img_folder_path": "image/",
    "input_folder_path": "input/",
    "input_rec_path": "input/",
    "check_mode": "code",
    "time_interval": 10,
    "device": None,
    # sparse
    "is_sparse": 0,
    "query_window": 128,
    "key_window_times": 6,
    "num_pivot": 768,
    # deepspeed
    "deepspeed": False,
    "deepspeed_config": None,
    "deepscale": False,
    "deepscale_config": None,
    "deepspeed_mpi": False,
}


def test_every_original_flag_with_its_default():
    defaults = vars(get_parser().parse_args([]))
    for name, value in ORIGINAL_DEFAULTS.items():
        assert name in defaults, name
        assert defaults[name] == value, (name, defaults[name], value)


def test_groups_are_the_originals():
    titles = [g.title for g in get_parser()._action_groups]
    for title in ["model", "fp16", "train", "validation", "Text generation", "data", "api", "Sparse Attention"]:
        assert title in titles


def test_spellings_and_types():
    args = get_args(
        [
            "--top_k",
            "200",
            "--top_p",
            "0.5",
            "--cpu_torch_adam",
            "--local_rank",
            "3",
            "--train-data",
            "a.lmdb",
            "b.bin",
            "--valid-data",
            "--split",
            "949,50,1",
            "--is-sparse",
            "0",
            "--device",
            "cpu",
            "--deepspeed",
            "--max-position-embeddings",
            "1089",
        ]
    )
    assert args.top_k == 200 and args.top_p == 0.5 and args.cpu_torch_adam and args.local_rank == 3
    assert args.train_data == ["a.lmdb", "b.bin"] and args.valid_data == []
    assert args.device == "cpu" and args.dtype == "float32" and args.deepspeed


def test_dtype_flags():
    assert get_args(["--fp16", "--device", "cpu"]).dtype == "float16"
    assert get_args(["--bf16", "--device", "cpu"]).dtype == "bfloat16"


def test_device_parsing():
    assert parse_device("cpu") == "cpu"
    assert parse_device(None) in ("cpu", "cuda")
    import torch

    if not torch.cuda.is_available():
        for value in ("cuda", "cuda:1", "0", 2):
            with pytest.raises(ValueError, match="CUDA is not available"):
                parse_device(value)
    with pytest.raises(ValueError, match="expected cpu"):
        parse_device("tpu")


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["--with-id", "--debug"], "--with-id and --debug conflict"),
        (["--fp16", "--bf16"], "mutually exclusive"),
        (["--is-sparse", "1"], "needs --train-data"),
        (
            [
                "--is-sparse",
                "1",
                "--train-data",
                "x",
                "--checkpoint-activations",
                "--max-position-embeddings",
                "1000",
                "--query-window",
                "64",
            ],
            "divisible",
        ),
        (["--device", "tpu"], "expected cpu"),
        (["--hidden-size", "100", "--num-attention-heads", "16"], "not divisible"),
        (["--guidance-top-k", "-1"], "--guidance-top-k must be >= 0"),
    ],
)
def test_conflicts_fail_with_one_line(argv, needle, capsys):
    with pytest.raises(SystemExit) as info:
        get_args(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1, err


def test_deepspeed_config_overrides(tmp_path):
    config = tmp_path / "ds.json"
    config.write_text(
        '{"train_micro_batch_size_per_gpu": 12, "gradient_accumulation_steps": 2,'
        ' "optimizer": {"type": "Adam", "params": {"lr": 4e-4, "weight_decay": 0.03}}}'
    )
    args = get_args(["--deepspeed", "--deepspeed_config", str(config), "--device", "cpu"])
    assert (args.batch_size, args.gradient_accumulation_steps, args.lr, args.weight_decay) == (12, 2, 4e-4, 0.03)


def test_help_marks_unused_flags_and_does_not_import_deepspeed():
    code = (
        "import sys, arguments, contextlib, io\n"
        "buf = io.StringIO()\n"
        "with contextlib.redirect_stdout(buf):\n"
        "    try: arguments.get_parser().parse_args(['--help'])\n"
        "    except SystemExit: pass\n"
        "text = buf.getvalue()\n"
        "assert 'deepspeed' not in sys.modules\n"
        "print(text)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=__import__("tests.conftest", fromlist=["ROOT"]).ROOT,
    ).stdout
    for flag in ("--layernorm-epsilon", "--deep-init", "--shuffle", "--fp32-embedding", "--check_mode"):
        block = out[out.index("\n  " + flag) :][:300]
        assert "has no effect" in " ".join(block.split()), flag


def test_import_arch_is_light():
    code = "import sys, arch; assert 'deepspeed' not in sys.modules; print(arch.GPT2Model.__name__)"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=__import__("tests.conftest", fromlist=["ROOT"]).ROOT,
        env={"CUDA_VISIBLE_DEVICES": "", "PATH": "/usr/bin:/bin"},
    )
    assert out.returncode == 0 and "GPT2Model" in out.stdout, out.stderr
