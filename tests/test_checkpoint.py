"""Checkpoint loading and saving in the original layouts, and the errors for bad files."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch

from arch import CheckpointError, GPT2Model, load_checkpoint_state, read_tracker, save_checkpoint
from arch.checkpoint import check_state_dict
from arch.lean_load import load_model_weights


def tiny_model(layers=2, hidden=32):
    torch.manual_seed(0)
    return GPT2Model(layers, 64, hidden, 4, 0, 0, 0, 16, 0, False)


def test_round_trip_original_layout_tracker_written_last(tmp_path):
    model = tiny_model()
    file = save_checkpoint(str(tmp_path), 1000, model.state_dict(), extra={"lr_scheduler": {"num_iters": 3}})
    assert file == str(tmp_path / "1000" / "mp_rank_00_model_states.pt")
    assert (tmp_path / "latest_checkpointed_iteration.txt").read_text() == "1000"
    assert read_tracker(str(tmp_path)) == ("1000", False)
    # the original generate_samples.py rule: tracker -> <iter>/mp_rank_00 -> ['module']
    raw = torch.load(file, map_location="cpu", weights_only=True)
    assert raw["iteration"] == 1000 and set(raw["module"]) == set(model.state_dict())
    state = load_checkpoint_state(str(tmp_path))
    other = tiny_model()
    other.load_state_dict(state, strict=True)
    for k, v in model.state_dict().items():
        assert torch.equal(v, other.state_dict()[k])
    assert not [f for f in os.listdir(tmp_path / "1000") if f.startswith(".tmp")]


def test_other_layouts_release_latest_single_file_and_prefix(tmp_path):
    model = tiny_model()
    state = model.state_dict()
    # DeepSpeed 'latest' tag only
    os.makedirs(tmp_path / "ds" / "5")
    torch.save({"module": state}, tmp_path / "ds" / "5" / "mp_rank_00_model_states.pt")
    (tmp_path / "ds" / "latest").write_text("5")
    assert load_checkpoint_state(str(tmp_path / "ds")).keys() == state.keys()
    # release, in the folder generate_samples reads ('0') or utils.py writes ('release')
    for folder in ("0", "release"):
        root = tmp_path / f"rel_{folder}"
        os.makedirs(root / folder)
        torch.save({"module": state}, root / folder / "mp_rank_00_model_states.pt")
        (root / "latest_checkpointed_iteration.txt").write_text("release")
        assert load_checkpoint_state(str(root)).keys() == state.keys()
    # a single file holding a bare, module.-prefixed state dict
    torch.save({"module." + k: v for k, v in state.items()}, tmp_path / "bare.pt")
    assert load_checkpoint_state(str(tmp_path / "bare.pt")).keys() == state.keys()


def test_fp16_checkpoint_becomes_model_dtype(tmp_path):
    model = tiny_model()
    save_checkpoint(str(tmp_path), 1, {k: v.half() for k, v in model.state_dict().items()})
    state = load_checkpoint_state(str(tmp_path), dtype=torch.float32)
    assert all(v.dtype == torch.float32 for v in state.values())
    fresh = tiny_model()
    load_model_weights(fresh, str(tmp_path))
    torch.testing.assert_close(
        fresh.state_dict()["word_embeddings.weight"], model.state_dict()["word_embeddings.weight"], atol=1e-3, rtol=1e-3
    )


def test_deepspeed_rng_entries_need_trust(tmp_path):
    model = tiny_model()
    os.makedirs(tmp_path / "1")
    payload = {
        "module": model.state_dict(),
        "np_rng_state": np.random.get_state(),
        "random_rng_state": (3, tuple(range(5)), None),
        "csr_tensor_module_names": set(),
    }
    torch.save(payload, tmp_path / "1" / "mp_rank_00_model_states.pt")
    (tmp_path / "latest_checkpointed_iteration.txt").write_text("1")
    with pytest.raises(CheckpointError, match="--trust-checkpoint"):
        load_checkpoint_state(str(tmp_path))
    assert load_checkpoint_state(str(tmp_path), trust=True).keys() == model.state_dict().keys()


def test_bad_files_give_one_clear_line(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint_state(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="not a CogView checkpoint folder"):
        load_checkpoint_state(str(tmp_path / "empty"))
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(CheckpointError, match="text.pt"):
        load_checkpoint_state(str(tmp_path / "text.pt"))
    model = tiny_model()
    torch.save({"module": model.state_dict()}, tmp_path / "good.pt")
    data = (tmp_path / "good.pt").read_bytes()
    (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated.pt.*(truncated|corrupt)"):
        load_checkpoint_state(str(tmp_path / "truncated.pt"))
    (tmp_path / "bad_tracker").mkdir()
    (tmp_path / "bad_tracker" / "latest_checkpointed_iteration.txt").write_text("12")
    with pytest.raises(CheckpointError, match="12.*missing"):
        load_checkpoint_state(str(tmp_path / "bad_tracker"))
    torch.save({"module": {"a": 1}}, tmp_path / "nostate.pt")
    with pytest.raises(CheckpointError, match="no model state"):
        load_checkpoint_state(str(tmp_path / "nostate.pt"))


def test_shape_and_key_mismatch_name_the_key_and_both_shapes(tmp_path):
    save_checkpoint(str(tmp_path / "wide"), 1, tiny_model(hidden=64).state_dict())
    with pytest.raises(CheckpointError) as info:
        load_model_weights(tiny_model(hidden=32), str(tmp_path / "wide"))
    message = str(info.value)
    assert "word_embeddings.weight" in message and "(64, 64)" in message and "(64, 32)" in message
    assert "\n" not in message
    save_checkpoint(str(tmp_path / "deep"), 1, tiny_model(layers=3).state_dict())
    with pytest.raises(CheckpointError, match="unexpected key transformer.layers.2"):
        load_model_weights(tiny_model(layers=2), str(tmp_path / "deep"))
    with pytest.raises(CheckpointError, match="missing"):
        check_state_dict(tiny_model(layers=3), tiny_model(layers=2).state_dict(), "x.pt")


def test_malicious_pickle_is_not_executed(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"module": Evil()}, f)
    with pytest.raises(CheckpointError):
        load_checkpoint_state(str(tmp_path / "evil.pt"))
    assert not marker.exists()
