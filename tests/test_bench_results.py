"""bench/RESULTS.md: each section names the script that writes it, and writing one section
leaves the others byte for byte."""

from __future__ import annotations

import os
import re

from bench.results import RESULTS, write_section

SCRIPTS = (
    "bench/bench_vqvae.py",
    "bench.bench_preprocess",
    "bench/bench_training.py",
    "bench/bench_sampler.py",
    "bench/bench_big.py",
    "bench/bench_threads.py",
    "eval_demo.sh",
    "train_demo.sh",
)


def sections(text: str) -> dict:
    parts = re.split(r"^## ", text, flags=re.M)
    return {p.split("\n", 1)[0]: "## " + p for p in parts[1:]}


def test_every_results_section_names_its_script():
    found = sections(open(RESULTS, encoding="utf-8").read())
    assert found, "bench/RESULTS.md has no sections"
    for name, body in found.items():
        assert any(script in body for script in SCRIPTS), f"section {name!r} names no script that writes it"


def test_write_section_rewrites_only_its_own_section(tmp_path):
    path = str(tmp_path / "RESULTS.md")
    with open(path, "w", encoding="utf-8") as f:
        f.write(open(RESULTS, encoding="utf-8").read())
    before = sections(open(path, encoding="utf-8").read())
    name = next(iter(before))
    write_section(name, "`python bench/bench_vqvae.py`: new table", path)
    after = sections(open(path, encoding="utf-8").read())
    assert list(after) == list(before)
    assert "new table" in after[name]
    for other in before:
        if other != name:
            assert after[other].rstrip() == before[other].rstrip()
    write_section("A new benchmark", "`python bench/bench_sampler.py`: rows", path)
    final = sections(open(path, encoding="utf-8").read())
    assert list(final)[-1] == "A new benchmark" and final[name] == after[name]
    assert not [f for f in os.listdir(tmp_path) if f != "RESULTS.md"]
