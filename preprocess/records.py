"""Captions files -> records: TSV (``path<TAB>caption``) or JSON lines / a JSON list.

Each record gets a stable key (hash of the path as written and the caption), so a
resumed run recognises work already done even if lines were added to the file.
Lines that cannot become a record are returned as BadLine with a reason instead of
stopping the run.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from typing import Iterator, List, Optional, Tuple

IMAGE_KEYS = ("image", "path", "file", "filename", "img")
CAPTION_KEYS = ("caption", "text", "txt")
FORMATS = ("auto", "tsv", "jsonl")


@dataclass(frozen=True)
class Record:
    line: int  # 1-based line (or list position) in the captions file
    path: str  # as written in the captions file
    full_path: str  # resolved against the image folder
    caption: str
    key: str


@dataclass(frozen=True)
class BadLine:
    line: int
    path: str
    reason: str


def record_key(path: str, caption: str) -> str:
    return hashlib.sha1(f"{path}\0{caption}".encode("utf-8")).hexdigest()[:20]


def detect_format(path: str) -> str:
    """jsonl for .json/.jsonl files or content starting with '{' / '[', else tsv."""
    if path.lower().endswith((".json", ".jsonl")):
        return "jsonl"
    with open(path, "r", encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.strip():
                return "jsonl" if line.lstrip().startswith(("{", "[")) else "tsv"
    return "tsv"


def _lines(path: str) -> Iterator[Tuple[int, Optional[str]]]:
    """(line number, text) per non-blank line; text None for a line that is not valid UTF-8."""
    with open(path, "rb") as f:
        data = f.read()
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    for n, raw in enumerate(data.split(b"\n"), 1):
        try:
            line = raw.rstrip(b"\r").decode("utf-8")
        except UnicodeDecodeError:
            yield n, None
            continue
        if line.strip():
            yield n, line


def _tsv_entries(path: str) -> Iterator[Tuple[int, Optional[str], Optional[str], Optional[str]]]:
    for n, line in _lines(path):
        if line is None:
            yield n, None, None, "line is not valid UTF-8"
            continue
        if "\t" not in line:
            yield n, line.strip(), None, "no TAB between image path and caption"
            continue
        image, caption = line.split("\t", 1)
        if n == 1 and image.strip().lower() in IMAGE_KEYS and caption.strip().lower() in CAPTION_KEYS:
            continue  # header line
        yield n, image.strip(), caption, None


def _json_entries(path: str) -> Iterator[Tuple[int, Optional[str], Optional[str], Optional[str]]]:
    with open(path, "rb") as f:
        head = f.read(4096).decode("utf-8", errors="replace").lstrip("\ufeff \t\r\n")
    if head.startswith("["):  # one JSON list of objects
        try:
            with open(path, "r", encoding="utf-8-sig") as f:
                items = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"captions file {path} is not a valid JSON list: {exc}") from None
        if not isinstance(items, list):
            raise ValueError(f"captions file {path}: expected a JSON list of objects")
        numbered = list(enumerate(items, 1))
    else:
        numbered = []
        for n, line in _lines(path):
            if line is None:
                yield n, None, None, "line is not valid UTF-8"
                continue
            try:
                numbered.append((n, json.loads(line)))
            except json.JSONDecodeError as exc:
                yield n, None, None, f"invalid JSON ({exc.msg})"
    for n, item in numbered:
        if not isinstance(item, dict):
            yield n, None, None, f"expected a JSON object, got {type(item).__name__}"
            continue
        image = next((item[k] for k in IMAGE_KEYS if k in item), None)
        caption = next((item[k] for k in CAPTION_KEYS if k in item), None)
        if not isinstance(image, str):
            yield (
                n,
                None,
                None,
                (f"no image path (keys {'/'.join(IMAGE_KEYS)})" if image is None else "image path is not a string"),
            )
        elif caption is None:
            yield n, image, None, f"no caption (keys {'/'.join(CAPTION_KEYS)})"
        elif not isinstance(caption, str):
            yield n, image, None, f"caption is not a string ({type(caption).__name__})"
        else:
            yield n, image.strip(), caption, None


def read_captions(path: str, image_root: str, fmt: str = "auto") -> Tuple[List[Record], List[BadLine]]:
    """Parse the captions file; paths are relative to ``image_root`` unless absolute.

    Exact duplicates (same path and caption) are reported, not repeated; the same image
    with different captions gives several records (e.g. COCO's five captions).
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown captions format {fmt!r}; choose one of {', '.join(FORMATS)}")
    fmt = detect_format(path) if fmt == "auto" else fmt
    entries = _json_entries(path) if fmt == "jsonl" else _tsv_entries(path)
    records: List[Record] = []
    bad: List[BadLine] = []
    first_line = {}
    for n, image, caption, problem in entries:
        if problem is None and not image:
            problem = "empty image path"
        if problem is None and not caption.strip():
            problem = "empty caption"
        if problem is not None:
            bad.append(BadLine(n, image or "-", problem))
            continue
        caption = " ".join(caption.split())  # tabs / newlines would break TSV reports
        key = record_key(image, caption)
        if key in first_line:
            bad.append(BadLine(n, image, f"duplicate of line {first_line[key]}"))
            continue
        first_line[key] = n
        full = image if os.path.isabs(image) else os.path.join(image_root, image)
        records.append(Record(n, image, full, caption, key))
    return records, bad
