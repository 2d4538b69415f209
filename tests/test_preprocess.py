"""preprocess_entry.py: images + captions -> LMDB rows, bad inputs reported, kill + resume."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from data_utils.datasets import LMDBDataset, get_dataset_by_type
from data_utils.lmdb_readers import close_reader
from data_utils.sp_tokenizer import train_text_tokenizer
from data_utils.templates import TextCodeTemplate
from data_utils.unified_tokenizer import UnifiedTokenizer
from generation.magnify import magnify, pad_query_text, padded_text, sr_window
from preprocess import PreprocessConfig, low_level_sr_row, run, sr_layout, sr_positions, sr_row
from preprocess.journal import JOURNAL_NAME, report_path_for
from preprocess_entry import main
from vqvae import VQVAE, img2code, load_model, read_img

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMG_SIZE = 64  # 8x8 codes with the x8 VQ-VAE below
N_GOOD = 12
CONVERTIBLE = {"cmyk.jpg": "CMYK", "palette.png": "P converted", "rgba.png": "transparency"}
SKIPPED = {
    "missing.png": "missing file",
    "notimage.png": "not an image",
    "truncated.png": "truncated",
    "tiny.png": "too small",
}


def draw(rng: np.random.Generator, size=(64, 48)) -> Image.Image:
    colour = lambda: tuple(int(v) for v in rng.integers(0, 256, 3))  # noqa: E731
    img = Image.new("RGB", size, colour())
    d = ImageDraw.Draw(img)
    for _ in range(4):
        x0, y0 = (int(v) for v in rng.integers(0, 40, 2))
        d.ellipse([x0, y0, x0 + int(rng.integers(6, 24)), y0 + int(rng.integers(6, 24))], fill=colour())
    return img


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """A tiny VQ-VAE, a tiny sentencepiece model, and an image folder with captions."""
    root = tmp_path_factory.mktemp("pre")
    torch.manual_seed(0)
    model = VQVAE(channel=16, n_res_block=0, n_res_channel=8, embed_dim=8, n_embed=64, stride=6)
    torch.save(model.state_dict(), root / "vqvae.pt")
    words = "a red cat blue dog sits on the green mat small big bird flies over tree house".split()
    rng = np.random.default_rng(0)
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(" ".join(rng.choice(words, 6)) for _ in range(300)) + "\n")
    sp = train_text_tokenizer(
        str(corpus), str(root / "sp"), vocab_size=60, character_coverage=1.0, hard_vocab_limit=False
    )
    images = root / "images"
    images.mkdir()
    lines, good = [], {}
    for i in range(N_GOOD):
        name = f"good{i}.png" if i % 3 else f"good{i}.jpg"
        draw(rng, (64, 48) if i % 2 else (48, 64)).save(images / name, quality=95)
        caption = f"{words[i]} {words[i + 1]} number {i}"
        good[name] = caption
        lines.append(f"{name}\t{caption}")
    cmyk = draw(rng).convert("CMYK")
    cmyk.save(images / "cmyk.jpg")
    draw(rng).convert("P", palette=Image.ADAPTIVE).save(images / "palette.png")
    rgba = draw(rng).convert("RGBA")
    rgba.putalpha(128)
    rgba.save(images / "rgba.png")
    (images / "notimage.png").write_text("this is not a png")
    buf = io.BytesIO()
    draw(rng).save(buf, format="PNG")
    (images / "truncated.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) * 2 // 3])
    draw(rng, (4, 4)).save(images / "tiny.png")
    for k, name in enumerate(list(CONVERTIBLE) + list(SKIPPED)):
        caption = f"special image {k}"
        if name in CONVERTIBLE:
            good[name] = caption
        lines.append(f"{name}\t{caption}")
    lines += ["good0.jpg\t   ", "no tab on this line", lines[1]]  # empty caption, no TAB, duplicate
    captions = root / "captions.tsv"
    captions.write_text("path\tcaption\n" + "\n".join(lines) + "\n")
    return dict(root=root, vqvae=str(root / "vqvae.pt"), sp=sp, images=images, captions=captions, good=good)


def cli(assets, output, *extra: str) -> list:
    return [
        "--captions",
        str(assets["captions"]),
        "--images",
        str(assets["images"]),
        "--img-tokenizer-path",
        assets["vqvae"],
        "--txt-tokenizer-path",
        assets["sp"],
        "--output",
        str(output),
        "--img-size",
        str(IMG_SIZE),
        "--no-progress",
        *extra,
    ]


def codes_of(model, path: str, size: int = IMG_SIZE) -> np.ndarray:
    return img2code(model, read_img(path, size))[0].numpy()


def read_report(output) -> dict:
    with open(f"{output}.report.tsv") as f:
        header, *rows = [line.rstrip("\n").split("\t") for line in f]
    assert header == ["line", "path", "action", "reason"]
    return {(r[1], r[2]): r[3] for r in rows}, rows


def check_report(output) -> None:
    report, rows = read_report(output)
    for name, why in SKIPPED.items():
        assert why in report[(name, "skipped")], (name, report)
    for name, why in CONVERTIBLE.items():
        assert why in report[(name, "converted")], (name, report)
    assert report[("good0.jpg", "skipped")] == "empty caption"
    assert "no TAB" in report[("no tab on this line", "skipped")]
    assert report[("good1.png", "skipped")] == "duplicate of line 3"
    assert len(rows) == len(report) == len(SKIPPED) + len(CONVERTIBLE) + 3  # each bad input once


@pytest.mark.slow
def test_kill_and_resume_writes_each_good_image_once(assets, tmp_path):
    """SIGKILL after the first commits, rerun: every good or convertible image exactly once."""
    out = tmp_path / "data.lmdb"
    args = cli(
        assets, out, "--output-format", "TextCode", "--batch-size", "2", "--commit-every", "2", "--num-workers", "2"
    )
    argv = [sys.executable, os.path.join(ROOT, "preprocess_entry.py"), *args]
    slow = [sys.executable, os.path.join(ROOT, "tests", "slow_preprocess_worker.py"), "0.4", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(slow, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path)
    journal = out / JOURNAL_NAME
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        if journal.exists() and journal.read_text().count("\nrow\t") >= 3:
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = len(LMDBDataset(str(out)))
    close_reader(str(out))
    assert 2 <= partial < len(assets["good"])

    res = subprocess.run(
        argv, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, cwd=tmp_path, timeout=120
    )
    assert res.returncode == 0, res.stderr
    assert f"{len(assets['good'])} rows" in res.stdout
    ds = LMDBDataset(str(out))
    rows = [ds[i] for i in range(len(ds))]
    close_reader(str(out))
    captions = [text for text, _ in rows]
    assert sorted(captions) == sorted(assets["good"].values())  # each exactly once
    model = load_model(assets["vqvae"])
    by_caption = dict(rows)
    for name, caption in assets["good"].items():
        codes = by_caption[caption]
        assert codes.shape == (64,) and codes.dtype == np.int16
        if name.startswith("good"):  # plain RGB: the same pixels generation would read
            np.testing.assert_array_equal(codes, codes_of(model, str(assets["images"] / name)))
    check_report(out)


def test_tokenized_rows_are_text_code_templates(assets, tmp_path):
    out = tmp_path / "tok.lmdb"
    assert main(cli(assets, out, "--num-workers", "0", "--batch-size", "5")) == 0
    tok = UnifiedTokenizer(img_tokenizer_num_tokens=64, txt_tokenizer_path=assets["sp"])
    model = load_model(assets["vqvae"])
    ds = LMDBDataset(str(out))
    assert len(ds) == len(assets["good"])
    names = [n for n in assets["good"] if n.startswith("good")]
    expected = {
        tuple(TextCodeTemplate(assets["good"][n], codes_of(model, str(assets["images"] / n)), tokenizer=tok).tolist())
        for n in names
    }
    got = {tuple(ds[i].tolist()) for i in range(len(ds))}
    assert expected <= got
    row = ds[0]
    assert row[0] == tok["[ROI1]"] and row[-67] == tok["[TINY]"] and row[-66] == tok["[BOI1]"]
    assert row[-1] == tok["[EOI1]"] and (row[-65:-1] < 64).all() and (row[1:-67] >= 64).all()
    args = type("Args", (), {"max_position_embeddings": 96})()
    sample = get_dataset_by_type("TokenizedDataset", str(out), tok, args)[0]
    assert sample["text"].shape == (96,) and sample["loss_mask"].sum() == len(row)
    close_reader(str(out))
    check_report(out)
    # a finished output: rerunning does nothing new
    assert main(cli(assets, out, "--num-workers", "0")) == 0
    assert len(LMDBDataset(str(out))) == len(assets["good"])
    close_reader(str(out))


def test_text_code_rows_read_by_training_dataset(assets, tmp_path):
    records = tmp_path / "captions.jsonl"
    with open(records, "w") as f:
        for n, (name, caption) in enumerate(sorted(assets["good"].items())[:4]):
            item = {"file" if n % 2 else "image": str(assets["images"] / name), "text": caption}
            f.write(json.dumps(item) + "\n")
        f.write("{broken json\n")
        f.write(json.dumps({"image": "good1.png", "caption": 3}) + "\n")
    out = tmp_path / "tc.lmdb"
    summary = run(
        PreprocessConfig(
            captions=str(records),
            output=str(out),
            img_tokenizer_path=assets["vqvae"],
            output_format="TextCode",
            img_size=IMG_SIZE,
            num_workers=0,
            progress=False,
        )
    )
    assert (summary.total_rows, summary.skipped) == (4, 2)
    tok = UnifiedTokenizer(img_tokenizer_num_tokens=64, txt_tokenizer_path=assets["sp"])
    args = type("Args", (), {"max_position_embeddings": 128})()
    ds = get_dataset_by_type("TextCodeDataset", str(out), tok, args)
    text, codes = LMDBDataset(str(out))[0]
    expected = TextCodeTemplate(text, codes, tokenizer=tok)
    np.testing.assert_array_equal(ds[0]["text"][: len(expected)], expected)
    close_reader(str(out))
    _, rows = read_report(out)
    skipped = sorted(r[3].split(" (")[0] for r in rows if r[2] == "skipped")
    assert skipped == ["caption is not a string", "invalid JSON"]


def test_fatal_setup_errors_are_one_line(assets, tmp_path, capsys):
    out = tmp_path / "x.lmdb"
    argv = cli(assets, out)
    argv[argv.index("--captions") + 1] = str(tmp_path / "nope.tsv")
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert "captions file not found" in err and "\n" not in err
    argv = cli(assets, out)
    argv[argv.index("--img-tokenizer-path") + 1] = str(assets["captions"])
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert "cannot load VQ-VAE" in err and "\n" not in err
    assert main(cli(assets, out, "--img-size", "48")) == 1
    assert "code grid" in capsys.readouterr().err
    assert main(cli(assets, out, "--task", "super-resolution", "--output-format", "TextCode")) == 1
    assert "Tokenized" in capsys.readouterr().err
    assert main(cli(assets, out, "--sr-low-level")) == 1
    assert "--task super-resolution only" in capsys.readouterr().err
    assert not out.exists()


def test_resume_with_other_settings_is_refused(assets, tmp_path, capsys):
    records = tmp_path / "c.tsv"
    records.write_text(f"{assets['images'] / 'good2.png'}\tone image\n")
    out = tmp_path / "o.lmdb"
    base = [
        "--captions",
        str(records),
        "--img-tokenizer-path",
        assets["vqvae"],
        "--txt-tokenizer-path",
        assets["sp"],
        "--output",
        str(out),
        "--num-workers",
        "0",
        "--no-progress",
    ]
    assert main(base + ["--img-size", "64"]) == 0
    assert main(base + ["--img-size", "128"]) == 1
    assert "other settings" in capsys.readouterr().err
    assert main(base + ["--img-size", "128", "--overwrite"]) == 0
    ds = LMDBDataset(str(out))
    assert len(ds) == 1 and (ds[0] < 64).sum() == 16 * 16  # 128 px: 16x16 codes
    close_reader(str(out))


@pytest.mark.parametrize("grid,text_length", [(8, 0), (16, 0), (32, 0), (16, 12)])
def test_super_resolution_rows_match_magnify(assets, grid, text_length):
    """Each window magnify feeds the model is the prefix of one training row, so a model trained
    on these rows sees exactly the contexts it is asked to continue."""
    tok = UnifiedTokenizer(img_tokenizer_num_tokens=512, txt_tokenizer_path=assets["sp"])
    rng = np.random.default_rng(grid)
    low = rng.integers(0, 512, grid * grid)
    high = rng.integers(0, 512, 4 * grid * grid)
    text = tok.EncodeAsIds("a red cat")
    layout = sr_layout(grid)
    rows = [sr_row(tok, text, low, high, p, layout, text_length) for p in sr_positions(layout)]
    assert len(rows) == layout.count**2 == 9  # 3 x 3 windows at every grid
    calls = []

    def fill(seq):
        known = seq.index(-1)
        match = [r for r in rows if r[:known].tolist() == seq[:known]]
        assert len(match) == 1 and len(seq) < len(match[0])  # windows may stop before the last rows
        row = match[0][: len(seq)]
        assert all(s in (-1, r) for s, r in zip(seq, row.tolist(), strict=True))
        calls.append(known)
        return torch.as_tensor(row).view(1, -1)

    size = {8: "[TINY]", 16: "[SMALL]", 32: "[BASE]"}[grid]
    prefix = pad_query_text([tok["[ROI1]"], *text, tok[size], tok["[BOI1]"]], tok.command_tokens, text_length)
    if text_length:
        assert prefix.index(tok["[BOI1]"]) == text_length + 2 and prefix.count(tok["[PAD]"]) == text_length - len(text)
    window, stride = sr_window(grid)
    hi = magnify(torch.as_tensor(low), prefix, fill, tok.command_tokens, window=window, stride=stride)
    np.testing.assert_array_equal(hi[0].numpy(), high)
    assert len(calls) == len(rows)
    assert all(r[-1] == tok["[EOI2]"] for r in rows)


def test_padded_text_refuses_a_longer_caption():
    assert padded_text([5, 6], 4, 0) == [5, 6, 0, 0] and padded_text([5, 6], 0, 0) == [5, 6]
    with pytest.raises(ValueError, match="3 tokens.*at most 2 \\(--sr-text-length\\)"):
        padded_text([5, 6, 7], 2, 0)


def test_super_resolution_cli_pads_captions(assets, tmp_path):
    """--sr-text-length: every row's low-res codes start at the same index; a caption
    longer than the length is skipped and reported, not cut."""
    tok = UnifiedTokenizer(img_tokenizer_num_tokens=64, txt_tokenizer_path=assets["sp"])
    lengths = sorted(len(tok.EncodeAsIds(c)) for n, c in assets["good"].items() if n.startswith("good"))
    limit = lengths[-1] - 1  # the longest caption no longer fits
    out = tmp_path / "sr_pad.lmdb"
    assert (
        main(
            cli(
                assets,
                out,
                "--task",
                "super-resolution",
                "--num-workers",
                "0",
                "--batch-size",
                "4",
                "--sr-text-length",
                str(limit),
            )
        )
        == 0
    )
    ds = LMDBDataset(str(out))
    rows = [np.asarray(ds[i]) for i in range(len(ds))]
    close_reader(str(out))
    assert rows and {int(np.argmax(r == tok["[BOI1]"])) for r in rows} == {limit + 2}
    with open(report_path_for(str(out)), encoding="utf-8") as f:
        skipped = [line for line in f if f"--sr-text-length {limit}" in line]
    assert skipped and any(name in skipped[0] for name in assets["good"])
    assert len(rows) == 9 * (len(assets["good"]) - len(skipped))


def test_super_resolution_cli_rows(assets, tmp_path):
    out = tmp_path / "sr.lmdb"
    assert main(cli(assets, out, "--task", "super-resolution", "--num-workers", "1", "--batch-size", "4")) == 0
    tok = UnifiedTokenizer(img_tokenizer_num_tokens=64, txt_tokenizer_path=assets["sp"])
    model = load_model(assets["vqvae"])
    ds = LMDBDataset(str(out))
    assert len(ds) == 9 * len(assets["good"])  # 8x8 grid: 3 x 3 windows of 4x4 per image
    rows = {tuple(ds[i].tolist()) for i in range(len(ds))}
    close_reader(str(out))
    layout = sr_layout(IMG_SIZE // 8)
    for name in [n for n in assets["good"] if n.startswith("good")]:
        path = str(assets["images"] / name)
        for position in sr_positions(layout):
            row = sr_row(
                tok,
                tok.EncodeAsIds(assets["good"][name]),
                codes_of(model, path),
                codes_of(model, path, 2 * IMG_SIZE),
                position,
                layout,
            )
            assert tuple(row.tolist()) in rows
    row = np.asarray(next(iter(rows)))
    names = [tok.DecodeIds([int(x)])[0][0] for x in row[row >= tok.command_offset]]
    assert names == ["[ROI1]", "[TINY]", "[BOI1]", "[EOI1]", "[ROI2]", "[POS0]", "[TINY]", "[BOI2]", "[EOI2]"]
    assert len(row) - np.argmax(row == tok["[BOI2]"]) - 2 == 8 * 8


def test_super_resolution_cli_low_level_rows(assets, tmp_path):
    """--sr-low-level: one more row per image, the whole image at half size -> full size
    (the low-level super-resolution query), beside the nine windows."""
    out = tmp_path / "sr_low.lmdb"
    assert (
        main(
            cli(assets, out, "--task", "super-resolution", "--sr-low-level", "--num-workers", "0", "--batch-size", "4")
        )
        == 0
    )
    tok = UnifiedTokenizer(img_tokenizer_num_tokens=64, txt_tokenizer_path=assets["sp"])
    model = load_model(assets["vqvae"])
    ds = LMDBDataset(str(out))
    assert len(ds) == 10 * len(assets["good"])
    rows = {tuple(ds[i].tolist()) for i in range(len(ds))}
    close_reader(str(out))
    for name in [n for n in assets["good"] if n.startswith("good")]:
        path = str(assets["images"] / name)
        row = low_level_sr_row(
            tok, tok.EncodeAsIds(assets["good"][name]), codes_of(model, path, IMG_SIZE // 2), codes_of(model, path)
        )
        assert tuple(row.tolist()) in rows
        assert len(row) - np.argmax(row == tok["[BOI2]"]) - 2 == (IMG_SIZE // 8) ** 2


def test_resume_when_a_commit_was_lost(assets, tmp_path):
    """A kill between the journal fsync and the LMDB commit leaves the journal ahead of
    ``length`` (and maybe a half line): the rerun rewrites the lost rows, once each."""
    import lmdb

    out = tmp_path / "lost.lmdb"
    base = cli(assets, out, "--output-format", "TextCode", "--num-workers", "0", "--batch-size", "3")
    assert main(base) == 0
    close_reader(str(out))
    env = lmdb.open(str(out))
    with env.begin(write=True) as txn:
        txn.put(b"length", b"5")
    env.close()
    with open(out / JOURNAL_NAME, "a") as f:
        f.write("row\t99\tdeadbeef")  # torn write
    assert main(base) == 0
    ds = LMDBDataset(str(out))
    captions = [ds[i][0] for i in range(len(ds))]
    close_reader(str(out))
    assert sorted(captions) == sorted(assets["good"].values())
    check_report(out)


def test_long_captions_are_skipped_with_max_text_tokens(assets, tmp_path):
    records = tmp_path / "c.tsv"
    image = assets["images"] / "good2.png"
    records.write_text(f"{image}\tcat\n{image}\t{' '.join(['a red cat sits on the mat'] * 4)}\n")
    out = tmp_path / "long.lmdb"
    summary = run(
        PreprocessConfig(
            captions=str(records),
            output=str(out),
            img_tokenizer_path=assets["vqvae"],
            txt_tokenizer_path=assets["sp"],
            img_size=IMG_SIZE,
            max_text_tokens=8,
            num_workers=0,
            progress=False,
        )
    )
    assert (summary.total_rows, summary.skipped) == (1, 1)
    _, rows = read_report(out)
    assert rows[0][0] == "2" and rows[0][3].startswith("caption too long (")
