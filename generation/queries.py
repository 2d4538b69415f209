"""Input lines -> token queries for each generation task, with per-line errors.

Templates are the original's (``[ROI1] {} [BASE] [BOI1] [MASK]*1024`` ...) for
32x32 code grids; other grids (e.g. the shipped 16x16 demo model) use their size
token ([SMALL]) and code count.  A bad line raises QueryError with a message
that names what is wrong; the caller adds the line number.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

SIZE_TOKENS = {8: "[TINY]", 16: "[SMALL]", 32: "[BASE]", 64: "[BIG]"}
TASK_FIELDS = {  # TAB-separated fields of one input line
    "text2image": ("text",),
    "image2text": ("image path",),
    "low-level super-resolution": ("text", "image path"),
    "super-resolution": ("text", "image path"),
    "post-selection": ("text", "image path", "..."),
    "inpainting": ("text", "image path", "region x0,y0,x1,y1"),
}
CAPTION_LENGTH = 20
_COMMAND_LIKE = re.compile(r"^\[[A-Za-z]+[0-9]*\]$")


class QueryError(ValueError):
    """A bad input line; the message says what is wrong and how to fix it."""


def size_token(grid: int) -> str:
    if grid not in SIZE_TOKENS:
        raise ValueError(f"no size token for a {grid}x{grid} code grid (use 8, 16, 32 or 64)")
    return SIZE_TOKENS[grid]


def task_template(task: str, grid: int = 32) -> str:
    """The query template of a task for a grid x grid image (the original's for 32)."""
    size, n = size_token(grid), grid * grid
    templates = {
        "text2image": f"[ROI1] {{}} {size} [BOI1] [MASK]*{n}",
        "image2text": f"{size} [BOI1] [Image]{{}} [EOI1] [ROI1] [MASK]*{CAPTION_LENGTH}",
        "low-level super-resolution": f"[ROI1] {{}} {size} [BOI1] [Image]{{}} [EOI1] [ROI2] [POS0] {size} [BOI2] [MASK]*{n}",
        "super-resolution": f"[ROI1] {{}} {size} [BOI1] [Image]{{}}",
        "post-selection": f"{size} [BOI1] [Image]{{}} [EOI1] [ROI1] {{}}",
        "inpainting": f"[ROI1] {{}} {size} [BOI1] [Image]{{}}",
    }
    if task not in templates:
        raise ValueError(f"unknown generation task {task!r}")
    return templates[task]


@dataclass
class Query:
    """One parsed input line."""

    line_number: int
    raw: str
    id: Optional[str]
    fields: List[str]
    ids: List[int] = field(default_factory=list)
    extra: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        """Short, file-name safe text of the query (for folders and grid names)."""
        text = self.fields[0] if self.fields else self.raw
        return re.sub(r"[^\w\- ]+", "", text.replace("/", ""))[:20].strip().replace(" ", "_") or "query"


def split_line(line: str, line_number: int, task: str, with_id: bool) -> Query:
    """Check the line's shape (id, TAB-separated fields) before any tokenization."""
    raw = line.rstrip("\n").rstrip("\r")
    check_utf8(raw)
    if not raw.strip():
        raise QueryError("empty line: write one query per line (or remove the line)")
    qid = None
    if with_id:
        if "\t" not in raw:
            raise QueryError("--with-id expects 'id<TAB>query' but the line has no TAB")
        qid, raw_query = raw.split("\t", 1)
        if not qid.strip() or "/" in qid or qid in (".", ".."):
            raise QueryError(f"bad id {qid!r}: it names the output folder, use letters, digits, '-' or '_'")
    else:
        raw_query = raw
    fields = raw_query.split("\t")
    expected = TASK_FIELDS[task]
    if task == "post-selection":
        if len(fields) < 2 or not all(f.strip() for f in fields[1:]):
            raise QueryError("post-selection expects 'text<TAB>image1<TAB>image2...': no image given")
    elif len(fields) != len(expected):
        raise QueryError(
            f"{task} expects {len(expected)} TAB-separated field(s) ({', '.join(expected)}), got {len(fields)}"
        )
    for f, name in zip(fields, expected):
        if not f.strip():
            raise QueryError(f"the {name} field is empty")
    return Query(line_number, raw, qid.strip() if qid else None, fields)


def check_utf8(text: str) -> None:
    """Input files are decoded with ``surrogateescape``, so one undecodable line reaches here
    (and fails alone) instead of aborting the whole file."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = ord(text[exc.start])
        byte = f"byte 0x{bad - 0xDC00:02x}" if 0xDC80 <= bad <= 0xDCFF else f"character U+{bad:04X}"
        raise QueryError(f"not valid UTF-8 ({byte} at column {exc.start + 1}); save the input file as UTF-8") from None


def check_command_tokens(query: str, known) -> None:
    """An unknown ``[NAME]`` part would silently become text in the original: refuse it."""
    for part in query.split(" "):
        if _COMMAND_LIKE.match(part) and part not in known and not part.startswith("[Image"):
            raise QueryError(f"unknown command token {part}; known: {', '.join(sorted(known))}")


def parse_region(text: str) -> Tuple[float, float, float, float]:
    """'x0,y0,x1,y1' as fractions of the image side (0..1), x0<x1, y0<y1."""
    try:
        x0, y0, x1, y1 = (float(v) for v in text.split(","))
    except ValueError:
        raise QueryError(
            f"region {text!r}: expected 'x0,y0,x1,y1' as fractions of the image, e.g. 0.5,0,1,1 for the right half"
        ) from None
    if not all(0 <= v <= 1 for v in (x0, y0, x1, y1)):
        raise QueryError(f"region {text!r} reaches outside the image: every value must be within [0, 1]")
    if not (x0 < x1 and y0 < y1):
        raise QueryError(f"region {text!r} is empty: need x0 < x1 and y0 < y1 (left, top, right, bottom)")
    return x0, y0, x1, y1


def region_mask(region: Tuple[float, float, float, float], grid: int) -> List[bool]:
    """Row-major code positions covered by the region (at least one code)."""
    x0, y0, x1, y1 = region
    c0, c1 = int(x0 * grid), max(int(x0 * grid) + 1, int(round(x1 * grid)))
    r0, r1 = int(y0 * grid), max(int(y0 * grid) + 1, int(round(y1 * grid)))
    return [r0 <= r < r1 and c0 <= c < c1 for r in range(grid) for c in range(grid)]


def check_positions(ids: List[int], roi2_id: Optional[int], max_positions: int) -> None:
    """The query must fit the position table (after the [ROI2] restart; ``roi2_id`` None:
    a model whose positions count on through [ROI2])."""
    offset = max((i for i, t in enumerate(ids) if t == roi2_id), default=None)
    last = len(ids) - 1
    top = max(offset, last - offset) if offset is not None else last
    if top >= max_positions:
        raise QueryError(
            f"query of {len(ids)} tokens needs position {top} but the model has "
            f"{max_positions} positions (--max-position-embeddings); shorten the text"
        )
