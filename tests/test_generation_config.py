"""GenerationConfig (flag > model_config.json > default), the model_config.json reader and
writer, explicit_dests, and GPT2Config / GPT2Model.from_config."""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import re

import pytest
import torch

import generate_samples
from arch import CheckpointError, GPT2Config, GPT2Model
from arch.model_config import MODEL_CONFIG_FILENAME, read_model_config, write_model_config
from arguments import explicit_dests, get_args
from generation.config import GenerationConfig

from .conftest import ROOT

STORED = {
    "num_layers": 3,
    "hidden_size": 48,
    "num_attention_heads": 4,
    "max_position_embeddings": 96,
    "img_size": 64,
    "img_tokenizer_path": "../tok/vq.pt",
    "txt_tokenizer_path": "/abs/sp.model",
    "sr_text_length": 20,
    "roi2_position_restart": False,
    "guidance_scale": {"image2text": 0.5, "text2image": 0.8},
    "guidance_top_k": {"text2image": 2},
    "caption_rerank": True,
    "caption_rerank_weight": 3,
    "post_select": 8,
    "top_k": 1,
}


def checkpoint(tmp_path, config) -> str:
    folder = tmp_path / "ckpt"
    folder.mkdir(exist_ok=True)
    (folder / MODEL_CONFIG_FILENAME).write_text(json.dumps(config))
    return str(folder)


def build(*argv: str) -> GenerationConfig:
    return GenerationConfig.from_args(get_args(list(argv)), explicit_dests(argv))


def test_checkpoint_values_fill_the_flags_not_given(tmp_path):
    folder = checkpoint(tmp_path, STORED)
    cfg = build("--load", folder, "--device", "cpu")
    assert cfg.model_config_path == os.path.join(folder, MODEL_CONFIG_FILENAME)
    assert (cfg.num_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.max_position_embeddings) == (3, 48, 4, 96)
    assert cfg.img_size == 64 and cfg.sr_text_length == 20 and cfg.roi2_position_restart is False
    # a relative path in the file is relative to the file's folder; an absolute one is kept
    assert cfg.img_tokenizer_path == os.path.normpath(os.path.join(folder, "..", "tok", "vq.pt"))
    assert cfg.txt_tokenizer_path == "/abs/sp.model"
    assert cfg.guidance("text2image") == (0.8, 2) and cfg.guidance("image2text") == (0.5, 0)
    assert cfg.caption_rerank is True and cfg.caption_rerank_weight == 3.0
    assert cfg.post_select == 8 and cfg.top_k == 1
    assert cfg.hidden_size == cfg.gpt2_config(128).hidden_size and cfg.gpt2_config(128).vocab_size == 128


def test_a_given_flag_beats_the_checkpoint_even_at_its_default_value(tmp_path):
    folder = checkpoint(tmp_path, STORED)
    cfg = build(
        "--load",
        folder,
        "--device",
        "cpu",
        "--num-layers",
        "5",
        "--guidance-scale",
        "0",
        "--no-caption-rerank",
        "--caption-rerank-weight",
        "0",
        "--img-tokenizer-path",
        "mine/vq.pt",
        "--roi2-position-restart",
        "--sr-text-length",
        "0",
        "--post-select",
        "0",
        "--top_k",
        "200",
    )
    assert cfg.num_layers == 5 and cfg.hidden_size == 48  # only the given flag
    assert cfg.guidance("text2image") == (0.0, 2) and cfg.guidance("image2text") == (0.0, 0)  # top-k: still the file's
    assert cfg.caption_rerank is False and cfg.caption_rerank_weight == 0.0
    assert cfg.img_tokenizer_path == "mine/vq.pt"  # a flag's path is the user's, not resolved against the file
    assert cfg.roi2_position_restart is True and cfg.sr_text_length == 0
    assert cfg.post_select == 0 and cfg.top_k == 200
    top_k = build("--load", folder, "--device", "cpu", "--guidance-top-k", "7")
    assert top_k.guidance("text2image") == (0.8, 7) and top_k.guidance("image2text") == (0.5, 7)


def test_without_model_config_the_parser_defaults_hold(tmp_path):
    (tmp_path / "bare").mkdir()
    cfg = build("--load", str(tmp_path / "bare"), "--device", "cpu", "--guidance-scale", "1.5")
    defaults = get_args([])
    assert cfg.model_config_path is None and cfg.num_layers == defaults.num_layers and cfg.img_tokenizer_path is None
    assert cfg.guidance("text2image") == (1.5, 0) and cfg.guidance("image2text") == (1.5, 0)
    assert cfg.caption_rerank is False and cfg.caption_rerank_weight == 0.0 and cfg.roi2_position_restart is True
    assert cfg.guidance("inpainting") == (0.0, 0)
    assert cfg.post_select == 0 and cfg.top_k == defaults.top_k


def test_explicit_dests_are_the_flags_given_whatever_their_value():
    argv = ["--load", "x", "--top_k", "0", "--no-caption-rerank", "--fp16", "--train-data", "a", "b"]
    assert explicit_dests(argv) == {"load", "top_k", "caption_rerank", "fp16", "train_data"}
    assert explicit_dests([]) == set()


@pytest.mark.parametrize(
    "key,value",
    [
        ("num_layers", "8"),
        ("hidden_size", 32.0),
        ("max_position_embeddings", True),
        ("img_tokenizer_path", 3),
        ("guidance_scale", 0.8),
        ("guidance_scale", {"text2image": "high"}),
        ("guidance_top_k", {"text2image": -1}),
        ("caption_rerank", "yes"),
        ("caption_rerank_weight", None),
        ("roi2_position_restart", 0),
        ("post_select", -1),
        ("top_k", 1.5),
    ],
)
def test_a_mistyped_value_is_one_line_naming_file_and_key(tmp_path, capsys, key, value):
    folder = checkpoint(tmp_path, dict(STORED, **{key: value}))
    path = os.path.join(folder, MODEL_CONFIG_FILENAME)
    with pytest.raises(CheckpointError, match="^" + re.escape(f"{path}: {key} must be ")):
        read_model_config(folder)
    code = generate_samples.main(["--load", folder, "--device", "cpu", "--input-source", "interactive"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1
    assert err.startswith(f"generate_samples.py: error: {path}: {key} must be ")


def test_a_file_that_is_no_json_object_is_one_line(tmp_path, capsys):
    folder = checkpoint(tmp_path, [1, 2])
    code = generate_samples.main(["--load", folder, "--device", "cpu", "--input-source", "interactive"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and MODEL_CONFIG_FILENAME in err and "JSON object" in err
    (tmp_path / "ckpt" / MODEL_CONFIG_FILENAME).write_text("{broken")
    assert generate_samples.main(["--load", folder, "--device", "cpu", "--input-source", "interactive"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unreadable model config" in err


def test_write_checks_types_and_round_trips(tmp_path):
    folder = str(tmp_path)
    with pytest.raises(CheckpointError, match="num_layers must be an integer"):
        write_model_config(folder, dict(STORED, num_layers="3"))
    assert not os.path.exists(os.path.join(folder, MODEL_CONFIG_FILENAME))
    path = write_model_config(folder, dict(STORED, extra_key=[1]))  # keys it does not know are kept
    assert path == os.path.join(folder, MODEL_CONFIG_FILENAME)
    assert read_model_config(folder) == dict(STORED, extra_key=[1])
    assert read_model_config(str(tmp_path / "absent")) is None


def test_shipped_model_configs_pass_the_checks():
    files = glob.glob(os.path.join(ROOT, "pretrained", "cogview", "*", MODEL_CONFIG_FILENAME))
    for file in files:
        assert read_model_config(os.path.dirname(file))["num_layers"] > 0


def test_generation_does_not_import_the_command_line_parser():
    for file in glob.glob(os.path.join(ROOT, "generation", "*.py")):
        with open(file) as f:
            text = f.read()
        assert "import arguments" not in text and "from arguments" not in text, file


SHAPE = dict(
    num_layers=2,
    vocab_size=96,
    hidden_size=32,
    num_attention_heads=4,
    embedding_dropout_prob=0.1,
    attention_dropout_prob=0.1,
    output_dropout_prob=0.1,
    max_sequence_length=40,
    max_memory_length=0,
    checkpoint_activations=False,
)


def test_from_config_builds_the_positional_constructors_model():
    torch.manual_seed(0)
    positional = GPT2Model(*SHAPE.values())
    torch.manual_seed(0)
    configured = GPT2Model.from_config(GPT2Config(**SHAPE))
    a, b = positional.state_dict(), configured.state_dict()
    assert list(a) == list(b)
    assert all(a[k].shape == b[k].shape and torch.equal(a[k], b[k]) for k in a)
    relaxed = GPT2Model.from_config(GPT2Config(**SHAPE, pb_relax_attention=True, pb_relax_alpha=8.0))
    assert relaxed.transformer.layers[0].attention.pb_relax_alpha == 8.0


def test_gpt2_config_from_args_reads_the_model_flags():
    args = get_args(
        [
            "--num-layers",
            "3",
            "--hidden-size",
            "64",
            "--num-attention-heads",
            "8",
            "--max-position-embeddings",
            "50",
            "--hidden-dropout",
            "0.2",
            "--attention-dropout",
            "0.3",
            "--pb-relax-attention",
            "--pb-relax-alpha",
            "16",
            "--device",
            "cpu",
        ]
    )
    cfg = GPT2Config.from_args(args, 256)
    assert dataclasses.asdict(cfg) == dict(
        num_layers=3,
        vocab_size=256,
        hidden_size=64,
        num_attention_heads=8,
        embedding_dropout_prob=0.2,
        attention_dropout_prob=0.3,
        output_dropout_prob=0.2,
        max_sequence_length=50,
        max_memory_length=args.max_memory_length,
        checkpoint_activations=False,
        checkpoint_num_layers=1,
        parallel_output=True,
        query_window=128,
        key_window_times=6,
        num_pivot=768,
        pb_relax_attention=True,
        pb_relax_alpha=16.0,
    )
