"""Resume state and the report file of a preprocessing run.

The journal (``<output>/preprocess_progress.tsv``, inside the LMDB folder so it goes
wherever the dataset goes) records the run's settings and, for every row, its index and
the key of the input it came from. Journal lines are fsynced *before* the LMDB commit
that stores their rows, so after a kill every committed row (index < ``length``) has
its key journaled; entries at or past ``length`` were never committed and are dropped.
A half-written last line is ignored.

The report (``<output>.report.tsv``) lists every skipped input and every image that
needed a conversion: ``line  path  action  reason``. Skips are re-checked on each run
(a fixed image is picked up by a rerun), so the report is rebuilt at the start of a run
from the conversions of rows already written.
"""

from __future__ import annotations

import json
import os
from typing import Dict, List, Optional, Set, Tuple

from common.fileio import remove_stale_temps, write_text_atomic

JOURNAL_NAME = "preprocess_progress.tsv"
REPORT_HEADER = "line\tpath\taction\treason\n"


def _clean(value: object) -> str:
    return " ".join(str(value).split()) or "-"


def report_path_for(output: str) -> str:
    return os.path.normpath(output) + ".report.tsv"


class Journal:
    """Append-only record of rows written (index -> input key) plus conversion notes."""

    def __init__(self, lmdb_dir: str, report_path: str):
        self.path = os.path.join(lmdb_dir, JOURNAL_NAME)
        self.report_path = report_path
        self.settings: Optional[dict] = None
        self.rows: Dict[int, str] = {}
        self.notes: Dict[str, Tuple[str, str, str]] = {}  # record key -> (line, path, note)
        self._journal_buf: List[str] = []
        self._report_buf: List[str] = []
        self._journal_file = None
        self._report_file = None
        if os.path.exists(self.path):
            self._load()

    def exists(self) -> bool:
        return self.settings is not None

    def _load(self) -> None:
        with open(self.path, "r", encoding="utf-8") as f:
            text = f.read()
        lines = text.split("\n")[:-1]  # the part after the last newline is incomplete
        for line in lines:
            parts = line.split("\t")
            if parts[0] == "settings" and len(parts) == 2:
                self.settings = json.loads(parts[1])
            elif parts[0] == "row" and len(parts) == 3 and parts[1].isdigit():
                self.rows[int(parts[1])] = parts[2]
            elif parts[0] == "note" and len(parts) == 5:
                self.notes[parts[1]] = (parts[2], parts[3], parts[4])

    def differences(self, settings: dict) -> List[str]:
        """Settings of this run that differ from the ones the output was made with."""
        old = self.settings or {}
        return [
            f"{k}: {old.get(k)!r} before, {settings.get(k)!r} now"
            for k in sorted(set(old) | set(settings))
            if old.get(k) != settings.get(k)
        ]

    def committed_prefix(self, length: int) -> int:
        """How many of the LMDB's first ``length`` rows have a journaled key (normally all)."""
        n = 0
        while n < length and n in self.rows:
            n += 1
        return n

    @staticmethod
    def record_of(row_key: str) -> str:
        return row_key.split("#", 1)[0]

    def start(self, settings: dict, length: int) -> Set[str]:
        """Keep the state of rows 0..length-1, rewrite the journal and the report; return the
        keys of the inputs already done."""
        self.settings = settings
        self.rows = {i: k for i, k in self.rows.items() if i < length}
        done = {self.record_of(k) for k in self.rows.values()}
        self.notes = {k: v for k, v in self.notes.items() if k in done}
        lines = [f"settings\t{json.dumps(settings, sort_keys=True)}\n"]
        lines += [f"row\t{i}\t{k}\n" for i, k in sorted(self.rows.items())]
        lines += [f"note\t{k}\t{a}\t{b}\t{c}\n" for k, (a, b, c) in self.notes.items()]
        for path in (self.path, self.report_path):  # temporaries of a run killed while rewriting them
            remove_stale_temps(os.path.dirname(path) or ".", os.path.basename(path))
        write_text_atomic(self.path, "".join(lines))
        write_text_atomic(
            self.report_path, REPORT_HEADER + "".join(f"{a}\t{b}\tconverted\t{c}\n" for a, b, c in self.notes.values())
        )
        self._journal_file = open(self.path, "a", encoding="utf-8")
        self._report_file = open(self.report_path, "a", encoding="utf-8")
        return done

    # ---- during the run -------------------------------------------------------------------
    def add_row(self, index: int, key: str) -> None:
        self.rows[index] = key
        self._journal_buf.append(f"row\t{index}\t{key}\n")

    def add_note(self, key: str, line: int, path: str, note: str) -> None:
        entry = (str(line), _clean(path), _clean(note))
        self.notes[key] = entry
        self._journal_buf.append(f"note\t{key}\t{entry[0]}\t{entry[1]}\t{entry[2]}\n")
        self._report_buf.append(f"{entry[0]}\t{entry[1]}\tconverted\t{entry[2]}\n")

    def add_skip(self, line: int, path: str, reason: str) -> None:
        self._report_buf.append(f"{line}\t{_clean(path)}\tskipped\t{_clean(reason)}\n")

    def flush(self) -> None:
        """Make the buffered entries durable; call before committing their rows."""
        if self._journal_buf:
            self._journal_file.write("".join(self._journal_buf))
            self._journal_file.flush()
            os.fsync(self._journal_file.fileno())
            self._journal_buf.clear()
        if self._report_buf:
            self._report_file.write("".join(self._report_buf))
            self._report_file.flush()
            self._report_buf.clear()

    def close(self) -> None:
        self.flush()
        for f in (self._journal_file, self._report_file):
            if f is not None:
                f.close()
