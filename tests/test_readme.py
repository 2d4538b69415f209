"""The README's runnable blocks run as written, and every link in the documents resolves.

A block is runnable when the line before its opening fence is ``<!-- runnable -->``. The
blocks run in order, in a copy of the repository (they write samples, data and checkpoints
into it), each with ``bash -euo pipefail``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from typing import List

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MARK = "<!-- runnable -->"
LINK = re.compile(r"\[[^\]]*\]\(([^)#\s]+)(?:#[^)]*)?\)")


def runnable_blocks(text: str) -> List[str]:
    """The bodies of the fenced shell blocks that follow a runnable mark."""
    lines = text.splitlines()
    blocks = []
    for i, line in enumerate(lines):
        if line.strip() != MARK:
            continue
        assert lines[i + 1].startswith("```bash"), f"README line {i + 2}: a runnable mark must precede a ```bash fence"
        end = lines.index("```", i + 2)
        blocks.append("\n".join(lines[i + 2 : end]))
    return blocks


def document_files() -> List[str]:
    files = [os.path.join(ROOT, "README.md")]
    for folder in ("docs", "demo", "pretrained", "bench"):
        path = os.path.join(ROOT, folder)
        files += [os.path.join(path, f) for f in sorted(os.listdir(path)) if f.endswith(".md")]
    return files


def test_readme_is_short_and_has_runnable_blocks():
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    assert len(text.splitlines()) <= 300
    blocks = runnable_blocks(text)
    assert len(blocks) >= 8
    assert any("text2image.sh" in b for b in blocks) and any("pretrain_single_node.sh" in b for b in blocks)


@pytest.mark.parametrize("doc", document_files(), ids=lambda p: os.path.relpath(p, ROOT))
def test_relative_links_resolve(doc):
    text = open(doc, encoding="utf-8").read()
    for target in LINK.findall(text):
        if "://" in target or target.startswith("mailto:"):
            continue
        path = os.path.normpath(os.path.join(os.path.dirname(doc), target))
        assert os.path.exists(path), f"{os.path.relpath(doc, ROOT)} links to {target}, which does not exist"


def _copy_checkout(dst: str) -> None:
    """The files git knows of (tracked, and untracked but not ignored), as a fresh clone has them."""
    listed = (
        subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        )
        .stdout.decode()
        .split("\0")
    )
    for rel in filter(None, listed):
        src = os.path.join(ROOT, rel)
        if os.path.isfile(src):
            os.makedirs(os.path.dirname(os.path.join(dst, rel)), exist_ok=True)
            shutil.copy2(src, os.path.join(dst, rel))


@pytest.mark.slow
def test_readme_runnable_blocks_run_as_written(tmp_path):
    if shutil.which("git") is None or not os.path.isdir(os.path.join(ROOT, ".git")):
        pytest.skip("needs the git checkout to copy")
    repo = str(tmp_path / "repo")
    _copy_checkout(repo)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CUDA", "MASTER_", "RANK", "WORLD_SIZE"))}
    env.update(CUDA_VISIBLE_DEVICES="", PYTHON=sys.executable)
    text = open(os.path.join(repo, "README.md"), encoding="utf-8").read()
    for block in runnable_blocks(text):
        proc = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", block], cwd=repo, env=env, capture_output=True, text=True, timeout=900
        )
        output = proc.stdout + proc.stderr
        assert proc.returncode == 0, f"README block failed:\n{block}\n{output[-3000:]}"
        assert "Traceback" not in output, f"README block printed a traceback:\n{block}\n{output[-3000:]}"
    images = [f for _, _, files in os.walk(os.path.join(repo, "samples_text2image")) for f in files]
    assert any(f.endswith(".jpg") for f in images)
    assert os.path.isfile(os.path.join(repo, "samples_post_selection", "scores_rank_0.txt"))
    assert os.path.isfile(os.path.join(repo, "data", "examples.lmdb", "data.mdb"))
    saved = [d for d in os.listdir(os.path.join(repo, "data", "checkpoints")) if d.startswith("readme-tiny")]
    assert saved and os.path.isfile(
        os.path.join(repo, "data", "checkpoints", saved[0], "latest_checkpointed_iteration.txt")
    )
