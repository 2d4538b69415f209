"""Datasets, the pickle-free LMDB writer, the restricted unpickler, splits and resuming.

misc/data_expected.npz holds what the original get_dataset_by_type process_fn returned
for the fixture rows (max_position_embeddings 1089, FakeTokenizer of 8192 image tokens
and cog-pretrain.model).
"""

from __future__ import annotations

import builtins
import logging
import os
import pickle
import random
from types import SimpleNamespace

import lmdb
import numpy as np
import pytest
import torch

from data_utils.configure_data import (
    RandomMappingDataset,
    detect_new_datasets,
    get_split,
    make_loaders,
    resume_loader,
    should_split,
    split_ds,
)
from data_utils.datasets import BinaryDataset, LMDBDataset, get_dataset_by_type
from data_utils.lmdb_writer import LMDBWriter, write_rows
from data_utils.row_format import RowFormatError, decode_row, encode_row
from data_utils.safe_pickle import UnsafePickleError, safe_loads
from data_utils.samplers import DistributedBatchSampler
from data_utils.unified_tokenizer import UnifiedTokenizer

from .conftest import fixture_path

READERS = {  # dataset type -> (fixture file, prefix in data_expected.npz, rows)
    "CompactBinaryDataset": ("compact.bin", "compact", 3),
    "TokenizedDataset": ("TokenizedDataset.lmdb", "TokenizedDataset", 2),
    "TextCodeDataset": ("TextCodeDataset.lmdb", "TextCodeDataset", 2),
}


@pytest.fixture(scope="module")
def tok():
    model = fixture_path("tokenizer", "cog-pretrain.model")
    return UnifiedTokenizer(None, txt_tokenizer_path=model, img_tokenizer_num_tokens=8192)


@pytest.fixture(scope="module")
def expected():
    return np.load(fixture_path("misc", "data_expected.npz"))


def make_args(**kw):
    base = dict(
        max_position_embeddings=1089,
        finetune=False,
        max_position_embeddings_finetune=-1,
        dataset_type="TokenizedDataset",
        train_data=None,
        valid_data=None,
        test_data=None,
        split="1000,1,1",
        batch_size=2,
        eval_batch_size=None,
        num_workers=0,
        gradient_accumulation_steps=None,
        new_dataset_path=None,
    )
    base.update(kw)
    return SimpleNamespace(**base)


# ---- the original's rows ------------------------------------------------------------------


@pytest.mark.parametrize("dataset_type", list(READERS))
def test_fixture_rows_identical(tok, expected, dataset_type):
    name, prefix, n = READERS[dataset_type]
    ds = get_dataset_by_type(dataset_type, fixture_path("misc", "data", name), tok, make_args())
    assert len(ds) == n
    for i in range(n):
        sample = ds[i]
        for key in ("text", "loss_mask"):
            want = expected[f"{prefix}_{i}_{key}"]
            assert sample[key].dtype == np.int64 and sample[key].shape == (1089,)
            np.testing.assert_array_equal(sample[key], want)


def test_fixture_rows_via_our_writer(tok, expected, tmp_path):
    """The original's rows re-stored without pickle process identically."""
    for dataset_type in ("TokenizedDataset", "TextCodeDataset"):
        name, prefix, n = READERS[dataset_type]
        src = LMDBDataset(fixture_path("misc", "data", name))
        out = tmp_path / f"{dataset_type}.lmdb"
        assert write_rows(str(out), (src[i] for i in range(len(src)))) == n
        ds = get_dataset_by_type(dataset_type, str(out), tok, make_args())
        for i in range(n):
            for key in ("text", "loss_mask"):
                np.testing.assert_array_equal(ds[i][key], expected[f"{prefix}_{i}_{key}"])


def test_binary_preload_matches_memmap(tok):
    path = fixture_path("misc", "data", "compact.bin")
    lazy, eager = BinaryDataset(path), BinaryDataset(path, preload=True)
    assert len(lazy) == len(eager) == 3
    for i in range(3):
        np.testing.assert_array_equal(lazy[i], eager[i])
        assert lazy[i].shape == (1088,) and lazy[i].dtype == np.int32


def test_binary_dataset_bad_files(tmp_path, caplog):
    empty = tmp_path / "empty.bin"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="no complete row"):
        BinaryDataset(str(empty))
    with pytest.raises(FileNotFoundError, match="missing.bin"):
        BinaryDataset(str(tmp_path / "missing.bin"))
    ragged = tmp_path / "ragged.bin"
    ragged.write_bytes(np.arange(1088 + 5, dtype=np.int32).tobytes())
    with caplog.at_level(logging.WARNING):
        assert len(BinaryDataset(str(ragged))) == 1
    assert "trailing bytes" in caplog.text


def test_truncation_and_finetune_length(tok, caplog):
    path = fixture_path("misc", "data", "TokenizedDataset.lmdb")
    with caplog.at_level(logging.WARNING):
        ds = get_dataset_by_type("TokenizedDataset", path, tok, make_args(max_position_embeddings=20))
        sample = ds[0]
    assert "truncated" in caplog.text
    full = LMDBDataset(path)[0]
    np.testing.assert_array_equal(sample["text"], full[:20])
    assert sample["loss_mask"].tolist() == [1] * 20
    args = make_args(max_position_embeddings=20, finetune=True, max_position_embeddings_finetune=2000)
    sample = get_dataset_by_type("TokenizedDataset", path, tok, args)[0]
    n = len(full)
    assert len(sample["text"]) == 2000 and sample["loss_mask"].sum() == n
    assert (sample["text"][n:] == tok["[PAD]"]).all()


def test_unknown_dataset_type(tok):
    with pytest.raises(ValueError, match="CompactBinaryDataset"):
        get_dataset_by_type("Nope", "x", tok, make_args())


# ---- untrusted pickles --------------------------------------------------------------------


class _SystemCall:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _EvalCall:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (builtins.eval, (f"open({str(self.marker)!r}, 'w').close()",))


def _raw_lmdb(path, rows):
    env = lmdb.open(str(path), map_size=1 << 24)
    with env.begin(write=True) as txn:
        for i, data in enumerate(rows):
            txn.put(str(i).encode(), data)
        txn.put(b"length", str(len(rows)).encode())
    env.close()


@pytest.mark.parametrize("payload", [_SystemCall, _EvalCall])
@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_malicious_pickle_refused(tok, tmp_path, payload, protocol):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.lmdb"
    evil = pickle.dumps(payload(marker), protocol=protocol)
    _raw_lmdb(path, [pickle.dumps(np.arange(3), protocol=protocol), evil])
    ds = get_dataset_by_type("TokenizedDataset", str(path), tok, make_args())
    assert ds[0]["text"][:3].tolist() == [0, 1, 2]  # honest rows still load
    with pytest.raises(UnsafePickleError) as err:
        ds[1]
    message = str(err.value)
    assert "refusing to unpickle" in message and "untrusted data" in message
    assert ("system" in message) or ("eval" in message)
    assert str(path) in message and "'1'" in message
    assert not marker.exists()


def test_malicious_tuple_row_refused(tok, tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil_tc.lmdb"
    _raw_lmdb(path, [pickle.dumps(("a cat", _SystemCall(marker)))])
    ds = get_dataset_by_type("TextCodeDataset", str(path), tok, make_args())
    with pytest.raises(UnsafePickleError, match="refusing to unpickle"):
        ds[0]
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_safe_loads_accepts_numpy_data(protocol):
    row = (
        "一只猫",
        np.arange(1024, dtype=np.int32).reshape(32, 32),
        np.int64(7),
        [1.5, None],
        {"k": b"v"},
        np.float32(2.5),
    )
    out = safe_loads(pickle.dumps(row, protocol=protocol))
    assert out[0] == row[0]
    np.testing.assert_array_equal(out[1], row[1])
    assert out[1].dtype == np.int32 and out[2] == 7 and out[3] == [1.5, None]
    assert out[4] == {"k": b"v"} and out[5] == np.float32(2.5)


def test_safe_loads_refuses_other_globals():
    for obj in (SimpleNamespace(a=1), random.Random(0), torch.zeros(2)):
        with pytest.raises(UnsafePickleError, match="refusing to unpickle"):
            safe_loads(pickle.dumps(obj), source="test")
    with pytest.raises(pickle.UnpicklingError, match="cannot unpickle"):
        safe_loads(b"garbage", source="test")


# ---- our writer ---------------------------------------------------------------------------


def test_row_format_round_trip():
    rows = [
        np.arange(10, dtype=np.int64),
        ("一只猫 a cat", np.arange(64, dtype=np.int16).reshape(8, 8)),
        [1, 2, 3],
        (b"raw", 3, 2.5, ("nested", np.zeros((0,), np.float32))),
        torch.tensor([4, 5]),
        np.arange(6, dtype=">i4").reshape(2, 3),
    ]
    for row in rows:
        data = encode_row(row)
        assert b"pickle" not in data
        out = decode_row(data)
        if isinstance(row, tuple):
            assert len(out) == len(row)
        if isinstance(row, (list, torch.Tensor)):
            np.testing.assert_array_equal(out, np.asarray(row))
    out = decode_row(encode_row(rows[1]))
    assert out[0] == rows[1][0] and out[1].shape == (8, 8) and out[1].dtype == np.int16
    out = decode_row(encode_row(rows[5]))
    np.testing.assert_array_equal(out, rows[5])
    with pytest.raises(TypeError, match="object"):
        encode_row(np.array([None, 1], dtype=object))
    with pytest.raises(TypeError, match="dict"):
        encode_row({"a": 1})
    with pytest.raises(RowFormatError):
        decode_row(encode_row(np.arange(5))[:-3])
    with pytest.raises(RowFormatError):
        decode_row(b"no magic")


def test_writer_round_trip_and_resume(tmp_path):
    path = str(tmp_path / "rows.lmdb")
    rows = [("text %d" % i, np.arange(1024, dtype=np.int64).reshape(32, 32) + i) for i in range(7)]
    with LMDBWriter(path, commit_every=2) as w:
        assert w.count == 0
        for row in rows[:3]:
            w.append(row)
    ds = LMDBDataset(path)
    assert len(ds) == 3
    with LMDBWriter(path) as w:  # resume
        assert w.count == 3 and w.existing_keys() == {0, 1, 2}
        w.extend(rows[3:])
    ds = LMDBDataset(path)
    assert len(ds) == 7
    for i, (text, code) in enumerate(rows):
        got = ds[i]
        assert got[0] == text
        np.testing.assert_array_equal(got[1], code)
    with pytest.raises(IndexError, match="out of range"):
        ds[7]


def test_writer_out_of_order_and_set_length(tmp_path):
    path = str(tmp_path / "ooo.lmdb")
    with LMDBWriter(path) as w:
        w.put(2, np.array([2]))
        w.put(0, np.array([0]))
        assert w.count == 1  # row 1 is missing: readers only see row 0
        w.commit()
        assert len(LMDBDataset(path)) == 1
        w.put(1, np.array([1]))
        assert w.count == 3
    assert [LMDBDataset(path)[i].tolist() for i in range(3)] == [[0], [1], [2]]
    with LMDBWriter(path) as w:
        with pytest.raises(ValueError, match="within"):
            w.set_length(5)
        w.set_length(2)
        assert w.count == 2
    assert len(LMDBDataset(path)) == 2
    with LMDBWriter(path) as w:
        assert w.count == 2 and w.existing_keys() == {0, 1, 2}


def test_writer_commits_on_error(tmp_path):
    path = str(tmp_path / "err.lmdb")
    with pytest.raises(RuntimeError):
        with LMDBWriter(path) as w:
            w.append(np.arange(4))
            raise RuntimeError("preprocessing crashed")
    assert len(LMDBDataset(path)) == 1


def test_writer_grows_full_map(tmp_path):
    path = str(tmp_path / "small.lmdb")
    with LMDBWriter(path, map_size=1 << 16, commit_every=5) as w:
        for i in range(40):
            w.append(np.full(1024, i, dtype=np.int64))
    ds = LMDBDataset(path)
    assert len(ds) == 40 and ds[39][0] == 39


def test_lmdb_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.lmdb"):
        LMDBDataset(str(tmp_path / "nope.lmdb"))
    path = tmp_path / "nolength.lmdb"
    env = lmdb.open(str(path))
    env.close()
    with pytest.raises(ValueError, match="length"):
        LMDBDataset(str(path))


def test_dataset_pickles_for_workers(tmp_path):
    path = str(tmp_path / "w.lmdb")
    write_rows(path, [np.arange(3)])
    ds = LMDBDataset(path)
    ds[0]
    clone = pickle.loads(pickle.dumps(ds))
    assert clone[0].tolist() == [0, 1, 2]


# ---- splits, mapping, samplers, loaders ----------------------------------------------------


@pytest.mark.parametrize(
    "split,valid,test,want",
    [
        ("949,50,1", None, None, [0.949, 0.05, 0.001]),
        ("8/2", None, None, [0.8, 0.2, 0.0]),
        ("0.8", None, None, [0.8, 0.2, 0.0]),
        ("1000,1,1", ["v"], None, [1000 / 1001, 0.0, 1 / 1001]),
        ("98,1,1", ["v"], ["t"], [1.0, 0.0, 0.0]),
        ("0.5,0.2", None, None, [0.5, 0.2, 0.3]),
    ],
)
def test_get_split(split, valid, test, want):
    got = get_split(make_args(split=split, valid_data=valid, test_data=test))
    np.testing.assert_allclose(got, want)


@pytest.mark.parametrize("split", ["a,b", "-1,2"])
def test_get_split_errors(split):
    with pytest.raises(ValueError, match="--split"):
        get_split(make_args(split=split))


def test_split_ds_ranges():
    ds = list(range(1000))
    train, valid, test = split_ds(ds, [0.949, 0.05, 0.001])
    assert (train.split_range, valid.split_range, test.split_range) == ((0, 949), (949, 999), (999, 1000))
    assert valid[0] == 949 and len(test) == 1
    train, valid, test = split_ds(list(range(10)), [0.98, 0.01, 0.01])
    assert len(valid) >= 1 and len(test) >= 1  # every non-zero part gets an item
    assert split_ds(ds, [1, 0, 0])[1:] == [None, None]
    assert not should_split([1.0, 0.0, 0.0]) and should_split([0.9, 0.1, 0.0])


def test_random_mapping():
    base = list(range(7))
    ds = RandomMappingDataset(base)
    assert len(ds) == 1400
    for i in (0, 1, 2, 99, 1399):
        rng = random.Random(i)
        seed = [rng.randint(0, 2**32 - 1) for _ in range(16)]
        assert ds[i] == np.random.RandomState(seed=seed).randint(7)
    assert len({ds[i] for i in range(100)}) == 7


def _batches(sampler, n=None):
    out = []
    for batch in sampler:
        out.append(batch)
        if n is not None and len(out) == n:
            break
    return out


@pytest.mark.parametrize("world_size,accum", [(1, None), (2, None), (2, 3)])
def test_sampler_resume(world_size, accum):
    data = range(103)
    for rank in range(world_size):
        make = lambda start: DistributedBatchSampler(  # noqa: E731
            torch.utils.data.SequentialSampler(data),
            8,
            drop_last=world_size > 1,
            rank=rank,
            world_size=world_size,
            start_iter=start,
            gradient_accumulation_steps=accum,
        )
        full = _batches(make(0))
        assert all(len(b) == 8 // world_size for b in full[:-1])
        per_iter = accum or 1
        for k in (0, 1, 3, 4, 13):  # past the end of a pass: wraps around
            assert _batches(make(k)) == full[(k * per_iter) % len(full) :]
        resumed = make(2)
        assert _batches(resumed) == full[2 * per_iter :]
        assert _batches(resumed) == full  # the next pass starts from the beginning


def test_sampler_rank_slices_cover_global_batch():
    sampler = lambda r: DistributedBatchSampler(  # noqa: E731
        torch.utils.data.SequentialSampler(range(40)), 8, True, rank=r, world_size=4
    )
    per_rank = [_batches(sampler(r)) for r in range(4)]
    for step in range(5):
        assert sum((per_rank[r][step] for r in range(4)), []) == list(range(8 * step, 8 * step + 8))
    with pytest.raises(ValueError, match="divisible"):
        DistributedBatchSampler(torch.utils.data.SequentialSampler(range(4)), 3, True, 0, 2)


def test_make_loaders_and_resume(tok, expected):
    lmdb_path = fixture_path("misc", "data", "TokenizedDataset.lmdb")
    args = make_args(train_data=[lmdb_path], split="949,50,1", batch_size=3)
    train, valid, test = make_loaders(args, tok, rank=0, world_size=1)
    assert args.do_train and args.do_valid and args.do_test
    assert len(train.dataset) + len(valid.dataset) + len(test.dataset) == 2 * 200
    first = [b for _, b in zip(range(6), train)]
    assert first[0]["text"].shape == (3, 1089) and first[0]["text"].dtype == torch.int64
    mapping = RandomMappingDataset(list(range(2)))
    for j, row in enumerate(first[0]["text"]):
        i = mapping[j]
        np.testing.assert_array_equal(row.numpy(), expected[f"TokenizedDataset_{i}_text"])
    train2, _, _ = make_loaders(args, tok, rank=0, world_size=1)
    resume_loader(train2, 4)
    resumed = [b for _, b in zip(range(2), train2)]
    for a, b in zip(resumed, first[4:]):
        assert torch.equal(a["text"], b["text"]) and torch.equal(a["loss_mask"], b["loss_mask"])


def test_make_loaders_repeats_and_eval_sets(tok, tmp_path):
    rows = [np.array([tok["[ROI1]"], 8970, tok["[SEP]"]]), np.array([tok["[ROI1]"], 8971])]
    t2i, i2t, plain, valid = (str(tmp_path / f"{n}.lmdb") for n in ("a_t2i", "a_i2t", "plain", "v"))
    for path in (t2i, i2t, plain, valid):
        write_rows(path, rows)
    args = make_args(train_data=[t2i, i2t, plain], valid_data=[valid], split="1000,1,1", max_position_embeddings=8)
    train, val, test = make_loaders(args, tok, rank=0, world_size=1)
    # (4 + 2 + 1) x 2 rows x 200, valid share zeroed; test keeps its share
    assert len(train.dataset) + len(test.dataset) == 7 * 2 * 200
    assert len(val.dataset) == 2 * 200 and args.do_valid
    batch = next(iter(val))
    assert batch["text"].shape == (2, 8)
    assert set(batch["loss_mask"].sum(1).tolist()) <= {2, 3}

    args = make_args(train_data=[plain], split="1", batch_size=0)
    train, val, test = make_loaders(args, tok, rank=0, world_size=1)
    assert train is val is test is None and not args.do_train


def test_detect_new_datasets(tok, tmp_path):
    plain = str(tmp_path / "plain.lmdb")
    write_rows(plain, [np.array([1, 2])])
    new_dir = tmp_path / "incoming"
    args = make_args(train_data=[plain], split="1", new_dataset_path=str(new_dir))
    assert detect_new_datasets(args, tok) is None  # folder absent
    new_dir.mkdir()
    assert detect_new_datasets(args, tok) is None
    write_rows(str(new_dir / "more.lmdb"), [np.array([3])])
    train, _, _ = detect_new_datasets(args, tok)
    assert args.train_data == [plain, str(new_dir / "more.lmdb")]
    assert len(train.dataset) == 2 * 200


def test_loader_workers_match_main_process(tok):
    paths = [fixture_path("misc", "data", "TextCodeDataset.lmdb")]
    batches = []
    for workers in (0, 2):
        args = make_args(train_data=paths, dataset_type="TextCodeDataset", split="1", batch_size=2, num_workers=workers)
        train, _, _ = make_loaders(args, tok, rank=0, world_size=1)
        batches.append([b["text"] for _, b in zip(range(3), train)])
    for a, b in zip(*batches):
        assert torch.equal(a, b)
