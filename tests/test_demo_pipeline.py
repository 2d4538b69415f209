"""Pieces of demo/train.sh on tiny models: tokenizer, rows, release export."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from tests.e2e_assets import make_gpt_checkpoint, make_vqvae

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def demo_tokenizer(tmp_path_factory):
    from demo import make_data

    folder = tmp_path_factory.mktemp("demo_tok")
    captions = str(folder / "captions.txt")
    assert make_data.write_captions(captions) > 90000
    return make_data.train_tokenizer(captions, str(folder / "shapes"), 320)


def test_tokenizer_keeps_chinese_attribute_words_whole(demo_tokenizer):
    from data_utils.sp_tokenizer import SentencePieceTokenizer

    tok = SentencePieceTokenizer(demo_tokenizer)
    pieces = tok.EncodeAsPieces("灰色背景上，一个青色心形在一个黑色正方形的下方。")
    for word in ("青色", "心形", "黑色", "正方形", "下方", "。"):
        assert word in pieces, pieces
    english = tok.EncodeAsPieces("an orange hexagon to the left of a white cross on a gray background.")
    assert "▁hexagon" in english and english[-1] == "."


def test_gpt_and_sr_rows(tmp_path, demo_tokenizer, monkeypatch):
    from data_utils.datasets import LMDBDataset
    from data_utils.unified_tokenizer import UnifiedTokenizer
    from demo import make_data

    vq = make_vqvae(str(tmp_path))
    gpt = str(tmp_path / "gpt.lmdb")
    assert make_data.write_gpt_lmdb(gpt, 40, 1, 64, vq, demo_tokenizer, "cpu") == 40
    tok = UnifiedTokenizer(vq, demo_tokenizer)
    rows = [np.asarray(LMDBDataset(gpt)[i]) for i in range(40)]
    t2i = [r for r in rows if r[0] == tok["[ROI1]"]]
    i2t = [r for r in rows if r[0] == tok["[TINY]"]]
    assert len(t2i) + len(i2t) == 40 and t2i and i2t
    for r in t2i:
        boi = list(r).index(tok["[BOI1]"])
        assert r[boi - 1] == tok["[TINY]"] and len(r) == boi + 1 + 64 + 1 and r[-1] == tok["[EOI1]"]
        assert (r[boi + 1 : boi + 65] < tok.num_image_tokens).all()
    for r in i2t:
        assert r[1] == tok["[BOI1]"] and r[66] == tok["[EOI1]"] and r[67] == tok["[ROI1]"]
        text = tok.txt_tokenizer.DecodeIds([int(i) - tok.num_image_tokens for i in r[68:]])
        assert text.endswith((".", "。"))
    sr = str(tmp_path / "sr.lmdb")
    assert make_data.write_sr_lmdb(sr, 10, 1, 64, vq, demo_tokenizer, "cpu") == 10
    for i in range(10):
        r = np.asarray(LMDBDataset(sr)[i])
        boi1, boi2 = list(r).index(tok["[BOI1]"]), list(r).index(tok["[BOI2]"])
        # 8x8 grid: 4x4 low-res windows -> 8x8 high-res blocks (generation.magnify.sr_window)
        assert r[boi1 - 1] == tok["[TINY]"] and r[boi2 - 1] == tok["[TINY]"]
        assert boi2 - boi1 == 16 + 5 and len(r) == boi2 + 1 + 64 + 1
    # SR_LOW_LEVEL: whole images at half size -> full size, laid out as the low-level query
    # ([ROI1] text [TINY] [BOI1] 4x4 codes of the 32 px image [EOI1] [ROI2] [POS0] [TINY] [BOI2] 8x8 codes)
    whole = str(tmp_path / "sr_low_level.lmdb")
    assert make_data.write_sr_lmdb(whole, 10, 1, 64, vq, demo_tokenizer, "cpu", low_level_fraction=1.0) == 10
    enc = make_data._Encoder(vq, "cpu")
    scenes = make_data.sample_scenes(-(-10 // 3), 1 + 2)  # write_sr_lmdb's scenes, 3 rows each
    whole_rows = LMDBDataset(whole)
    for i in range(10):
        r = list(np.asarray(whole_rows[i]))
        boi1, boi2 = r.index(tok["[BOI1]"]), r.index(tok["[BOI2]"])
        assert r[boi1 - 1] == tok["[TINY]"] and r[boi1 + 17 : boi2] == [
            tok[t] for t in ("[EOI1]", "[ROI2]", "[POS0]", "[TINY]")
        ]
        assert r[boi1 + 1 : boi1 + 17] == enc.encode([scenes[i // 3]], 32)[0].tolist()
        assert r[boi2 + 1 : -1] == enc.encode([scenes[i // 3]], 64)[0].tolist() and r[-1] == tok["[EOI2]"]
    # a low-level row continues exactly the query generate_samples.py builds for that task
    from demo.shapes import caption, render
    from generation.queries import task_template
    from preprocess import low_level_sr_row

    render(scenes[0], 32).save(tmp_path / "half.png")
    text = caption(scenes[0], "en")
    query = tok.parse_query(
        task_template("low-level super-resolution", 8).format(text, tmp_path / "half.png"), img_size=32
    )
    row = low_level_sr_row(tok, tok(text), enc.encode([scenes[0]], 32)[0], enc.encode([scenes[0]], 64)[0])
    assert query.count(-1) == 64 and list(row[: len(query) - 64]) == query[:-64]
    import preprocess.rows

    made = []  # which kind of row each one is (both have 16 -> 64 codes here)
    for name in ("sr_row", "low_level_sr_row"):
        monkeypatch.setattr(
            preprocess.rows,
            name,
            lambda *a, _f=getattr(preprocess.rows, name), _n=name, **k: made.append(_n) or _f(*a, **k),
        )
    assert (
        make_data.write_sr_lmdb(
            str(tmp_path / "mixed.lmdb"), 40, 1, 64, vq, demo_tokenizer, "cpu", low_level_fraction=0.5
        )
        == 40
    )
    assert len(made) == 40 and 8 <= made.count("low_level_sr_row") <= 32, made
    padded = str(tmp_path / "sr_padded.lmdb")  # train_demo.sh's SR_TEXT_LENGTH
    assert make_data.write_sr_lmdb(padded, 10, 1, 64, vq, demo_tokenizer, "cpu", text_length=20) == 10
    rows = [np.asarray(LMDBDataset(padded)[i]) for i in range(10)]
    assert {list(r).index(tok["[BOI1]"]) for r in rows} == {22} and {len(r) for r in rows} == {22 + 1 + 16 + 5 + 64 + 1}


def test_vqvae_lmdb_images_load_in_worker_processes(tmp_path):
    from torch.utils.data import DataLoader

    from demo import make_data
    from vqvae.data import make_dataset

    out = str(tmp_path / "imgs.lmdb")
    assert make_data.write_vqvae_images(out, 8, seed=0, img_size=32) == 8
    batches = list(DataLoader(make_dataset(out, 32), batch_size=4, num_workers=1))
    assert len(batches) == 2 and batches[0].shape == (4, 3, 32, 32)


def test_lmdb_output_goes_into_a_new_folder_and_replaces_an_old_one(tmp_path):
    import lmdb

    from demo import make_data

    out = str(tmp_path / "new" / "dir" / "rows.lmdb")  # a fresh DEMO_DIR: no parent yet
    assert make_data.write_lmdb(out, [b"a", b"b"]) == 2
    assert make_data.write_lmdb(out, [b"c"]) == 1
    with lmdb.open(out, readonly=True, lock=False).begin() as txn:
        assert txn.get(b"length") == b"1" and txn.get(b"0") == b"c" and txn.get(b"1") is None
    assert sorted(os.listdir(tmp_path / "new" / "dir")) == ["rows.lmdb"]  # no .tmp left


def test_vqvae_decoder_images_hold_whole_small_renders(tmp_path):
    import io

    import lmdb
    import numpy as np
    from PIL import Image

    from demo import make_data
    from demo.shapes import render, sample_scenes

    plain, whole = str(tmp_path / "plain.lmdb"), str(tmp_path / "whole.lmdb")
    assert make_data.write_vqvae_images(plain, 6, seed=3, img_size=128) == 6
    assert make_data.write_vqvae_images(whole, 6, seed=3, img_size=128, whole_size=64) == 6
    scenes = sample_scenes(6, 3)

    def images(path):
        env = lmdb.open(path, readonly=True, lock=False)
        with env.begin() as txn:
            out = [np.asarray(Image.open(io.BytesIO(txn.get(str(i).encode())))) for i in range(6)]
        env.close()
        return out

    a, b = images(plain), images(whole)
    for i in (0, 3):  # 1 in 3 a whole 64 px render: small shapes at the base model's scale
        assert np.array_equal(b[i], np.asarray(render(scenes[i], 64)))
        assert not np.array_equal(a[i], b[i])
    for i in (1, 2, 4, 5):  # the rest: the same crops as without whole_size
        assert np.array_equal(a[i], b[i])
    only = str(tmp_path / "only.lmdb")  # the base model's VQ-VAE: whole 64 px scenes alone
    assert make_data.write_vqvae_images(only, 6, seed=3, img_size=64, whole_only=True) == 6
    assert all(np.array_equal(c, np.asarray(render(s, 64))) for c, s in zip(images(only), scenes))


def test_export_release(tmp_path, demo_tokenizer):
    from arch.checkpoint import load_checkpoint_state

    vq = make_vqvae(str(tmp_path))
    ckpt = make_gpt_checkpoint(str(tmp_path), vq, demo_tokenizer)
    dst = str(tmp_path / "release" / "cogview-demo")
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "training.export_release",
            "gpt",
            ckpt,
            dst,
            "--dtype",
            "float16",
            "--guidance-scale",
            "image2text=0.5",
            "--caption-rerank",
            "--caption-rerank-weight",
            "1.5",
            "--guidance-top-k",
            "text2image=2",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    state = load_checkpoint_state(dst)
    original = load_checkpoint_state(ckpt)
    assert state.keys() == original.keys()
    for k, v in state.items():
        assert v.dtype == torch.float16
        torch.testing.assert_close(v.float(), original[k].float(), atol=1e-3, rtol=1e-3)
    with open(os.path.join(dst, "model_config.json")) as f:
        config = json.load(f)
    assert os.path.samefile(os.path.join(dst, config["img_tokenizer_path"]), vq)
    assert config["guidance_scale"] == {"image2text": 0.5} and config["caption_rerank"] is True
    assert config["caption_rerank_weight"] == 1.5 and config["guidance_top_k"] == {"text2image": 2}
    # the exported folder drives generation without shape flags
    from arguments import explicit_dests, get_args
    from generation.config import GenerationConfig

    def generation_config(*argv):
        return GenerationConfig.from_args(get_args(list(argv)), explicit_dests(argv))

    args = generation_config("--load", dst)
    assert args.num_layers == 2 and args.hidden_size == 32 and args.guidance("image2text")[0] == 0.5
    assert args.caption_rerank is True and args.caption_rerank_weight == 1.5
    assert args.guidance("text2image") == (0.0, 2) and args.guidance("image2text") == (0.5, 0)
    given = generation_config("--load", dst, "--caption-rerank-weight", "0")  # a flag wins over the config
    assert given.caption_rerank_weight == 0
    bad_scale = subprocess.run(
        [
            sys.executable,
            "-m",
            "training.export_release",
            "gpt",
            ckpt,
            str(tmp_path / "out"),
            "--guidance-scale",
            "captions=1",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert bad_scale.returncode == 2 and "image2text=S" in bad_scale.stderr and not os.path.exists(tmp_path / "out")
    bad_k = subprocess.run(
        [
            sys.executable,
            "-m",
            "training.export_release",
            "gpt",
            ckpt,
            str(tmp_path / "out"),
            "--guidance-top-k",
            "text2image=0.5",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert bad_k.returncode == 2 and "whole number" in bad_k.stderr and not os.path.exists(tmp_path / "out")
    # a bad source gives one line and no output
    bad = subprocess.run(
        [sys.executable, "-m", "training.export_release", "gpt", str(tmp_path / "nope"), str(tmp_path / "out")],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1 and not os.path.exists(tmp_path / "out")


def test_export_release_averages_checkpoints(tmp_path, demo_tokenizer):
    """--average ships the mean of one model's checkpoints, keeps SRC's iteration, and refuses
    a checkpoint of another shape with one line and no output."""
    from arch.checkpoint import load_checkpoint_state, read_tracker, save_checkpoint

    vq = make_vqvae(str(tmp_path))
    ckpt = make_gpt_checkpoint(str(tmp_path), vq, demo_tokenizer)
    first = load_checkpoint_state(ckpt)
    torch.manual_seed(1)
    other_state = {k: (v + torch.randn_like(v)) if v.is_floating_point() else v for k, v in first.items()}
    other = str(tmp_path / "other")
    save_checkpoint(other, 4, other_state)
    dst = str(tmp_path / "release" / "avg")
    out = subprocess.run(
        [sys.executable, "-m", "training.export_release", "gpt", ckpt, dst, "--dtype", "float32", "--average", other],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    assert read_tracker(dst)[0] == "10"
    state = load_checkpoint_state(dst)
    for k, v in state.items():
        if v.is_floating_point():
            torch.testing.assert_close(v, (first[k] + other_state[k]) / 2)
            assert not torch.equal(v, first[k])
    wrong = str(tmp_path / "wrong")
    save_checkpoint(wrong, 4, {k: (v[..., :1] if v.dim() else v) for k, v in first.items()})
    bad = subprocess.run(
        [sys.executable, "-m", "training.export_release", "gpt", ckpt, str(tmp_path / "out"), "--average", wrong],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1 and "wrong" in bad.stderr
    assert not os.path.exists(tmp_path / "out")


def test_export_vqvae_keeps_weights_and_config(tmp_path):
    import vqvae
    from training.export_release import export_vqvae

    model = vqvae.VQVAE(channel=16, n_res_block=1, n_res_channel=8, embed_dim=8, n_embed=32, stride=6)
    src = str(tmp_path / "vqvae_10.pt")
    torch.save({"model": model.state_dict(), "config": dict(model.config), "optimizer": {}, "iteration": 10}, src)
    dst = export_vqvae(src, str(tmp_path / "out" / "v.pt"))
    loaded = vqvae.load_model(dst)
    assert loaded.config == model.config
    blob = torch.load(dst, weights_only=True)
    assert set(blob) == {"model", "config"}


def test_first_sentence_cuts_generated_captions():
    from generation.outputs import first_sentence

    assert first_sentence(" a red circle on a white background. a blue") == "a red circle on a white background."
    assert first_sentence("白色背景上，一个红色圆形在左上角。白色") == "白色背景上，一个红色圆形在左上角。"
    assert first_sentence("no end mark") == "no end mark"


def test_train_demo_records_a_sitting_killed_outright(tmp_path):
    """kill -9 runs no trap: the stage's marker file, left behind, gives that sitting's time
    (start to last touch) as a `killed` line on the next run, before anything else."""
    demo = tmp_path / "demo"
    env = dict(os.environ, DEMO_DIR=str(demo), STEPS="tokenizer", RESULTS="", CUDA_VISIBLE_DEVICES="", FORCE_CPU="1")
    script = os.path.join(ROOT, "scripts", "train_demo.sh")
    killed = subprocess.Popen(
        ["bash", script], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    marker = demo / "stage_running"
    deadline = time.time() + 60
    while not marker.exists() and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait(timeout=30)
    assert marker.read_text().split("\t")[0] == "tokenizer" and not (demo / "stage_times.tsv").exists()
    start = int(marker.read_text().split()[1])
    os.utime(marker, (start + 42, start + 42))  # as if its last touch came 42 s in
    tokenizer = demo / "release" / "text_tokenizer" / "shapes.model"
    tokenizer.parent.mkdir(parents=True, exist_ok=True)
    tokenizer.write_bytes(b"")  # the stage is done: the rerun only records the killed sitting
    rerun = subprocess.run(["bash", script], env=env, capture_output=True, text=True, timeout=60)
    assert rerun.returncode == 0, rerun.stderr
    lines = [line.split("\t") for line in (demo / "stage_times.tsv").read_text().splitlines()]
    assert lines[0] == ["stage", "seconds", "ended", "how"]
    assert [(t[0], t[1], t[3]) for t in lines[1:]] == [("tokenizer", "42", "killed")]
    assert not marker.exists() and "tokenizer: done already" in rerun.stderr


@pytest.mark.slow
def test_train_demo_script_end_to_end_and_resumable(tmp_path):
    """scripts/train_demo.sh with tiny step counts: every stage runs from an empty folder (the
    first sitting killed inside a stage), the exported models drive generate_samples.py and
    the evaluation, each stage's time is recorded, and a second run skips what is done."""
    env = dict(
        os.environ,
        DEMO_DIR=str(tmp_path / "demo"),
        PRETRAINED_DIR=str(tmp_path / "pre"),
        VQ_ITERS="3",
        VQ_IMAGES="64",
        VQ_DECODER_ITERS="2",
        VQ_DECODER_IMAGES="30",
        VQ_WHOLE_ITERS="2",
        VQ_BASE_ITERS="2",
        VQ_BASE_IMAGES="16",
        GPT_ROWS="48",
        GPT_ITERS="3",
        GPT_DROPOUT_ITERS="2",
        GPT_BATCH="4",
        SR_ROWS="24",
        SR_ITERS="2",
        SR_BATCH="4",
        EVAL_ARGS="--prompts 1 --train-prompts 0 --sr-images 1",
        RESULTS=str(tmp_path / "RESULTS.md"),
        CUDA_VISIBLE_DEVICES="",
        FORCE_CPU="1",
    )
    script = os.path.join(ROOT, "scripts", "train_demo.sh")

    # killed inside the VQ-VAE stage (once its images are written), then inside the GPT stage
    # (once its run's folder is there): each sitting's time in its stage is recorded as
    # stopped, under the stage's name, its output is not there, and the same command goes on
    def stopped_when(path):
        with open(tmp_path / "stopped.txt", "a") as log:
            stopped = subprocess.Popen(["bash", script], env=env, stdout=log, stderr=log, start_new_session=True)
            deadline = time.time() + 300
            while not path.exists() and time.time() < deadline:
                time.sleep(0.2)
            time.sleep(1)
            os.killpg(stopped.pid, signal.SIGTERM)
            stopped.wait(timeout=120)
        assert stopped.returncode != 0

    stopped_when(tmp_path / "demo" / "vqvae_images.lmdb")
    assert not (tmp_path / "demo" / "release" / "vqvae" / "shapes_vqvae.pt").exists()
    stopped_when(tmp_path / "demo" / "checkpoints" / "cogview-demo-fit")
    assert not (tmp_path / "demo" / "checkpoints" / "cogview-demo").exists()
    first = subprocess.run(["bash", script], env=env, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "[1/10] tokenizer: done already" in first.stderr
    pre = tmp_path / "pre"
    stages = ["tokenizer", "vqvae", "vqvae-base", "gpt-data", "gpt", "gpt-dropout", "sr-data", "sr", "export", "eval"]
    times = [line.split("\t") for line in (tmp_path / "demo" / "stage_times.tsv").read_text().splitlines()]
    assert [(t[0], t[3]) for t in times[1:]] == [
        ("tokenizer", "finished"),
        ("vqvae", "stopped"),
        ("vqvae", "finished"),
        ("vqvae-base", "finished"),
        ("gpt-data", "finished"),
        ("gpt", "stopped"),
        ("gpt", "finished"),
    ] + [(name, "finished") for name in stages[5:]]
    assert all(int(t[1]) >= 0 for t in times[1:])
    assert "total" in first.stderr.split("stage times")[-1] and not (tmp_path / "demo" / "stage_running").exists()
    # a complete run writes its evaluation and its stage times to RESULTS
    results = (tmp_path / "RESULTS.md").read_text()
    assert "## Demo model evaluation (scripts/eval_demo.sh)" in results
    assert "## Demo recipe from nothing (scripts/train_demo.sh)" in results
    assert "| vqvae | " in results and "| 2 (1 stopped) |" in results and "| total | " in results
    assert re.search(r"\| gpt \| [^|]+ \| 2 \(1 stopped\) \|", results), results
    with open(tmp_path / "demo" / "eval.json") as f:  # the eval stage scored the exported models
        scores = json.load(f)
    assert scores["post_select"] == 8 and scores["super_resolution"]["top_k"] == 1
    assert set(scores["text2image"]) == {"one", "two"}
    for path in (
        "text_tokenizer/shapes.model",
        "vqvae/shapes_vqvae.pt",
        "vqvae/shapes_vqvae_base.pt",
        "cogview/cogview-demo/model_config.json",
    ):
        assert (pre / path).is_file(), path
    # three VQ-VAE stages: the decoder-only one keeps stage 1's encoder and codebook and
    # changes the decoder; the last trains everything from there and is the shipped file
    import vqvae

    ckpts = tmp_path / "demo" / "checkpoints"
    shipped = vqvae.load_model(pre / "vqvae" / "shapes_vqvae.pt").state_dict()
    stage1 = vqvae.load_model(ckpts / "vqvae").state_dict()
    stage2 = vqvae.load_model(ckpts / "vqvae-decoder").state_dict()
    stage3 = vqvae.load_model(ckpts / "vqvae-whole").state_dict()
    assert (ckpts / "vqvae-decoder" / "latest").read_text() == "2"
    assert (ckpts / "vqvae-whole" / "latest").read_text() == "2"
    assert all(torch.equal(stage2[k], v) for k, v in stage1.items() if not k.startswith("dec."))
    assert not all(torch.equal(stage2[k], v) for k, v in stage1.items() if k.startswith("dec."))
    assert all(torch.equal(shipped[k], v) for k, v in stage3.items())
    assert not all(torch.equal(stage3[k], v) for k, v in stage2.items() if k.startswith("enc"))
    # a fourth, the base model's own: from the third, on whole 64 px scenes
    base = vqvae.load_model(pre / "vqvae" / "shapes_vqvae_base.pt").state_dict()
    assert (ckpts / "vqvae-base" / "latest").read_text() == "2"
    assert all(torch.equal(base[k], v) for k, v in vqvae.load_model(ckpts / "vqvae-base").state_dict().items())
    assert not all(torch.equal(base[k], v) for k, v in shipped.items() if k.startswith("enc"))

    # the base GPT trains with GPT_WEIGHT_DECAY (0.1) in both its runs, the SR GPT with 0.01
    def weight_decay(name):
        run = ckpts / name
        it = (run / "latest_checkpointed_iteration.txt").read_text().strip()
        state = torch.load(run / it / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False)
        return max(group["weight_decay"] for group in state["optimizer"]["param_groups"])

    assert weight_decay("cogview-demo-fit") == weight_decay("cogview-demo") == 0.1
    assert weight_decay("cogview-demo-sr") == 0.01
    # the dropout run starts from the first run's last weights, at iteration 0 of its own schedule
    assert (ckpts / "cogview-demo-fit" / "latest_checkpointed_iteration.txt").read_text().strip() == "3"
    assert (ckpts / "cogview-demo" / "latest_checkpointed_iteration.txt").read_text().strip() == "2"
    assert "loaded the weights of" in first.stdout + first.stderr
    with open(pre / "cogview" / "cogview-demo-sr" / "model_config.json") as f:
        sr_config = json.load(f)  # positions count on through [ROI2]; the table starts aligned
    assert sr_config["max_position_embeddings"] == 352 and sr_config["roi2_position_restart"] is False
    assert sr_config["img_size"] == 128  # SR_IMG_SIZE: 128 -> 256 px, whatever the base model's size
    assert os.path.samefile(
        pre / "cogview" / "cogview-demo-sr" / sr_config["img_tokenizer_path"], pre / "vqvae" / "shapes_vqvae.pt"
    )
    with open(pre / "cogview" / "cogview-demo" / "model_config.json") as f:
        config = json.load(f)
    assert config["img_size"] == 64 and config["num_layers"] == 8 and config["max_position_embeddings"] == 96
    assert config["guidance_scale"] == {"image2text": 0.5, "text2image": 0.8} and "guidance_scale" not in sr_config
    assert config["guidance_top_k"] == {"text2image": 2} and "guidance_top_k" not in sr_config  # IMAGE_GUIDANCE_TOP_K
    assert config["caption_rerank"] is True and "caption_rerank" not in sr_config
    assert config["caption_rerank_weight"] == 3 and "caption_rerank_weight" not in sr_config  # CAPTION_RERANK_WEIGHT
    assert config["post_select"] == 8 and "post_select" not in sr_config  # POST_SELECT
    assert sr_config["top_k"] == 1 and "top_k" not in config  # SR_TOP_K
    assert os.path.samefile(
        os.path.join(pre, "cogview", "cogview-demo", config["txt_tokenizer_path"]),
        pre / "text_tokenizer" / "shapes.model",
    )
    assert os.path.samefile(
        pre / "cogview" / "cogview-demo" / config["img_tokenizer_path"], pre / "vqvae" / "shapes_vqvae_base.pt"
    )
    second = subprocess.run(
        ["bash", script],
        env=dict(env, STEPS="tokenizer vqvae vqvae-base gpt-data gpt gpt-dropout sr-data sr"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert second.returncode == 0, second.stderr[-2000:]
    said = [
        line.split(" (")[0]
        for line in second.stderr.splitlines()
        if line.startswith("== train_demo: [") and "stage times" not in line
    ]
    # nothing is rebuilt or trained again
    assert said == [f"== train_demo: [{k}/10] {name}: done already" for k, name in enumerate(stages[:8], 1)], said
    bad = subprocess.run(["bash", script], env=dict(env, STEPS="gpt evaluate"), capture_output=True, text=True)
    assert bad.returncode == 2 and "no stage 'evaluate'" in bad.stderr
    # about a quarter of the super-resolution rows are whole 64 px scenes -> 128 px (SR_LOW_LEVEL)
    from data_utils.datasets import LMDBDataset
    from data_utils.unified_tokenizer import UnifiedTokenizer
    from demo import make_data

    scenes = make_data.sample_scenes(24 // 3, 1234 + 2)  # write_sr_lmdb's scenes for SEED 1234
    half = make_data._Encoder(str(pre / "vqvae" / "shapes_vqvae.pt"), "cpu").encode(scenes, 64)
    sr_rows = LMDBDataset(str(tmp_path / "demo" / "sr.lmdb"))
    rows = [np.asarray(sr_rows[i]).tolist() for i in range(24)]
    boi1 = UnifiedTokenizer(str(pre / "vqvae" / "shapes_vqvae.pt"), str(pre / "text_tokenizer" / "shapes.model"))[
        "[BOI1]"
    ]
    whole = [r[r.index(boi1) + 1 :][:64] == half[i // 3].tolist() for i, r in enumerate(rows)]
    assert 1 <= sum(whole) <= 20, whole
    prompts = tmp_path / "p.txt"
    prompts.write_text("a small red circle in the top left corner on a white background\n")
    out = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "generate_samples.py"),
            "--load",
            str(pre / "cogview" / "cogview-demo"),
            "--device",
            "cpu",
            "--input-source",
            str(prompts),
            "--output-path",
            str(tmp_path / "samples"),
            "--batch-size",
            "1",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    from PIL import Image

    (img,) = (tmp_path / "samples").glob("*/0.jpg")
    assert Image.open(img).size == (64, 64)
    # the exported super-resolution model runs magnify's 3x3 windows: 128 px -> 256 px
    from demo.shapes import render, sample_scenes

    render(sample_scenes(1, 5)[0], 128).save(tmp_path / "low.png")
    (tmp_path / "sr.txt").write_text(
        f"a small red circle in the top left corner on a white background\t{tmp_path / 'low.png'}\n"
    )
    out = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "generate_samples.py"),
            "--load",
            str(pre / "cogview" / "cogview-demo-sr"),
            "--device",
            "cpu",
            "--generation-task",
            "super-resolution",
            "--input-source",
            str(tmp_path / "sr.txt"),
            "--output-path",
            str(tmp_path / "sr_out"),
            "--batch-size",
            "1",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    (img,) = [p for p in (tmp_path / "sr_out").rglob("*.jpg")]
    assert Image.open(img).size[0] == 256
    # GPT_INIT / SR_INIT: new runs start from exported weights (iteration 0), then resume as usual
    for name in ("cogview-demo", "cogview-demo-sr"):
        shutil.rmtree(tmp_path / "demo" / "checkpoints" / name)
        shutil.copytree(pre / "cogview" / name, tmp_path / "init" / name)
    shutil.rmtree(tmp_path / "demo" / "checkpoints" / "cogview-demo-fit")
    cont = subprocess.run(
        ["bash", script],
        env=dict(
            env,
            STEPS="gpt gpt-dropout sr export",
            GPT_ITERS="2",
            GPT_DROPOUT_ITERS="1",
            SR_ITERS="1",
            GPT_INIT=str(tmp_path / "init" / "cogview-demo"),
            SR_INIT=str(tmp_path / "init" / "cogview-demo-sr"),
        ),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert cont.returncode == 0, cont.stderr[-3000:]
    assert (ckpts / "cogview-demo-fit" / "latest_checkpointed_iteration.txt").read_text().strip() == "2"
    assert (pre / "cogview" / "cogview-demo" / "latest_checkpointed_iteration.txt").read_text().strip() == "1"
    assert (pre / "cogview" / "cogview-demo-sr" / "latest_checkpointed_iteration.txt").read_text().strip() == "1"
    # GPT_INIT -> the first run, the first run -> the dropout run, SR_INIT -> the SR run
    assert (cont.stdout + cont.stderr).count("loaded the weights of") == 3
    # a super-resolution checkpoint with another position table (the 264-row model shipped before
    # --magnify-position-init) starts a run with everything but its table
    from arch.checkpoint import load_checkpoint_state, save_checkpoint

    old_sr = tmp_path / "init" / "old-sr"
    state = load_checkpoint_state(str(tmp_path / "init" / "cogview-demo-sr"))
    state["transformer.position_embeddings.weight"] = state["transformer.position_embeddings.weight"][:264]
    save_checkpoint(str(old_sr), 7, state)
    shutil.rmtree(tmp_path / "demo" / "checkpoints" / "cogview-demo-sr")
    again = subprocess.run(
        ["bash", script],
        env=dict(env, STEPS="sr", SR_ITERS="1", SR_INIT=str(old_sr)),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert "position table (264, 192) not loaded" in again.stdout + again.stderr


def test_eval_caption_flags_score_each_attribute():
    from demo import evaluate
    from demo.shapes import parse_caption

    truth = parse_caption("a small red star in the top left corner on a white background")
    got = parse_caption("a small red triangle in the top left corner on a white background")
    flags = evaluate.caption_flags(truth, got)
    assert flags == {
        "parsed": True,
        "all": False,
        "background": True,
        "colour": True,
        "shape": False,
        "position": True,
        "size": True,
    }
    assert not any(evaluate.caption_flags(truth, None).values())
    pair = parse_caption("a red star above a blue circle on a black background")
    swapped = parse_caption("a red star below a blue circle on a black background")
    assert evaluate.caption_flags(pair, swapped) == {
        "parsed": True,
        "all": False,
        "background": True,
        "colours": True,
        "shapes": True,
        "relation": False,
    }
    assert not evaluate.caption_flags(pair, truth)["colours"]
    # the same picture described from the other object is right in every attribute
    other_way = parse_caption("a blue circle below a red star on a black background")
    assert other_way == pair.mirrored() and other_way.mirrored() == pair
    assert all(evaluate.caption_flags(pair, other_way).values())
    wrong_shape = parse_caption("a blue square below a red star on a black background")
    assert evaluate.caption_flags(pair, wrong_shape) == {
        "parsed": True,
        "all": False,
        "background": True,
        "colours": True,
        "shapes": False,
        "relation": True,
    }
    assert truth.mirrored() == truth
