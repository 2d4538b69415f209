"""Unified tokenizer, templates and sentencepiece training against the original's outputs.

cases.json was produced by the original UnifiedTokenizer with a FakeTokenizer of 8192
image tokens and cog-pretrain.model; the model is read from the fixtures folder.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from data_utils.image_tokenizers import FakeTokenizer, sqrt_int
from data_utils.sp_tokenizer import (
    SentencePieceTokenizer,
    TextTokenizerError,
    default_txt_tokenizer_path,
    train_text_tokenizer,
)
from data_utils.templates import TASK_TEMPLATES, Code2CodeTemplate, PureTextTemplate, TextCodeTemplate, concat_codes
from data_utils.unified_tokenizer import COMMAND_TOKENS, UnifiedTokenizer

from .conftest import fixture_path, load_fixture_json


@pytest.fixture(scope="module")
def cases():
    return load_fixture_json("tokenizer", "cases.json")


@pytest.fixture(scope="module")
def tok():
    model = fixture_path("tokenizer", "cog-pretrain.model")
    return UnifiedTokenizer(None, txt_tokenizer_path=model, img_tokenizer_num_tokens=8192)


def test_layout(tok, cases):
    assert tok.num_image_tokens == cases["num_image_tokens"]
    assert tok.num_text_tokens == cases["num_text_tokens"] == cases["sentencepiece_num_pieces"]
    assert tok.num_command_tokens == 27
    assert len(tok) == tok.num_tokens == cases["num_tokens"]
    assert tok.padded_vocab_size(128, 1) == cases["padded_vocab_size_divisible_by_128"]
    assert tok.padded_vocab_size(64, 2) == 58240
    assert tok.command_tokens == cases["command_tokens"]
    assert list(cases["command_tokens"]) == list(COMMAND_TOKENS)
    for name, idx in cases["command_tokens"].items():
        assert tok[name] == idx
    with pytest.raises(KeyError, match="unknown command token"):
        tok["[NOPE]"]


def test_sentencepiece_special(tok, cases):
    sp = tok.txt_tokenizer
    special = cases["sentencepiece_special"]
    assert [sp.IdToPiece(i) for i in range(len(special["first_pieces"]))] == special["first_pieces"]
    assert (sp.sp.unk_id(), sp.sp.bos_id(), sp.sp.eos_id(), sp.sp.pad_id()) == (
        special["unk_id"],
        special["bos_id"],
        special["eos_id"],
        special["pad_id"],
    )


def test_encode_cases(tok, cases):
    assert len(cases["encode"]) == 20
    for case in cases["encode"]:
        text = case["text"]
        assert tok.EncodeAsIds(text) == case["ids"], text
        assert tok(text) == case["ids"], text
        assert tok.txt_tokenizer.EncodeAsPieces(text) == case["sp_pieces"], text
        raw = [i - 8192 for i in case["ids"]]
        assert tok.txt_tokenizer.DecodeIds(raw) == case["decoded"], text


def test_encode_process_fn(tok):
    assert tok.EncodeAsIds("A CAT", process_fn=str.lower) == tok.EncodeAsIds("a cat")


def test_parse_query_cases(tok, cases):
    assert len(cases["parse_query"]) == 12
    for case in cases["parse_query"]:
        if "error" in case:
            assert case["error"] == "ValueError"
            with pytest.raises(ValueError, match="not an integer count"):
                tok.parse_query(case["query"])
            continue
        ids = tok.parse_query(case["query"])
        assert ids == case["ids"], case["query"]
        texts, images = tok.DecodeIds([i for i in ids if i >= 0])
        assert texts == case["decode_ids_of_nonnegative"], case["query"]
        assert images == []


@pytest.mark.parametrize("query", ["[MASK]*0", "[ROI1] a [MASK]*-3", "[MASK]*x"])
def test_parse_query_bad_mask_count(tok, query):
    with pytest.raises(ValueError, match=r"\[MASK\]"):
        tok.parse_query(query)


@pytest.mark.parametrize("query", ["[ROI1] [Image", "[Image]", "[Image]a]b.png", "[Imagex]a.png", "[Image-1]a.png"])
def test_parse_query_bad_image_part(tok, query):
    with pytest.raises(ValueError, match=r"\[Image"):
        tok.parse_query(query)


def test_parse_query_image_without_vqvae(tok):
    with pytest.raises(ValueError, match="no VQ-VAE"):
        tok.parse_query("[BASE] [BOI1] [Image]some.png")


class _GridImageTokenizer(FakeTokenizer):
    """Stand-in VQ-VAE: 'reads' an image as 8x8 codes derived from its path, so the
    [Image]/[ImageN] handling of parse_query can be checked without a model."""

    def read_img(self, path, img_size=256):
        return torch.full((1, 3, img_size, img_size), float(len(path)))

    def EncodeAsIds(self, img):
        side = img.shape[-1] // 32
        base = int(img[0, 0, 0, 0])
        return torch.arange(side * side).view(1, -1) + base

    def DecodeIds(self, codes):
        return torch.as_tensor(list(codes)).view(1, sqrt_int(len(codes)), -1)


def test_parse_query_image_parts(tok):
    tok2 = UnifiedTokenizer(None, txt_tokenizer_path=tok.txt_tokenizer, img_tokenizer_num_tokens=8192)
    tok2.img_tokenizer = _GridImageTokenizer(8192)
    codes = list(range(5, 5 + 64))
    assert tok2.parse_query("[BASE] [BOI1] [Image]a.png [EOI1]", img_size=256) == [
        tok["[BASE]"],
        tok["[BOI1]"],
    ] + codes + [tok["[EOI1]"]]
    assert tok2.parse_query("[Image10]a.png", img_size=256) == codes[:10] + [-1] * 54
    assert tok2.parse_query("[Image0]a.png", img_size=256) == [-1] * 64
    assert tok2.parse_query("[Image999]a.png", img_size=256) == codes
    assert tok2.parse_query("x [Image]a.png", img_size=128) == tok.EncodeAsIds("x") + list(range(5, 5 + 16))
    # images decode through the image tokenizer as square grids, flushed by [EOI*]
    texts, images = tok2.DecodeIds(tok2.parse_query("[BOI1] [Image]a.png [EOI1] cat"))
    assert texts == ["[BOI1]", "[EOI1]", "cat"]
    assert len(images) == 1 and images[0].shape == (1, 8, 8)


def test_generation_templates(cases):
    assert TASK_TEMPLATES == cases["generation_templates"]


def test_decode_cases(tok, cases):
    for case in cases["decode"]:
        texts, images = tok.DecodeIds(case["ids"])
        assert texts == case["texts"]
        assert len(images) == case["n_images"]


def test_decode_fake_images_return_codes(tok):
    ids = [tok["[BASE]"], tok["[BOI1]"], 3, 4, 5, 6, tok["[EOI1]"], 7, 8]
    texts, images = tok.DecodeIds(np.array(ids))
    assert texts == ["[BASE]", "[BOI1]", "[EOI1]"]
    assert images == [[3, 4, 5, 6], [7, 8]]
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.DecodeIds([len(tok)])


def test_templates(tok, cases):
    t = cases["templates"]
    c64, c256 = t["wrap_code_64_idx1"]["code"], t["wrap_code_256_idx2"]["code"]
    assert tok.wrap_code(c64) == t["wrap_code_64_idx1"]["ids"]
    assert tok.wrap_code(list(c256), idx=2) == t["wrap_code_256_idx2"]["ids"]
    wrapped = tok.wrap_code(np.array(c64), idx=3)
    assert isinstance(wrapped, np.ndarray) and wrapped.tolist() == t["wrap_code_64_idx3_numpy"]
    wrapped = tok.wrap_code(torch.tensor(c64), idx=3)
    assert isinstance(wrapped, torch.Tensor) and wrapped.tolist() == t["wrap_code_64_idx3_numpy"]

    case = t["TextCodeTemplate_str"]
    out = TextCodeTemplate(case["text"], case["code"], tokenizer=tok)
    assert list(out) == case["ids"]
    out = TextCodeTemplate(case["text"], np.array(case["code"]), tokenizer=tok)
    assert isinstance(out, np.ndarray) and out.tolist() == case["ids"]

    case = t["TextCodeTemplate_ids"]
    out = TextCodeTemplate(case["text_ids"], case["code"], tokenizer=tok)
    assert np.asarray(out).tolist() == case["ids"]

    case = t["Code2CodeTemplate"]
    out = Code2CodeTemplate(case["text"], case["code0"], case["code1"], tokenizer=tok)
    assert list(out) == case["ids"]

    case = t["PureTextTemplate"]
    assert PureTextTemplate(case["text"], tokenizer=tok) == case["ids"]


def test_wrap_code_errors(tok):
    with pytest.raises(ValueError, match="square"):
        tok.wrap_code(list(range(10)))
    with pytest.raises(ValueError, match="size token"):
        tok.wrap_code(list(range(9)))
    with pytest.raises(ValueError, match="image index"):
        tok.wrap_code(list(range(64)), idx=4)


def test_concat_codes_types():
    assert concat_codes([1, 2], [3]) == [1, 2, 3]
    out = concat_codes([1], np.array([2, 3]))
    assert isinstance(out, np.ndarray) and out.tolist() == [1, 2, 3]
    out = concat_codes([1], np.array([2]), torch.tensor([3]))
    assert isinstance(out, torch.Tensor) and out.tolist() == [1, 2, 3]


def test_tokenizer_needs_image_side(tok):
    with pytest.raises(ValueError, match="img-tokenizer"):
        UnifiedTokenizer(None, txt_tokenizer_path=tok.txt_tokenizer)


def test_image_encoding_without_vqvae(tok):
    with pytest.raises(ValueError, match="no VQ-VAE"):
        tok(torch.zeros(3, 64, 64))


def test_missing_or_invalid_model(tmp_path):
    missing = tmp_path / "nope.model"
    with pytest.raises(TextTokenizerError, match="nope.model"):
        SentencePieceTokenizer(str(missing))
    bad = tmp_path / "bad.model"
    bad.write_text("not a model")
    with pytest.raises(TextTokenizerError, match="bad.model"):
        SentencePieceTokenizer(str(bad))
    with pytest.raises(TextTokenizerError, match="nope.model"):
        UnifiedTokenizer(None, txt_tokenizer_path=str(missing), img_tokenizer_num_tokens=16)


def test_default_path_resolution(tmp_path):
    assert default_txt_tokenizer_path(str(tmp_path)) is None
    own = tmp_path / "pretrained" / "text_tokenizer"
    own.mkdir(parents=True)
    (own / "text.model").write_bytes(b"x")
    assert default_txt_tokenizer_path(str(tmp_path)) == str(own / "text.model")
    released = tmp_path / "pretrained" / "chinese_sentencepiece"
    released.mkdir(parents=True)
    (released / "cog-pretrain.model").write_bytes(b"x")
    assert default_txt_tokenizer_path(str(tmp_path)) == str(released / "cog-pretrain.model")


def _english_corpus(path, lines=400):
    words = (
        "a the red blue green small big cat dog bird house tree river mountain photo "
        "painting of on under over sitting flying near beautiful old young"
    ).split()
    rng = random.Random(0)
    with open(path, "w") as f:
        for _ in range(lines):
            f.write(" ".join(rng.choice(words) for _ in range(rng.randint(3, 12))) + "\n")


def test_train_text_tokenizer_round_trip(tmp_path):
    corpus = tmp_path / "captions.txt"
    _english_corpus(corpus)
    path = train_text_tokenizer(str(corpus), str(tmp_path / "tok" / "en"), vocab_size=120)
    sp = SentencePieceTokenizer(path)
    assert sp.num_tokens == 120
    assert [sp.IdToPiece(i) for i in range(4)] == ["<unk>", "<s>", "</s>", "<n>"]
    text = "a beautiful cat sitting under the old tree"
    assert sp.DecodeIds(sp.EncodeAsIds(text)) == text
    tok = UnifiedTokenizer(None, txt_tokenizer_path=path, img_tokenizer_num_tokens=64)
    assert len(tok) == 64 + 120 + 27 and tok["[PAD]"] == 184
    ids = tok.parse_query(f"[ROI1] {text} [BASE] [BOI1] [MASK]*4")
    assert ids[0] == tok["[ROI1]"] and ids[-4:] == [-1] * 4
    assert tok.DecodeIds([i for i in ids if i >= 0])[0] == ["[ROI1]", text, "[BASE]", "[BOI1]"]


def test_train_text_tokenizer_cli(tmp_path, capsys):
    from data_utils.train_text_tokenizer import main

    corpus = tmp_path / "captions.txt"
    _english_corpus(corpus)
    prefix = tmp_path / "cli"
    assert (
        main(
            [
                "--input",
                str(corpus),
                "--output-prefix",
                str(prefix),
                "--vocab-size",
                "100",
                "--character-coverage",
                "1.0",
            ]
        )
        == 0
    )
    assert (tmp_path / "cli.model").is_file()
    assert "cli.model" in capsys.readouterr().out
    assert main(["--input", str(tmp_path / "missing.txt"), "--output-prefix", str(prefix), "--vocab-size", "100"]) == 1
    assert "missing.txt" in capsys.readouterr().err


def test_vqvae_image_tokenizer(tok):
    """With a real VQ-VAE: [Image]/[ImageN] parts and DecodeIds go through the model."""
    pytest.importorskip("vqvae")
    expected = np.load(fixture_path("vqvae", "expected.npz"))
    img0 = fixture_path("vqvae", "images", "img0.png")
    img1 = fixture_path("vqvae", "images", "img1.png")
    vtok = UnifiedTokenizer(fixture_path("vqvae", "vqvae.pt"), txt_tokenizer_path=tok.txt_tokenizer)
    assert vtok.num_image_tokens == 64 and len(vtok) == 64 + 50000 + 27
    assert vtok["[PAD]"] == 50064
    ids = vtok.parse_query(f"[ROI1] 猫 [TINY] [BOI1] [Image]{img0} [EOI1]", img_size=64)
    assert ids[:2] == [vtok["[ROI1]"], tok.txt_tokenizer.EncodeAsIds("猫")[0] + 64]
    assert ids[4:-1] == expected["codes"][0].tolist()
    ids1 = vtok.parse_query(f"[Image10]{img1}", img_size=64)
    assert ids1 == expected["codes"][1][:10].tolist() + [-1] * 54
    texts, images = vtok.DecodeIds(ids)
    assert texts == ["[ROI1]", "猫", "[TINY]", "[BOI1]", "[EOI1]"]
    assert len(images) == 1
    np.testing.assert_allclose(images[0].numpy(), expected["decoded"][:1], atol=1e-5)
    texts, images = vtok.DecodeIds(ids + [3, 4, 5])  # trailing run: not a square grid
    assert len(images) == 2 and images[1] == [3, 4, 5]
    normalised = torch.tensor(np.load(fixture_path("vqvae", "inputs.npz"))["images_normalised"])
    assert vtok(normalised[0]).tolist() == expected["codes"][:1].tolist()
    with pytest.raises(ValueError, match="nonexistent.png"):
        vtok.parse_query("[Image]/nonexistent.png")
