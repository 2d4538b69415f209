"""Training: loss and lr schedule against the original, a tiny single-process run,
checkpoints (layout, weights-only loading, flag mismatch, crash mid-save)."""

from __future__ import annotations

import glob
import os

import numpy as np
import pytest
import torch

from arch import GPT2Model, load_checkpoint_state
from learning_rates import AnnealingLR
from training.checkpointing import get_rng_state, set_rng_state
from training.loss import compute_loss, finetune_position_ids, get_batch

from .conftest import load_fixture_json
from .gpt_fixture import build_fixture_model, fixture_config, fixture_expected, fixture_inputs
from .training_data import NUM_IMAGE_TOKENS, WORDS, make_lmdb, tiny_flags, tiny_setup

TOL = dict(atol=1e-4, rtol=1e-4)
NO_DROPOUT = {"--hidden-dropout": 0, "--attention-dropout": 0}  # so the first loss can be recomputed


@pytest.mark.parametrize("style", ["linear", "cosine", "exponential", "constant"])
def test_lr_schedule_matches_original_except_quirks(style):
    data = load_fixture_json("misc", "lr_schedule.json")
    a = data["args"]
    expected = data["styles"][style]["lr_after_init_then_each_step"]
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.0)
    sched = AnnealingLR(
        opt,
        a["start_lr"],
        a["warmup"] * a["num_iters"],
        a["num_iters"],
        style,
        last_iter=-1,
        decay_ratio=a["decay_ratio"],
    )
    got = [opt.param_groups[0]["lr"]]
    for _ in range(a["steps"]):
        sched.step()
        got.append(opt.param_groups[0]["lr"])
    assert got[0] > 0, "first step must not run at lr 0 (the original's quirk)"
    assert got[0] == pytest.approx(expected[1], rel=1e-12)
    for n in range(1, len(expected)):
        want = max(0.0, expected[n])  # the original's linear lr turns negative past the end
        assert got[n] == pytest.approx(want, rel=1e-12, abs=1e-18), f"{style} step {n}"
    state = sched.state_dict()
    ref = data["styles"][style]["state_dict_at_end"]
    assert {k: state[k] for k in ref} == ref


def test_lr_scheduler_state_round_trip():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.0)
    a = AnnealingLR(opt, 1e-3, 10, 100, "cosine", decay_ratio=0.1)
    for _ in range(37):
        a.step()
    opt2 = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.0)
    b = AnnealingLR(opt2, 1e-3, 10, 100, "cosine", decay_ratio=0.1)
    b.load_state_dict(a.state_dict())
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]


@torch.no_grad()
def test_loss_function_equals_original_forward_step():
    """training.loss (used by the loop) on the fixture batch = the original's loss values."""
    model, inp, exp = build_fixture_model(), fixture_inputs(), fixture_expected()
    cfg = fixture_config()
    batch = get_batch(inp["loss_text"], inp["loss_mask_raw"], cfg["num_image_tokens"])
    logits, *_ = model(batch.tokens, batch.position_ids, batch.attention_mask)
    out = compute_loss(logits, batch, txt_loss_scale=cfg["txt_loss_scale"])
    torch.testing.assert_close(out.per_token, exp["loss_per_token"], **TOL)
    torch.testing.assert_close(out.loss.view(1), exp["loss"], **TOL)
    torch.testing.assert_close(out.img_loss.view(1), exp["img_loss"], **TOL)
    torch.testing.assert_close(out.txt_loss.view(1), exp["txt_loss"], **TOL)


def test_finetune_positions_restart_at_roi2():
    inp, cfg = fixture_inputs(), fixture_config()
    got = finetune_position_ids(
        inp["tokens"], cfg["command_tokens"]["[ROI2]"], int(inp["finetune_max_position_embeddings"])
    )
    assert torch.equal(got, inp["finetune_position_ids"].to(got.dtype))
    with pytest.raises(ValueError, match="ROI2"):
        finetune_position_ids(torch.zeros(1, 5, dtype=torch.long), 152, 24)


def test_rng_state_round_trip_is_tensor_only(tmp_path):
    import random

    torch.manual_seed(3)
    random.seed(4)
    np.random.seed(5)
    np.random.randn()  # leaves a cached gaussian
    state = get_rng_state()
    torch.save(state, tmp_path / "rng.pt")
    loaded = torch.load(tmp_path / "rng.pt", weights_only=True)
    expect = (torch.rand(3), random.random(), np.random.randn())
    set_rng_state(loaded)
    assert torch.equal(torch.rand(3), expect[0])
    assert random.random() == expect[1]
    assert np.random.randn() == expect[2]


# ------------------------------------------------------------------ a tiny single-process run


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """20 steps of a tiny model on a tiny LMDB, checkpoints at 10 and 20."""
    import pretrain_gpt2

    folder = str(tmp_path_factory.mktemp("train"))
    setup = tiny_setup(folder)
    save = os.path.join(folder, "ckpt")
    result = pretrain_gpt2.run(
        tiny_flags(
            setup,
            save,
            **NO_DROPOUT,
            **{"--train-iters": 24, "--save-interval": 12, "--split": "0.9,0.1", "--eval-interval": 12},
        )
    )
    run_dir = glob.glob(os.path.join(save, "tiny-*"))[0]
    return setup, folder, run_dir, result


@pytest.mark.slow
def test_tiny_run_lowers_loss_and_first_loss_is_the_fixture_formula(trained):
    setup, folder, run_dir, result = trained
    losses = result.state.losses
    assert len(losses) == 24 and result.finished
    assert np.mean(losses[-4:]) < losses[0] - 0.3, losses
    # the first batch's loss recomputed by hand from the initial weights (fixture formula)
    import pretrain_gpt2
    from arguments import get_args
    from data_utils.configure_data import make_loaders

    args = get_args(tiny_flags(setup, os.path.join(folder, "unused"), **NO_DROPOUT, **{"--split": "0.9,0.1"}))
    args.vocab_size = setup["tokenizer"].padded_vocab_size(32, 1)
    train_loader, _, _ = make_loaders(args, setup["tokenizer"], rank=0, world_size=1)
    data = next(iter(train_loader))
    text, raw = data["text"], data["loss_mask"]
    tokens, labels, mask = text[:, :-1], text[:, 1:], raw[:, 1:].float()
    from training.distributed import set_random_seed

    set_random_seed(args.seed)
    model = pretrain_gpt2.get_model(args).train()
    logits, *_ = model(
        tokens, torch.arange(tokens.size(1)).expand_as(tokens), torch.ones(1, 1, tokens.size(1), tokens.size(1)).tril_()
    )
    losses_ = torch.nn.functional.cross_entropy(logits.float().transpose(1, 2), labels, reduction="none")
    img = tokens < 64
    txt = (~img) & (mask > 0)
    scaled = torch.where(txt, mask * args.txt_loss_scale, mask)
    expected = float((losses_ * scaled).sum().detach() / scaled.sum())
    assert losses[0] == pytest.approx(expected, abs=1e-5)


@pytest.mark.slow
def test_checkpoint_layout_loads_like_generate_samples(trained):
    _, _, run_dir, result = trained
    with open(os.path.join(run_dir, "latest_checkpointed_iteration.txt")) as f:
        iteration = f.read().strip()
    assert iteration == "24"
    file = os.path.join(run_dir, iteration, "mp_rank_00_model_states.pt")
    ckpt = torch.load(file, map_location="cpu", weights_only=True)  # no pickled objects
    assert {
        "module",
        "iteration",
        "optimizer",
        "lr_scheduler",
        "torch_rng_state",
        "np_rng_state",
        "random_rng_state",
        "rng_tracker_states",
        "data_position",
        "model_args",
    } <= set(ckpt)
    module = result.trainer.backend.module
    fresh = GPT2Model(
        num_layers=2,
        vocab_size=ckpt["model_args"]["vocab_size"],
        hidden_size=32,
        num_attention_heads=4,
        embedding_dropout_prob=0.1,
        attention_dropout_prob=0.1,
        output_dropout_prob=0.1,
        max_sequence_length=33,
        max_memory_length=0,
        checkpoint_activations=False,
    )
    fresh.load_state_dict(ckpt["module"], strict=True)  # the original's rule
    for key, value in load_checkpoint_state(run_dir).items():  # and ours
        assert torch.equal(value, module.state_dict()[key])
    # generation reads the model shape from the config written beside the checkpoint
    from arguments import explicit_dests, get_args
    from generation.config import GenerationConfig

    argv = ["--load", run_dir, "--device", "cpu"]
    args = GenerationConfig.from_args(get_args(argv), explicit_dests(argv))
    assert args.model_config_path is not None
    assert (args.num_layers, args.hidden_size, args.num_attention_heads, args.max_position_embeddings) == (2, 32, 4, 33)


@pytest.mark.slow
def test_load_with_a_different_flag_names_it(trained, capsys):
    import pretrain_gpt2

    setup, folder, run_dir, _ = trained
    code = pretrain_gpt2.main(
        tiny_flags(
            setup, os.path.join(folder, "other"), **{"--load": run_dir, "--hidden-size": 64, "--train-iters": 30}
        )
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "--hidden-size is 32 in the checkpoint but 64" in err[0]


@pytest.mark.slow
def test_crash_while_saving_leaves_previous_checkpoint(trained, monkeypatch):
    """A save that dies mid-write (half a file, no rename) keeps the old tracker and files."""
    import arch.checkpoint as ac
    from training.checkpointing import save_training_checkpoint

    _, _, run_dir, result = trained
    trainer = result.trainer
    real_save = torch.save

    def dying_save(obj, f, *a, **k):
        real_save({"partial": torch.zeros(10)}, f)
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        save_training_checkpoint(run_dir, 36, trainer.backend, trainer.scheduler, trainer.args, 36)
    monkeypatch.setattr(torch, "save", real_save)
    assert ac.read_tracker(run_dir) == ("24", False)
    assert (
        not [p for p in os.listdir(os.path.join(run_dir, "36")) if not p.startswith(".tmp")]
        if os.path.isdir(os.path.join(run_dir, "36"))
        else True
    )
    state = load_checkpoint_state(run_dir)
    assert set(state) == set(trainer.backend.module.state_dict())


def test_missing_train_data_is_one_line_error(tmp_path, capsys):
    import pretrain_gpt2

    code = pretrain_gpt2.main(
        [
            "--train-data",
            str(tmp_path / "nope.lmdb"),
            "--img-tokenizer-num-tokens",
            "64",
            "--device",
            "cpu",
            "--num-layers",
            "1",
            "--hidden-size",
            "8",
            "--num-attention-heads",
            "2",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "nope.lmdb" in err[0]


def test_importing_training_does_not_import_deepspeed():
    import subprocess
    import sys

    code = (
        "import sys, arch, pretrain_gpt2, training.backends, training.loop; sys.exit(int('deepspeed' in sys.modules))"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    assert subprocess.run([sys.executable, "-c", code], cwd=root).returncode == 0


@pytest.mark.slow
def test_sparse_training_then_finetune_with_roi2_positions(tmp_path):
    """--is-sparse 1 (pivots from txt/img masks) trains; --finetune loads its weights only and
    trains longer samples whose positions restart at [ROI2] (the table is not enlarged)."""
    import pretrain_gpt2

    setup = tiny_setup(str(tmp_path))
    sparse = pretrain_gpt2.run(
        tiny_flags(
            setup,
            str(tmp_path / "sparse"),
            **{
                "--train-iters": 3,
                "--is-sparse": 1,
                "--checkpoint-activations": True,
                "--query-window": 8,
                "--key-window-times": 2,
                "--num-pivot": 8,
            },
        )
    )
    assert all(np.isfinite(sparse.state.losses))
    run_dir = glob.glob(str(tmp_path / "sparse" / "tiny-*"))[0]
    long_rows = tiny_setup(str(tmp_path), roi2=True)
    assert long_rows["max_len"] > 33
    fine = pretrain_gpt2.run(
        tiny_flags(
            long_rows,
            str(tmp_path / "fine"),
            **{"--train-iters": 2, "--finetune": True, "--load": run_dir, "--max-position-embeddings-finetune": 60},
        )
    )
    assert fine.state.iteration == 2 and all(np.isfinite(fine.state.losses))
    assert fine.trainer.roi2_id == long_rows["tokenizer"]["[ROI2]"]


@pytest.mark.slow
def test_new_dataset_path_is_picked_up(tmp_path, capsys):
    import pretrain_gpt2

    from .training_data import make_lmdb, make_rows

    setup = tiny_setup(str(tmp_path))
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    make_lmdb(str(incoming), "more.lmdb", make_rows(setup["tokenizer"], 8, seed=1))
    result = pretrain_gpt2.run(
        tiny_flags(setup, str(tmp_path / "ck"), **{"--train-iters": 2, "--new-dataset-path": str(incoming)})
    )
    assert result.state.iteration == 2
    assert "new training data found" in capsys.readouterr().out
    assert str(incoming / "more.lmdb") in result.trainer.args.train_data


@pytest.mark.slow
def test_exit_interval_stops_early_and_tensorboard_gets_scalars(tmp_path, capsys):
    import pretrain_gpt2

    setup = tiny_setup(str(tmp_path))
    result = pretrain_gpt2.run(
        tiny_flags(
            setup,
            str(tmp_path / "ck"),
            **{"--train-iters": 10, "--exit-interval": 3, "--split": "0.8,0.2", "--eval-interval": 3},
        )
    )
    out = capsys.readouterr().out
    assert result.state.iteration == 3 and not result.finished
    assert "validation loss at iteration 3" in out and "exiting at iteration 3" in out
    events = glob.glob(str(tmp_path / "ck" / "tb" / "runs" / "tiny-*" / "events.out.tfevents.*"))
    assert events and os.path.getsize(events[0]) > 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(os.path.dirname(events[0]))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {
        "Train/lr",
        "Train/train_loss",
        "Train/img_loss",
        "Train/txt_loss",
        "Train/tokens_per_s",
        "Train/skipped_steps",
        "Train/valid_loss",
    } <= tags


@pytest.mark.slow
def test_nan_loss_step_is_skipped_and_counted(tmp_path):
    import pretrain_gpt2
    from training.loop import BatchStream, TrainState

    setup = tiny_setup(str(tmp_path))
    result = pretrain_gpt2.run(tiny_flags(setup, str(tmp_path / "ck"), **{"--train-iters": 1}))
    trainer = result.trainer
    with torch.no_grad():
        trainer.backend.module.word_embeddings.weight[:5].fill_(float("nan"))
    before = {k: v.clone() for k, v in trainer.backend.module.state_dict().items()}
    lr_before = trainer.backend.optimizer.param_groups[0]["lr"]
    trainer.args.train_iters, trainer.args.save = 3, None
    loader = pretrain_gpt2.build_data(trainer.args)[1][0]
    state = TrainState(iteration=1)
    trainer.train(BatchStream(loader), state)
    assert state.skipped_steps == 2 and state.iteration == 3
    assert trainer.backend.optimizer.param_groups[0]["lr"] == lr_before  # scheduler did not move
    for key, value in trainer.backend.module.state_dict().items():
        assert torch.equal(value.nan_to_num(7.0), before[key].nan_to_num(7.0)), key


@pytest.mark.slow
def test_roi2_positions_train_from_scratch_and_resume(tmp_path, capsys):
    """--roi2-positions: the finetune sequence rule (long samples, positions restart at [ROI2])
    without --finetune's weights-only load, so a second run resumes at the saved iteration."""
    import pretrain_gpt2

    long_rows = tiny_setup(str(tmp_path), roi2=True)
    flags = {"--roi2-positions": True, "--max-position-embeddings-finetune": 60, "--save-interval": 2}
    first = pretrain_gpt2.run(tiny_flags(long_rows, str(tmp_path / "ck"), **{**flags, "--train-iters": 2}))
    roi2 = long_rows["tokenizer"]["[ROI2]"]
    assert first.trainer.roi2_id == roi2
    batch = first.trainer.make_batch({"text": torch.tensor([[5, roi2, 6, 7]]), "loss_mask": torch.ones(1, 4)})
    assert batch.position_ids.tolist() == [[0, 0, 1]]
    run_dir = glob.glob(str(tmp_path / "ck" / "tiny-*"))[0]
    second = pretrain_gpt2.run(
        tiny_flags(long_rows, str(tmp_path / "ck"), **{**flags, "--train-iters": 4, "--load": run_dir})
    )
    assert second.state.iteration == 4 and all(np.isfinite(second.state.losses))
    assert second.trainer.roi2_id == roi2
    assert "at iteration 2" in capsys.readouterr().out  # resumed, not restarted


def _sr_rows(tok, n: int, text_length: int, window: int) -> list:
    """Magnify-layout rows: [ROI1] text padded to text_length [BASE] [BOI1] low [EOI1] [ROI2]
    [POS0] [BASE] [BOI2] high [EOI2], the high-res codes a function of the low-res ones."""
    rng = np.random.RandomState(0)
    rows = []
    for i in range(n):
        text = tok.EncodeAsIds(WORDS[i % len(WORDS)])[:text_length]
        low = rng.randint(0, NUM_IMAGE_TOKENS, size=(window, window))
        high = np.kron(low, np.ones((2, 2), dtype=np.int64))
        rows.append(
            np.asarray(
                [
                    tok["[ROI1]"],
                    *text,
                    *[tok["[PAD]"]] * (text_length - len(text)),
                    tok["[BASE]"],
                    tok["[BOI1]"],
                    *low.reshape(-1),
                    tok["[EOI1]"],
                    tok["[ROI2]"],
                    tok["[POS0]"],
                    tok["[BASE]"],
                    tok["[BOI2]"],
                    *high.reshape(-1),
                    tok["[EOI2]"],
                ],
                dtype=np.int64,
            )
        )
    return rows


@pytest.mark.slow
def test_magnify_position_init_sets_the_table_and_keeps_other_finetune_weights(tmp_path):
    """--magnify-position-init starts the position table as arch.magnify_positions says, the
    run's model_config.json records that positions count on through [ROI2], and a --finetune
    checkpoint with another table size loads every weight but the table (without the flag
    that load is refused, naming the flag)."""
    import json

    import pretrain_gpt2
    from arch import CheckpointError
    from arch.magnify_positions import init_magnify_positions

    setup = tiny_setup(str(tmp_path))
    tok = setup["tokenizer"]
    lmdb_path = make_lmdb(str(tmp_path), "sr.lmdb", _sr_rows(tok, 16, text_length=4, window=2))
    sr = {"--train-data": lmdb_path, "--img-size": 32, "--sr-text-length": 4, "--train-iters": 2, "--save-interval": 2}
    # another model with a 40-row table, saved after 2 steps
    other = pretrain_gpt2.run(tiny_flags(setup, str(tmp_path / "a"), **{**sr, "--max-position-embeddings": 40}))
    saved = {k: v.clone() for k, v in other.trainer.backend.module.state_dict().items()}
    run_dir = glob.glob(str(tmp_path / "a" / "tiny-*"))[0]
    flags = {**sr, "--lr": 0.0, "--warmup": 0.0, "--load": run_dir, "--finetune": True, "--save-interval": 1000}
    with pytest.raises(CheckpointError, match="max-position-embeddings is 40 in the checkpoint"):
        pretrain_gpt2.run(tiny_flags(setup, str(tmp_path / "b"), **flags))
    result = pretrain_gpt2.run(
        tiny_flags(setup, str(tmp_path / "c"), **{**flags, "--magnify-position-init": True, "--save-interval": 2})
    )
    state = result.trainer.backend.module.state_dict()
    expected = init_magnify_positions(torch.empty(33, 32), 4, 2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(state["transformer.position_embeddings.weight"], expected)  # lr 0: as initialised
    assert all(torch.equal(state[k], saved[k]) for k in saved if "position" not in k)
    config = json.load(open(glob.glob(str(tmp_path / "c" / "*" / "model_config.json"))[0]))
    assert config["roi2_position_restart"] is False and config["sr_text_length"] == 4
    # from scratch: the same table; a table too short for the row is refused with the length
    scratch = pretrain_gpt2.run(
        tiny_flags(setup, str(tmp_path / "d"), **{**sr, "--lr": 0.0, "--warmup": 0.0, "--magnify-position-init": True})
    )
    assert torch.equal(scratch.trainer.backend.module.state_dict()["transformer.position_embeddings.weight"], expected)
    with pytest.raises(ValueError, match="33 tokens"):
        pretrain_gpt2.run(
            tiny_flags(
                setup, str(tmp_path / "e"), **{**sr, "--magnify-position-init": True, "--max-position-embeddings": 30}
            )
        )
