"""generate_samples.py end to end on tiny random models: every task, outputs, errors."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from PIL import Image

import generate_samples
import generation.generator

from .conftest import ROOT
from .e2e_assets import make_all


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return make_all(str(tmp_path_factory.mktemp("assets")))


def run(assets, tmp_path, task, lines, *extra):
    """Run generate_samples.main on these lines; each call writes to a fresh output folder."""
    n = len(list(tmp_path.glob("out*")))
    source = tmp_path / f"input{n}.txt"
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / f"out{n}"
    argv = [
        "--load",
        assets["ckpt"],
        "--device",
        "cpu",
        "--generation-task",
        task,
        "--input-source",
        str(source),
        "--output-path",
        str(out),
        "--top_k",
        "10",
        "--seed",
        "3",
        *extra,
    ]
    return generate_samples.main(argv), out


def test_text2image_writes_numbered_images_and_concat(assets, tmp_path, capsys):
    code, out = run(
        assets,
        tmp_path,
        "text2image",
        ["a red circle", "a blue square"],
        "--batch-size",
        "3",
        "--max-inference-batch-size",
        "2",
    )
    assert code == 0
    folders = sorted(os.listdir(out))
    assert folders == ["a_blue_square", "a_red_circle"]
    for folder in folders:
        files = sorted(os.listdir(out / folder))
        assert files == ["0.jpg", "1.jpg", "2.jpg", "concat.jpg"]
        assert Image.open(out / folder / "0.jpg").size == (64, 64)
    assert "per image" in capsys.readouterr().out


def test_with_id_and_debug(assets, tmp_path):
    code, out = run(assets, tmp_path, "text2image", ["cat7\ta red circle"], "--with-id", "--batch-size", "2")
    assert code == 0 and sorted(os.listdir(out / "cat7")) == ["0.jpg", "1.jpg", "concat.jpg"]
    code, out = run(assets, tmp_path, "text2image", ["a red/circle"], "--debug", "--batch-size", "2")
    files = os.listdir(out)
    assert code == 0 and len(files) == 1 and files[0].startswith("a_redcircle-") and files[0].endswith(".jpg")


def test_image2text_prints_captions(assets, tmp_path, capsys):
    code, _ = run(assets, tmp_path, "image2text", [assets["images"][0]], "--batch-size", "2")
    out = capsys.readouterr().out
    assert code == 0 and "line 1 sample 0:" in out and "line 1 sample 1:" in out


def test_caption_rerank_prints_captions_best_first(assets, tmp_path, capsys, monkeypatch):
    """--caption-rerank prints the sampled captions ranked by log p(image | caption) of the
    query's own codes; scores descend and the captions are the unranked ones reordered."""
    import re

    code, _ = run(assets, tmp_path, "image2text", [assets["images"][0]], "--batch-size", "4")
    plain = re.findall(r"^line 1 sample \d: (.*)$", capsys.readouterr().out, re.M)
    calls = []
    real = generate_samples.Generator.rank_captions

    def spy(self, ids, caps):
        calls.append((self, list(ids), real(self, ids, caps)))
        return calls[-1][2]

    monkeypatch.setattr(generate_samples.Generator, "rank_captions", spy)
    code2, _ = run(assets, tmp_path, "image2text", [assets["images"][0]], "--batch-size", "4", "--caption-rerank")
    out = capsys.readouterr().out
    ranked = re.findall(r"^line 1 sample \d: (.*)$", out, re.M)
    scores = [
        float(x)
        for x in re.search(r"^line 1: ranked by log p\(image \| caption\): (.*)$", out, re.M).group(1).split(", ")
    ]
    assert code == code2 == 0 and len(ranked) == 4 and sorted(ranked) == sorted(plain)
    assert scores == sorted(scores, reverse=True)
    # each score is log p(codes | caption) of the query's own image codes
    from generation import image_given_text_score

    gen, ids, pairs = calls[0]
    t = gen.tokenizer
    codes = ids[ids.index(t["[BOI1]"]) + 1 : ids.index(t["[EOI1]"])]
    assert len(codes) == 64 and [c for _, c in pairs] == ranked
    rows = [[t["[ROI1]"], *t.EncodeAsIds(c), t["[TINY]"], t["[BOI1]"], *codes] for c in ranked]
    expected = image_given_text_score(gen.model, rows, t["[BOI1]"], t.num_image_tokens).tolist()
    assert scores == pytest.approx(expected, abs=0.01)


def test_caption_rerank_weight_adds_the_caption_likelihood(assets, tmp_path, capsys):
    """--caption-rerank-weight W ranks by log p(image | caption) + W log p(caption | image),
    the second term scored on the query's own image->text row with each caption."""
    import re

    from generation import image_given_text_score, inverse_prompt_score
    from generation.queries import task_template

    code, _ = run(
        assets,
        tmp_path,
        "image2text",
        [assets["images"][0]],
        "--batch-size",
        "4",
        "--caption-rerank",
        "--caption-rerank-weight",
        "2.5",
    )
    out = capsys.readouterr().out
    head = re.search(
        r"^line 1: ranked by log p\(image \| caption\) \+ 2\.5 log p\(caption \| image\): (.*)$", out, re.M
    )
    assert code == 0 and head
    scores = [float(x) for x in head.group(1).split(", ")]
    ranked = re.findall(r"^line 1 sample \d: (.*)$", out, re.M)
    assert len(ranked) == 4 and scores == sorted(scores, reverse=True)
    # recompute both terms row by row with the same model and query
    argv = ["--load", assets["ckpt"], "--device", "cpu"]
    args = generate_samples.get_args(argv)
    cfg = generate_samples.load_config(args, argv)
    tok, model = generate_samples.setup(cfg)
    gen = generate_samples.Generator(cfg, tok, model)
    ids = gen.parse(task_template("image2text", gen.grid).format(assets["images"][0]))
    codes = ids[ids.index(tok["[BOI1]"]) + 1 : ids.index(tok["[EOI1]"])]
    for caption, score in zip(ranked, scores):
        text = tok.EncodeAsIds(caption)
        image_term = image_given_text_score(
            model, [[tok["[ROI1]"], *text, tok["[TINY]"], tok["[BOI1]"], *codes]], tok["[BOI1]"], tok.num_image_tokens
        )[0]
        row = torch.tensor([[tok["[TINY]"], tok["[BOI1]"], *codes, tok["[EOI1]"], tok["[ROI1]"], *text]])
        caption_term = inverse_prompt_score(model, row, tok["[ROI1]"], tok.num_image_tokens)[0]
        assert score == pytest.approx(float(image_term + 2.5 * caption_term), abs=0.01)


def test_post_selection_scores_file(assets, tmp_path):
    line = "a red circle\t" + "\t".join(assets["images"])
    code, out = run(assets, tmp_path, "post-selection", [line])
    text = (out / "scores_rank_0.txt").read_text().splitlines()
    assert code == 0 and text[0] == line and len(text[1].split("\t")) == 3
    assert all(float(s) < 0 for s in text[1].split("\t"))


def test_super_resolution_doubles_the_side(assets, tmp_path):
    code, out = run(
        assets,
        tmp_path,
        "super-resolution",
        ["a red circle\t" + assets["images"][0]],
        "--max-position-embeddings",
        "400",
        "--batch-size",
        "1",
    )
    files = os.listdir(out)
    assert code == 0 and len(files) == 1 and Image.open(out / files[0]).size == (128, 128)


def test_low_level_super_resolution(assets, tmp_path):
    code, out = run(
        assets, tmp_path, "low-level super-resolution", ["a red circle\t" + assets["images"][1]], "--batch-size", "2"
    )
    folder = out / "a_red_circle"
    assert code == 0 and sorted(os.listdir(folder)) == ["0.jpg", "1.jpg", "concat.jpg"]
    assert Image.open(folder / "0.jpg").size == (64, 64)


@pytest.mark.parametrize("task", ["super-resolution", "low-level super-resolution"])
def test_sr_text_length_pads_every_query(assets, tmp_path, monkeypatch, task):
    """--sr-text-length (model_config.json's sr_text_length) pads the caption with [PAD], so
    the low-res codes start at the same index for every caption, as in the training rows."""
    from data_utils.unified_tokenizer import UnifiedTokenizer

    tok = UnifiedTokenizer(assets["vqvae"], assets["sp"])
    fed = []
    real = generation.generator.generate_in_chunks

    def spy(model, ids, *args, **kwargs):
        fed.append(list(ids))
        return real(model, ids, *args, **kwargs)

    monkeypatch.setattr(generation.generator, "generate_in_chunks", spy)
    captions = ["a red circle", "a big blue square on the left"]
    lines = [c + "\t" + assets["images"][0] for c in captions]
    code, _ = run(
        assets, tmp_path, task, lines, "--max-position-embeddings", "400", "--batch-size", "1", "--sr-text-length", "24"
    )
    assert code == 0 and fed
    for ids in fed:  # [ROI1], 24 text ids, the size token, [BOI1], the low-res codes
        assert ids[0] == tok["[ROI1]"] and ids.index(tok["[BOI1]"]) == 26
        assert ids[27] < tok.num_image_tokens
    texts = {tuple(ids[1:25]) for ids in fed}
    expected = {tuple(tok.EncodeAsIds(c)) + (tok["[PAD]"],) * (24 - len(tok.EncodeAsIds(c))) for c in captions}
    assert texts == expected


def test_sr_text_length_comes_from_model_config(assets, tmp_path, monkeypatch):
    """A model trained with --sr-text-length records it; generation pads without the flag."""
    import json
    import shutil

    ckpt = str(tmp_path / "sr_ckpt")
    shutil.copytree(assets["ckpt"], ckpt)
    config_path = os.path.join(ckpt, "model_config.json")
    with open(config_path) as f:
        config = json.load(f)
    for key in ("img_tokenizer_path", "txt_tokenizer_path"):  # keep them valid from the copy
        config[key] = os.path.relpath(os.path.join(assets["ckpt"], config[key]), ckpt)
    config["sr_text_length"] = 24
    with open(config_path, "w") as f:
        json.dump(config, f)
    fed = []
    real = generation.generator.generate_in_chunks
    monkeypatch.setattr(
        generation.generator,
        "generate_in_chunks",
        lambda model, ids, *a, **k: fed.append(list(ids)) or real(model, ids, *a, **k),
    )
    code, _ = run(
        dict(assets, ckpt=ckpt),
        tmp_path,
        "low-level super-resolution",
        ["a red circle\t" + assets["images"][0]],
        "--batch-size",
        "1",
    )
    from data_utils.unified_tokenizer import UnifiedTokenizer

    tok = UnifiedTokenizer(assets["vqvae"], assets["sp"])
    assert code == 0 and len(fed) == 1
    assert fed[0].index(tok["[BOI1]"]) == 26 and fed[0][1 + len(tok.EncodeAsIds("a red circle"))] == tok["[PAD]"]


@pytest.mark.parametrize(
    "task,line,flag,expected",
    [
        ("image2text", "IMAGE", [], (1.0, 3)),  # the checkpoint's values for the task
        ("text2image", "a red circle", [], None),  # none recorded for this task: off
        ("image2text", "IMAGE", ["--guidance-scale", "0.25"], (0.25, 3)),  # the flag wins
        ("image2text", "IMAGE", ["--guidance-top-k", "0"], (1.0, 0)),
        ("text2image", "a red circle", ["--guidance-scale", "2"], (2.0, 0)),
        ("text2image", "a red circle", ["--guidance-scale", "2", "--guidance-top-k", "4"], (2.0, 4)),
    ],
)
def test_guidance_scale_per_task_from_model_config(assets, tmp_path, monkeypatch, task, line, flag, expected):
    """model_config.json's {"guidance_scale": {task: s}, "guidance_top_k": {task: k}} set
    --guidance-scale / --guidance-top-k per task; the prior starts at the size token
    (text2image) or [ROI1] (image2text)."""
    import json
    import shutil

    ckpt = str(tmp_path / "guided_ckpt")
    shutil.copytree(assets["ckpt"], ckpt)
    config_path = os.path.join(ckpt, "model_config.json")
    with open(config_path) as f:
        config = json.load(f)
    for key in ("img_tokenizer_path", "txt_tokenizer_path"):
        config[key] = os.path.relpath(os.path.join(assets["ckpt"], config[key]), ckpt)
    config["guidance_scale"] = {"image2text": 1.0}
    config["guidance_top_k"] = {"image2text": 3}
    with open(config_path, "w") as f:
        json.dump(config, f)
    seen = []
    real = generation.generator.generate_in_chunks
    monkeypatch.setattr(
        generation.generator,
        "generate_in_chunks",
        lambda model, ids, *a, **k: seen.append((list(ids), k.get("guidance"))) or real(model, ids, *a, **k),
    )
    line = assets["images"][0] if line == "IMAGE" else line
    code, _ = run(dict(assets, ckpt=ckpt), tmp_path, task, [line], "--batch-size", "2", *flag)
    assert code == 0 and len(seen) == 1
    ids, guidance = seen[0]
    if expected is None:
        assert guidance is None
    else:
        from data_utils.unified_tokenizer import UnifiedTokenizer

        tok = UnifiedTokenizer(assets["vqvae"], assets["sp"])
        # [ROI1] text | [TINY] [BOI1] codes;  [TINY] [BOI1] 64 codes [EOI1] | [ROI1] caption
        first = 1 + len(tok.EncodeAsIds(line)) if task == "text2image" else 2 + 64 + 1
        assert ids[first] == (tok["[TINY]"] if task == "text2image" else tok["[ROI1]"])
        assert (guidance.scale, guidance.top_k, guidance.start, list(guidance.prefix)) == (*expected, first, [])


def test_sr_text_length_refuses_a_longer_caption(assets, tmp_path, capsys):
    code, _ = run(
        assets,
        tmp_path,
        "super-resolution",
        ["a red circle\t" + assets["images"][0]],
        "--max-position-embeddings",
        "400",
        "--sr-text-length",
        "1",
    )
    err = capsys.readouterr().err
    assert code == 1 and "--sr-text-length" in err and "shorten the caption" in err


def test_inpainting_keeps_codes_outside_the_region(assets, tmp_path):
    code, out = run(
        assets, tmp_path, "inpainting", ["a red circle\t" + assets["images"][2] + "\t0.5,0,1,1"], "--batch-size", "2"
    )
    assert code == 0 and sorted(os.listdir(out / "a_red_circle")) == ["0.jpg", "1.jpg", "concat.jpg"]


def test_bad_lines_are_reported_and_the_rest_runs(assets, tmp_path, capsys):
    lines = [
        "a red circle",  # 1 ok
        "",  # 2 blank: skipped, not a query
        "[FOO] a red circle",  # 3 unknown command token
        "a [MASK]*x circle",  # 4 bad mask count
        "word " * 400,  # 5 too long
        "a blue square",
    ]  # 6 ok
    code, out = run(assets, tmp_path, "text2image", lines, "--batch-size", "1")
    err = capsys.readouterr().err
    assert code == 1
    assert "line 2:" not in err and "3 line(s) failed" in err
    assert "line 3: unknown command token [FOO]" in err
    assert "line 4:" in err and "[MASK]*x" in err
    assert "line 5:" in err and "positions" in err
    assert sorted(os.listdir(out)) == ["a_blue_square", "a_red_circle"]


def test_bad_images_and_fields(assets, tmp_path, capsys):
    not_image = tmp_path / "notes.png"
    not_image.write_text("hello")
    lines = [str(tmp_path / "missing.png"), str(not_image), assets["images"][0]]
    code, _ = run(assets, tmp_path, "image2text", lines)
    err = capsys.readouterr().err
    assert code == 1 and "line 1:" in err and "missing.png" in err and "line 2:" in err and "notes.png" in err
    code, _ = run(assets, tmp_path, "post-selection", ["just text"])
    assert code == 1 and "no image given" in capsys.readouterr().err
    code, _ = run(assets, tmp_path, "text2image", ["no tab here"], "--with-id")
    assert code == 1 and "has no TAB" in capsys.readouterr().err


def test_bad_checkpoint_is_one_line(assets, tmp_path, capsys):
    code = generate_samples.main(
        [
            "--load",
            str(tmp_path / "nope"),
            "--device",
            "cpu",
            "--input-source",
            "interactive",
            "--img-tokenizer-path",
            assets["vqvae"],
            "--txt-tokenizer-path",
            assets["sp"],
        ]
    )
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "nope" in err


@pytest.mark.slow
def test_interactive_mode_from_stdin(assets, tmp_path):
    cmd = [
        sys.executable,
        os.path.join(ROOT, "generate_samples.py"),
        "--load",
        assets["ckpt"],
        "--device",
        "cpu",
        "--input-source",
        "interactive",
        "--output-path",
        str(tmp_path / "out"),
        "--batch-size",
        "1",
    ]
    result = subprocess.run(
        cmd, input="a red circle\n[FOO] bad\nstop\nnever run\n", capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 1, result.stderr
    assert "line 2: unknown command token" in result.stderr
    assert os.listdir(tmp_path / "out") == ["a_red_circle"]
    result = subprocess.run(cmd, input="a blue square\n", capture_output=True, text=True, timeout=300)  # EOF ends
    assert result.returncode == 0, result.stderr


SCRIPTS = {
    "text2image.sh": ("a red circle", []),
    "image2text.sh": ("{img}", []),
    "post_selection.sh": ("a red circle\t{img}\t{img}", []),
    "super_resolution.sh": ("a red circle\t{img}", ["--max-position-embeddings", "400"]),
    "low_level_super_resolution.sh": ("a red circle\t{img}", []),
    "inpainting.sh": ("a red circle\t{img}\t0,0,0.5,0.5", []),
}


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_scripts_run_on_cpu_with_checkpoint_config(assets, tmp_path, script):
    line, extra = SCRIPTS[script]
    source = tmp_path / "in.txt"
    source.write_text(line.format(img=assets["images"][0]) + "\n")
    env = dict(
        os.environ,
        CHECKPOINT_PATH=assets["ckpt"],
        INPUT_SOURCE=str(source),
        OUTPUT_PATH=str(tmp_path / "o"),
        BATCH_SIZE="2",
        MAX_INFERENCE_BATCH_SIZE="2",
        CUDA_VISIBLE_DEVICES="",
    )
    result = subprocess.run(
        ["bash", os.path.join(ROOT, "scripts", script), "--top_k", "5", *extra],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "sample 0:" in result.stdout or os.listdir(tmp_path / "o")


def test_script_without_any_checkpoint_says_what_to_do(tmp_path):
    env = dict(os.environ, CHECKPOINT_PATH=str(tmp_path / "absent"))
    result = subprocess.run(
        ["bash", os.path.join(ROOT, "scripts", "text2image.sh")], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1 and "train_demo.sh" in result.stderr


def test_roi2_position_restart_comes_from_the_checkpoint_config(assets, tmp_path, monkeypatch):
    """model_config.json's roi2_position_restart (written by training) reaches the sampler;
    the flag wins; a checkpoint that says nothing keeps the original's restart."""
    import json
    import shutil

    ckpt = tmp_path / "ckpt"
    shutil.copytree(assets["ckpt"], ckpt)
    config = json.loads((ckpt / "model_config.json").read_text())
    config.update(img_tokenizer_path=os.path.abspath(assets["vqvae"]), txt_tokenizer_path=os.path.abspath(assets["sp"]))
    fed = []
    real = generation.generator.generate_in_chunks

    def spy(*args, **kwargs):
        fed.append(kwargs["roi2_restart"])
        return real(*args, **kwargs)

    monkeypatch.setattr(generation.generator, "generate_in_chunks", spy)
    line = ["a red circle\t" + assets["images"][1]]
    for value, extra, expected in ((None, (), True), (False, (), False), (False, ("--roi2-position-restart",), True)):
        if value is None:
            config.pop("roi2_position_restart", None)
        else:
            config["roi2_position_restart"] = value
        (ckpt / "model_config.json").write_text(json.dumps(config))
        argv = [
            "--load",
            str(ckpt),
            "--device",
            "cpu",
            "--generation-task",
            "low-level super-resolution",
            "--input-source",
            str(tmp_path / "in.txt"),
            "--output-path",
            str(tmp_path / "out"),
            "--batch-size",
            "1",
            *extra,
        ]
        (tmp_path / "in.txt").write_text(line[0] + "\n")
        assert generate_samples.main(argv) == 0
        assert fed[-1] is expected


def test_post_select_keeps_the_best_draws(assets, tmp_path, capsys):
    code, out = run(assets, tmp_path, "text2image", ["a red circle"], "--batch-size", "2", "--post-select", "4")
    assert code == 0
    said = capsys.readouterr().out
    assert "line 1: best 2 of 4 by post-selection (log p(text | image)): " in said
    scores = [float(s) for s in said.split("(log p(text | image)): ")[1].splitlines()[0].split(", ")]
    assert len(scores) == 2 and scores[0] >= scores[1]
    assert sorted(p.name for p in (out / "a_red_circle").glob("?.jpg")) == ["0.jpg", "1.jpg"]


@pytest.mark.parametrize(
    "config,topk,expected",
    [({"top_k": 1}, None, None), ({}, None, "200"), ({"top_k": 1}, "7", "7")],
)
def test_scripts_take_top_k_from_the_checkpoint_unless_topk_is_set(tmp_path, config, topk, expected):
    """TOPK unset: the checkpoint's recorded top_k (no --top_k passed), else the original's 200."""
    import json

    (tmp_path / "model_config.json").write_text(json.dumps(config))
    snippet = (
        'python3() { printf "%s\\n" "$@"; }; '  # prints the command line instead of running it
        f'source "{ROOT}/scripts/generation_common.sh"; resolve_checkpoint x y; run_generate text2image'
    )
    env = dict(os.environ, CHECKPOINT_PATH=str(tmp_path))
    env.pop("TOPK", None)
    if topk:
        env["TOPK"] = topk
    args = subprocess.run(["bash", "-c", snippet], env=env, capture_output=True, text=True, timeout=60).stdout.split()
    assert (args[args.index("--top_k") + 1] if "--top_k" in args else None) == expected
