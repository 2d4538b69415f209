"""VQ-VAE against the original's reference outputs, plus loader / image I/O behaviour."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

from vqvae import (
    MEAN,
    STD,
    VQVAE,
    ResBlock,
    code2img,
    denormalize,
    img2code,
    infer_config,
    load_model,
    new_model,
    normalize,
    read_img,
    save_image,
)

from .conftest import fixture_path, load_fixture_json

N_IMAGES = 3


@pytest.fixture(scope="module")
def fx():
    cfg = load_fixture_json("vqvae", "config.json")
    inputs = np.load(fixture_path("vqvae", "inputs.npz"))
    expected = np.load(fixture_path("vqvae", "expected.npz"))
    return cfg, {k: inputs[k] for k in inputs}, {k: expected[k] for k in expected}


@pytest.fixture(scope="module")
def model(fx):
    return load_model(fixture_path("vqvae", "vqvae.pt"), **fx[0]["constructor"])


def t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a))


# ----------------------------------------------------------------------------- fixture parity


def test_read_img_matches_fixture_including_rgba(fx):
    cfg, inputs, _ = fx
    imgs = torch.cat([read_img(fixture_path("vqvae", p), cfg["image_size"]) for p in cfg["images"]])
    assert imgs.shape == (N_IMAGES, 3, 64, 64) and imgs.dtype == torch.float32
    torch.testing.assert_close(imgs, t(inputs["images_normalised"]), atol=1e-6, rtol=0)
    assert Image.open(fixture_path("vqvae", cfg["rgba_image"])).mode == "RGBA"


def test_constants_match_fixture(fx):
    cfg = fx[0]
    assert MEAN == tuple(cfg["normalise_mean"]) and STD == tuple(cfg["normalise_std"])
    x = torch.rand(2, 3, 4, 4)
    torch.testing.assert_close(denormalize(normalize(x)), x)


def test_codes_identical(fx, model):
    _, inputs, expected = fx
    codes = img2code(model, t(inputs["images_normalised"]))
    assert codes.dtype == torch.int64 and codes.shape == (N_IMAGES, 64)
    assert torch.equal(codes, t(expected["codes"]))
    assert torch.equal(codes.view(N_IMAGES, 8, 8), t(expected["codes_grid"]))


def test_decoded_from_3d_and_2d_codes(fx, model):
    _, _, expected = fx
    decoded = code2img(model, t(expected["codes_grid"]))
    torch.testing.assert_close(decoded, t(expected["decoded"]), atol=1e-5, rtol=0)
    # fixed quirk: [b, h*w] codes with b > 1 (the original took the side from b*h*w)
    flat = code2img(model, t(expected["codes"]))
    torch.testing.assert_close(flat, t(expected["decoded"]), atol=1e-5, rtol=0)
    first = code2img(model, t(expected["codes"][:1]))
    torch.testing.assert_close(first, t(expected["decoded_first_via_2d_codes"]), atol=1e-5, rtol=0)


def test_encode_quant_and_latent_diff(fx, model):
    _, inputs, expected = fx
    with torch.no_grad():
        quant, diff, ids = model.encode(t(inputs["images_normalised"]))
    torch.testing.assert_close(quant, t(expected["quant"]), atol=1e-5, rtol=0)
    assert diff.shape == (1,)
    torch.testing.assert_close(diff, t(expected["latent_diff"]), atol=1e-6, rtol=0)
    assert torch.equal(ids, t(expected["codes_grid"]))


def test_training_forward_and_ema_update(fx):
    cfg, inputs, expected = fx
    m = load_model(fixture_path("vqvae", "vqvae.pt"), **cfg["constructor"]).train()
    dec, diff = m(t(inputs["images_normalised"]))
    torch.testing.assert_close(dec.detach(), t(expected["train_forward_dec"]), atol=1e-5, rtol=0)
    torch.testing.assert_close(diff.detach(), t(expected["train_forward_diff"]), atol=1e-6, rtol=0)
    q = m.quantize_t
    torch.testing.assert_close(q.embed, t(expected["train_embed_after"]), atol=1e-6, rtol=0)
    torch.testing.assert_close(q.embed_avg, t(expected["train_embed_avg_after"]), atol=1e-6, rtol=0)
    torch.testing.assert_close(q.cluster_size, t(expected["train_cluster_size_after"]), atol=1e-6, rtol=0)
    # straight-through: the encoder receives gradients through the quantiser
    (dec.square().mean() + diff.sum()).backward()
    assert m.enc_b.blocks[0].weight.grad is not None and m.enc_b.blocks[0].weight.grad.abs().sum() > 0


def test_img2code_never_updates_codebook(fx):
    cfg, inputs, expected = fx
    m = load_model(fixture_path("vqvae", "vqvae.pt")).train()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    assert torch.equal(img2code(m, t(inputs["images_normalised"])), t(expected["codes"]))
    for k, v in m.state_dict().items():
        assert torch.equal(v, before[k]), k


# ----------------------------------------------------------------------------- loading


def test_load_model_infers_config_without_kwargs(fx):
    cfg, inputs, expected = fx
    m = load_model(fixture_path("vqvae", "vqvae.pt"))
    assert not m.training
    for key, value in cfg["constructor"].items():
        assert m.config[key] == value, key
    assert torch.equal(img2code(m, t(inputs["images_normalised"])), t(expected["codes"]))


def test_bare_prefixed_and_wrapped_state_dicts(fx, model, tmp_path):
    _, inputs, expected = fx
    raw = torch.load(fixture_path("vqvae", "vqvae.pt"), map_location="cpu", weights_only=True)
    assert all(k.startswith("module.") for k in raw)
    bare = {k[len("module.") :]: v for k, v in raw.items()}
    torch.save(bare, tmp_path / "bare.pt")
    torch.save({"model": bare, "config": dict(model.config)}, tmp_path / "wrapped.pt")
    torch.save({k: v.half() for k, v in raw.items()}, tmp_path / "fp16.pt")
    x = t(inputs["images_normalised"])
    for name in ("bare.pt", "wrapped.pt"):
        m = load_model(tmp_path / name)
        assert m.config == model.config
        assert torch.equal(img2code(m, x), t(expected["codes"]))
        for k, v in m.state_dict().items():
            assert torch.equal(v, bare[k]), (name, k)
    half = load_model(tmp_path / "fp16.pt")
    assert half.quantize_t.embed.dtype == torch.float32


def test_infer_config_all_modes():
    for stride in (6, 4, 2):
        for simple in (True, False):
            for n_res in (0, 2):
                m = VQVAE(
                    channel=16,
                    n_res_block=n_res,
                    n_res_channel=8,
                    embed_dim=4,
                    n_embed=10,
                    stride=stride,
                    simple=simple,
                )
                got = infer_config(m.state_dict())
                want = dict(m.config, legacy_inplace_relu=False)
                if stride != 6:  # simple only changes the mode-6 layout
                    want["simple"] = got["simple"]
                if n_res == 0:  # no ResBlock, so no width to read: the default 32 is kept
                    want["n_res_channel"] = 32
                assert {**got, "legacy_inplace_relu": False} == want, (stride, simple, n_res)


@pytest.mark.parametrize("stride,factor", [(6, 8), (4, 4), (2, 2)])
@pytest.mark.parametrize("simple", [True, False])
def test_stride_modes_shapes(stride, factor, simple):
    m = VQVAE(channel=16, n_res_block=1, n_res_channel=8, embed_dim=4, n_embed=10, stride=stride, simple=simple).eval()
    x = torch.randn(2, 3, 32, 32)
    dec, diff = m(x)
    assert dec.shape == x.shape and diff.shape == (1,)
    codes = img2code(m, x)
    assert codes.shape == (2, (32 // factor) ** 2)
    assert code2img(m, codes).shape == x.shape


def test_mode6_key_layout_with_resblocks():
    keys = VQVAE(channel=16, n_res_block=2, n_res_channel=8, embed_dim=4, n_embed=10, stride=6).state_dict()
    assert keys["enc_b.blocks.5.conv.1.weight"].shape == (8, 16, 3, 3)
    assert keys["enc_b.blocks.6.conv.3.weight"].shape == (16, 8, 1, 1)
    assert keys["enc_b.blocks.8.weight"].shape == (4, 16, 1, 1)
    assert keys["dec.blocks.1.conv.1.weight"].shape == (8, 16, 3, 3)
    assert keys["dec.blocks.0.weight"].shape == (4, 16, 4, 4)
    assert keys["dec.blocks.8.weight"].shape == (3, 16, 1, 1)


def test_channel_2048_forces_no_resblocks():
    with torch.device("meta"):
        m = VQVAE(channel=2048, n_res_block=3, embed_dim=4, n_embed=8, stride=6)
    assert m.config["n_res_block"] == 0
    assert not any(".conv." in k for k in m.state_dict())


def test_new_model_released_structure(fx):
    m = new_model()
    for key, value in fx[0]["released_new_model"].items():
        assert m.config[key] == value, key
    assert m.quantize_t.embed.shape == (256, 8192)


def test_legacy_inplace_relu_changes_resblock():
    torch.manual_seed(0)
    fixed, legacy = ResBlock(4, 3), ResBlock(4, 3, legacy_inplace_relu=True)
    legacy.load_state_dict(fixed.state_dict())
    x = torch.randn(2, 4, 5, 5)
    x_copy = x.clone()
    out_fixed, out_legacy = fixed(x), legacy(x)
    assert torch.equal(x, x_copy)  # neither mutates its input
    body = fixed.conv[1:]
    torch.testing.assert_close(out_fixed, body(torch.relu(x)) + x)
    torch.testing.assert_close(out_legacy, body(torch.relu(x)) + torch.relu(x))
    assert not torch.allclose(out_fixed, out_legacy)
    m = VQVAE(channel=8, n_res_block=1, n_res_channel=4, embed_dim=4, n_embed=6, stride=4).eval()
    m_legacy = VQVAE(**{**m.config, "legacy_inplace_relu": True}).eval()
    m_legacy.load_state_dict(m.state_dict())
    img = torch.randn(1, 3, 16, 16)
    assert not torch.allclose(m.decode(m.encode(img)[0]), m_legacy.decode(m_legacy.encode(img)[0]))


def _one_line_error(fn, *args, **kwargs) -> str:
    with pytest.raises(ValueError) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_bad_checkpoint_files(fx, tmp_path):
    good = fixture_path("vqvae", "vqvae.pt")
    missing = tmp_path / "nope.pt"
    assert "no such file" in _one_line_error(load_model, missing) and "nope.pt" in _one_line_error(load_model, missing)
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint\n")
    assert "not a readable torch checkpoint" in _one_line_error(load_model, text)
    truncated = tmp_path / "truncated.pt"
    data = open(good, "rb").read()
    truncated.write_bytes(data[: len(data) // 2])
    msg = _one_line_error(load_model, truncated)
    assert "truncated.pt" in msg and "not a readable torch checkpoint" in msg
    sd = torch.load(good, map_location="cpu", weights_only=True)
    renamed = dict(sd)
    renamed["module.dec.blocks.6.kernel"] = renamed.pop("module.dec.blocks.6.weight")
    torch.save(renamed, tmp_path / "renamed.pt")
    assert "missing key dec.blocks.6.weight" in _one_line_error(load_model, tmp_path / "renamed.pt")
    msg = _one_line_error(load_model, good, n_embed=128)
    assert "quantize_t.embed" in msg and "[16, 64]" in msg and "[16, 128]" in msg
    torch.save([1, 2, 3], tmp_path / "list.pt")
    assert "does not hold a state dict" in _one_line_error(load_model, tmp_path / "list.pt")
    torch.save({"foo.weight": torch.zeros(2)}, tmp_path / "other.pt")
    assert "not a VQ-VAE state dict" in _one_line_error(load_model, tmp_path / "other.pt")


def test_code2img_rejects_non_square(model):
    assert "square" in _one_line_error(code2img, model, torch.zeros(2, 10, dtype=torch.long))


# ----------------------------------------------------------------------------- image I/O


def test_read_img_modes_resize_and_crop(tmp_path):
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8), "RGB")
    out = read_img(rgb, 32)
    assert out.shape == (1, 3, 32, 32)
    resized = rgb.resize((48, 32), Image.BILINEAR)  # shorter side 40 -> 32, longer 60 -> 48
    want = torch.from_numpy(np.asarray(resized.crop((8, 0, 40, 32)), dtype=np.float32) / 255)
    torch.testing.assert_close(out[0], normalize(want.permute(2, 0, 1)))
    for mode in ("L", "P", "CMYK", "LA", "RGBA", "I;16"):
        img = (
            rgb.convert(mode) if mode != "I;16" else Image.fromarray(rng.integers(0, 65535, (40, 60), dtype=np.uint16))
        )
        path = tmp_path / f"img_{mode.replace(';', '')}.{'tiff' if mode in ('CMYK', 'I;16') else 'png'}"
        img.save(path)
        x = read_img(str(path), 16)
        assert x.shape == (1, 3, 16, 16) and torch.isfinite(x).all(), mode
    grey = read_img(rgb.convert("L"), 32)[0]
    grey01 = denormalize(grey)
    torch.testing.assert_close(grey01[0], grey01[1], atol=1e-6, rtol=0)


def test_read_img_errors(tmp_path):
    assert "no such file" in _one_line_error(read_img, tmp_path / "missing.png", 32)
    bogus = tmp_path / "bogus.png"
    bogus.write_bytes(b"this is not an image at all")
    msg = _one_line_error(read_img, bogus, 32)
    assert "bogus.png" in msg and "not an image" in msg
    full = tmp_path / "full.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(full)
    cut = tmp_path / "cut.png"
    cut.write_bytes(full.read_bytes()[:2000])
    msg = _one_line_error(read_img, cut, 32)
    assert "cut.png" in msg and "truncated" in msg


def test_save_image_atomic_png_and_jpeg(tmp_path):
    x = torch.rand(2, 3, 8, 8) * 1.4 - 0.2  # out of range on purpose: clamped
    save_image(x[0], tmp_path / "one.png")
    back = np.asarray(Image.open(tmp_path / "one.png"))
    want = (x[0].clamp(0, 1) * 255 + 0.5).clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    assert np.array_equal(back, want)
    save_image(x, tmp_path / "grid.jpg", nrow=2, padding=2)
    assert Image.open(tmp_path / "grid.jpg").size == (2 * 8 + 3 * 2, 8 + 2 * 2)
    assert sorted(os.listdir(tmp_path)) == ["grid.jpg", "one.png"]
    assert "unsupported extension" in _one_line_error(save_image, x, tmp_path / "x.gif")


def test_quantizer_picks_first_code_on_ties():
    from vqvae import Quantize

    q = Quantize(3, 6).eval()
    q.embed[:, 4] = q.embed[:, 1]
    z = q.embed[:, 1].clone().view(1, 1, 3).repeat(2, 2, 1)
    quant, diff, ids = q(z)
    assert (ids == 1).all() and float(diff) == 0.0
    torch.testing.assert_close(quant, z)


def test_original_checkpoint_with_resblocks_loads_with_the_original_resblock(tmp_path):
    """A file written by the original code (bare state dict, no config) was trained with the
    in-place ReLU skip, so load_model reproduces it; our own checkpoints keep the fix."""
    import vqvae

    torch.manual_seed(0)
    original = VQVAE(
        channel=16, n_res_block=1, n_res_channel=8, embed_dim=8, n_embed=16, stride=4, legacy_inplace_relu=True
    ).eval()
    torch.save({"module." + k: v for k, v in original.state_dict().items()}, tmp_path / "orig.pt")
    loaded = vqvae.load_model(str(tmp_path / "orig.pt"))
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x)[0], original(x)[0])
    assert vqvae.load_model(str(tmp_path / "orig.pt"), legacy_inplace_relu=False).enc_b is not None
