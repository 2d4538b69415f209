"""VQ-VAE training: runs, learns, checkpoints, reloads and resumes exactly."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from PIL import Image, ImageDraw

from vqvae import load_model
from vqvae.data import InfiniteSampler, list_images, make_dataset, write_image_lmdb
from vqvae.train import main
from vqvae.vqvae_zc import Quantize

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N_IMAGES = 32


def draw_images(folder, n: int = N_IMAGES, seed: int = 0) -> list[str]:
    """Coloured discs and boxes on plain backgrounds, some wider than tall (exercises cropping)."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        colour = lambda: tuple(int(v) for v in rng.integers(0, 256, 3))  # noqa: E731
        img = Image.new("RGB", (40 if i % 3 == 0 else 32, 32), colour())
        draw = ImageDraw.Draw(img)
        for _ in range(3):
            x0, y0 = (int(v) for v in rng.integers(0, 24, 2))
            box = [x0, y0, x0 + int(rng.integers(4, 14)), y0 + int(rng.integers(4, 14))]
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=colour())
        sub = folder / ("nested" if i % 2 else "")
        sub.mkdir(parents=True, exist_ok=True)
        ext = {0: "png", 1: "jpg", 2: "png", 3: "webp"}[i % 4]
        path = sub / f"img{i}.{ext}"
        img.save(path)
        paths.append(str(path))
    return paths


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    draw_images(folder)
    (folder / "notes.txt").write_text("ignored: not an image extension")
    return folder


def tiny(data, save, iters: int, *extra: str) -> list[str]:
    return [
        "--data",
        str(data),
        "--save",
        str(save),
        "--img-size",
        "32",
        "--channel",
        "32",
        "--embed-dim",
        "8",
        "--n-embed",
        "32",
        "--stride",
        "4",
        "--batch-size",
        "8",
        "--lr",
        "3e-3",
        "--iters",
        str(iters),
        "--save-interval",
        "6",
        "--log-interval",
        "2",
        "--num-workers",
        "0",
        "--device",
        "cpu",
        "--seed",
        "7",
        *extra,
    ]


def test_dataset_listing_and_sampler(images):
    assert len(list_images(str(images))) == N_IMAGES
    ds = make_dataset(str(images), 32)
    x = ds[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    stream = iter(InfiniteSampler(10, seed=3))
    first = [next(stream) for _ in range(25)]
    assert sorted(first[:10]) == list(range(10)) and sorted(first[10:20]) == list(range(10))
    resumed = iter(InfiniteSampler(10, seed=3, start=13))
    assert [next(resumed) for _ in range(12)] == first[13:25]
    shares = []
    for rank in range(3):  # one epoch split over 3 ranks: 4 each, padded by wrapping around
        it = iter(InfiniteSampler(10, seed=3, rank=rank, world=3))
        shares += [next(it) for _ in range(4)]
    assert set(shares) == set(range(10)) and len(shares) == 12


def test_unreadable_images_are_skipped(tmp_path):
    draw_images(tmp_path, n=2)
    (tmp_path / "broken.png").write_bytes(b"not a png")  # sorts first: index 0
    ds = make_dataset(str(tmp_path), 32)
    assert len(ds) == 3 and ds.paths[0].endswith("broken.png")
    with pytest.warns(UserWarning, match="broken.png"):
        assert ds[0].shape == (3, 32, 32)


def test_train_reload_and_exact_resume(images, tmp_path):
    straight = main(tiny(images, tmp_path / "a", 12))
    recon = [row["recon"] for row in straight["history"]]
    assert straight["iteration"] == 12 and all(np.isfinite(recon))
    assert np.mean(recon[-2:]) < np.mean(recon[:2])  # it learns
    for row in straight["history"]:
        assert 0 < row["code_usage"] <= 1 and 1 <= row["perplexity"] <= 32 and row["psnr"] > 0
    files = set(os.listdir(tmp_path / "a"))
    assert {"vqvae_6.pt", "vqvae_12.pt", "latest", "recon_6.png", "recon_12.png", "log.jsonl"} <= files
    assert not [f for f in files if ".tmp" in f]
    assert (tmp_path / "a" / "latest").read_text() == "12"

    ckpt = torch.load(tmp_path / "a" / "vqvae_12.pt", map_location="cpu", weights_only=True)
    assert {"model", "config", "optimizer", "iteration", "rng"} <= set(ckpt)
    assert ckpt["iteration"] == 12 and ckpt["config"]["stride"] == 4
    for path in (tmp_path / "a", tmp_path / "a" / "vqvae_12.pt"):
        reloaded = load_model(path)
        assert not reloaded.training and reloaded.config == straight["model"].config
        for k, v in straight["model"].state_dict().items():
            assert torch.equal(reloaded.state_dict()[k], v), k

    # the same run in two pieces: stop at 6, resume to 12 -> identical weights
    first = main(tiny(images, tmp_path / "b", 6))
    assert first["iteration"] == 6 and (tmp_path / "b" / "latest").read_text() == "6"
    saved = load_model(tmp_path / "b")
    second = main(tiny(images, tmp_path / "b", 12, "--resume"))
    assert second["iteration"] == 12
    assert [row["iteration"] for row in second["history"]] == [8, 10, 12]
    assert (tmp_path / "b" / "latest").read_text() == "12"
    assert not torch.equal(second["model"].quantize_t.embed, saved.quantize_t.embed)
    for k, v in straight["model"].state_dict().items():
        assert torch.equal(second["model"].state_dict()[k], v), k


def test_resume_without_checkpoint_starts_fresh_and_keep_last(images, tmp_path):
    out = main(tiny(images, tmp_path / "c", 12, "--resume", "--keep-last", "1"))
    assert out["iteration"] == 12
    assert sorted(f for f in os.listdir(tmp_path / "c") if f.endswith(".pt")) == ["vqvae_12.pt"]


def test_decoder_only_keeps_every_code_and_learns(images, tmp_path):
    base = main(tiny(images, tmp_path / "base", 6, "--n-embed", "64"))["model"]
    # model flags differ from the file's on purpose: --init's config wins
    out = main(
        tiny(
            images,
            tmp_path / "dec",
            12,
            "--init",
            str(tmp_path / "base"),
            "--decoder-only",
            "--n-embed",
            "16",
            "--dead-code-threshold",
            "100",
        )
    )
    tuned = out["model"]
    assert tuned.config == base.config
    before, after = base.state_dict(), tuned.state_dict()
    for k, v in before.items():
        if k.startswith("dec."):
            continue
        assert torch.equal(after[k], v), k  # encoder and codebook (EMA buffers too) untouched
    assert any(not torch.equal(after[k], v) for k, v in before.items() if k.startswith("dec."))
    recon = [row["recon"] for row in out["history"]]
    assert np.mean(recon[-2:]) < np.mean(recon[:2])
    assert all(row["restarted"] == 0 for row in out["history"])

    # resuming must keep the mode; a mismatch and a missing --init are clear errors
    resumed = main(tiny(images, tmp_path / "dec", 14, "--resume", "--decoder-only"))
    assert resumed["iteration"] == 14
    assert torch.equal(resumed["model"].quantize_t.embed, base.quantize_t.embed)
    with pytest.raises(SystemExit, match="with --decoder-only; resume it the same way"):
        main(tiny(images, tmp_path / "dec", 16, "--resume"))
    with pytest.raises(SystemExit, match="--init"):
        main(tiny(images, tmp_path / "none", 2, "--decoder-only"))
    with pytest.raises(SystemExit, match="no such file"):
        main(tiny(images, tmp_path / "bad", 2, "--init", str(tmp_path / "missing.pt")))


def test_lmdb_dataset_and_dead_code_restart(images, tmp_path):
    lmdb_path = tmp_path / "images.lmdb"
    assert write_image_lmdb(list_images(str(images)), str(lmdb_path)) == N_IMAGES
    ds = make_dataset(str(lmdb_path), 32)
    assert len(ds) == N_IMAGES and ds[5].shape == (3, 32, 32)
    out = main(tiny(lmdb_path, tmp_path / "d", 2, "--n-embed", "64", "--log-interval", "1"))
    assert out["history"][0]["restarted"] > 0  # unused codes restarted from encoder outputs
    q = out["model"].quantize_t
    assert (q.cluster_size > 0).all()


def test_restart_dead_codes_uses_encoder_outputs():
    torch.manual_seed(0)
    q = Quantize(4, 6)
    q.cluster_size.copy_(torch.tensor([5.0, 0.0, 2.0, 0.001, 3.0, 0.0]))
    z = torch.randn(2, 3, 3, 4)
    assert q.restart_dead_codes(z, 0.01) == 3
    rows = z.reshape(-1, 4)
    for code in (1, 3, 5):
        assert any(torch.equal(q.embed[:, code], r) for r in rows)
        assert torch.equal(q.embed_avg[:, code], q.embed[:, code])
    assert q.cluster_size.tolist() == [5.0, 1.0, 2.0, 1.0, 3.0, 1.0]


def test_bad_data_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="no images"):
        main(tiny(tmp_path / "empty", tmp_path / "out", 2))
    with pytest.raises(SystemExit, match="no such file"):
        main(tiny(tmp_path / "missing", tmp_path / "out", 2))


def _ema_worker(rank: int, world: int, init_file: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.manual_seed(0)
    q = Quantize(4, 8).train()
    torch.manual_seed(1 + rank)
    q(torch.randn(2, 5, 4))
    torch.save({k: v.clone() for k, v in q.state_dict().items()}, f"{out}.{rank}")
    dist.destroy_process_group()


@pytest.mark.slow
def test_ema_statistics_all_reduced_across_ranks(tmp_path):
    out = str(tmp_path / "state")
    mp.spawn(_ema_worker, args=(2, str(tmp_path / "init"), out), nprocs=2)
    states = [torch.load(f"{out}.{r}", weights_only=True) for r in range(2)]
    torch.manual_seed(0)
    reference = Quantize(4, 8).train()
    inputs = []
    for rank in range(2):
        torch.manual_seed(1 + rank)
        inputs.append(torch.randn(2, 5, 4))
    reference(torch.cat(inputs))  # one process seeing both ranks' data
    for state in states:
        for k, v in reference.state_dict().items():
            torch.testing.assert_close(state[k], v, atol=1e-6, rtol=1e-6)


@pytest.mark.slow
def test_script_and_torchrun(images, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT}
    args = tiny(images, tmp_path / "s", 2, "--save-interval", "2")
    subprocess.run(
        ["bash", os.path.join(ROOT, "scripts", "train_vqvae.sh"), *args],
        check=True,
        cwd=ROOT,
        env=env,
        capture_output=True,
        timeout=300,
    )
    assert (tmp_path / "s" / "latest").read_text() == "2"
    subprocess.run(
        [sys.executable, "-m", "vqvae.train", "--help"],
        check=True,
        cwd=str(tmp_path),
        env=env,
        capture_output=True,
        timeout=120,
    )
    args = tiny(images, tmp_path / "t", 4, "--save-interval", "4")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--standalone",
            "-m",
            "vqvae.train",
            *args,
        ],
        check=True,
        cwd=ROOT,
        env=env,
        capture_output=True,
        timeout=300,
    )
    assert (tmp_path / "t" / "latest").read_text() == "4"
    assert load_model(tmp_path / "t").config["n_embed"] == 32
