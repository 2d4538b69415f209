"""The demo recipe's time per stage, summed over sittings, from its stage_times.tsv.

demo/train.sh appends one line per stage and sitting (stage, seconds, ended, how: finished,
stopped or killed); this prints the sums and, for a complete run, writes them to
bench/RESULTS.md so the recipe's cost is a table its own script wrote.

    python -m demo.stage_times data/demo/stage_times.tsv [--write-results [FILE]]
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field

from bench.results import add_write_results_argument, write_section

STAGES = ("tokenizer", "vqvae", "vqvae-base", "gpt-data", "gpt", "gpt-dropout", "sr-data", "sr", "export", "eval")
SECTION = "Demo recipe from nothing (scripts/train_demo.sh)"


@dataclass
class StageTime:
    seconds: int = 0
    sittings: dict[str, int] = field(default_factory=dict)  # how -> count

    @property
    def finished(self) -> bool:
        return self.sittings.get("finished", 0) > 0


def read_times(path: str) -> dict[str, StageTime]:
    """Stage -> summed time, in the order stages first appear; a malformed line is an error."""
    times: dict[str, StageTime] = {}
    with open(path) as f:
        lines = f.read().splitlines()
    if not lines or lines[0].split("\t") != ["stage", "seconds", "ended", "how"]:
        raise ValueError(f"{path}: not a stage_times.tsv (its first line is not 'stage seconds ended how')")
    for number, line in enumerate(lines[1:], start=2):
        cells = line.split("\t")
        if len(cells) != 4 or not cells[1].isdigit():
            raise ValueError(f"{path} line {number}: expected 'stage<TAB>seconds<TAB>ended<TAB>how', got {line!r}")
        entry = times.setdefault(cells[0], StageTime())
        entry.seconds += int(cells[1])
        entry.sittings[cells[3]] = entry.sittings.get(cells[3], 0) + 1
    return times


def duration(seconds: int) -> str:
    """3725 -> '1 h 02 min', 754 -> '12 min 34 s', 4 -> '4 s'."""
    if seconds >= 3600:
        return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
    if seconds >= 60:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds} s"


def sittings_text(entry: StageTime) -> str:
    count = sum(entry.sittings.values())
    ended = [f"{n} {how}" for how, n in sorted(entry.sittings.items()) if how != "finished"]
    return f"{count} ({', '.join(ended)})" if ended else str(count)


def summary(times: dict[str, StageTime]) -> str:
    width = max([len(name) for name in times] + [5])
    rows = [f"  {name:<{width}} {entry.seconds:>7}" for name, entry in times.items()]
    rows.append(f"  {'total':<{width}} {sum(e.seconds for e in times.values()):>7}")
    return "\n".join(rows)


def results_table(times: dict[str, StageTime]) -> str:
    total = sum(times[name].seconds for name in STAGES)
    rows = [
        "Every stage of `./scripts/train_demo.sh` with its defaults, from an empty `DEMO_DIR`: wall time "
        "summed over the sittings the run spanned (a sitting that ended inside a stage counts up to its "
        "end; the next resumed from the last checkpoint), from `DEMO_DIR/stage_times.tsv`.",
        "",
        "| stage | time | sittings |",
        "|---|---|---|",
    ]
    rows += [f"| {name} | {duration(times[name].seconds)} | {sittings_text(times[name])} |" for name in STAGES]
    rows.append(f"| total | {duration(total)} | |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("times", help="the recipe's stage_times.tsv")
    add_write_results_argument(p)
    a = p.parse_args(argv)
    try:
        times = read_times(a.times)
    except (OSError, ValueError) as e:
        print(f"stage_times: error: {e}", file=sys.stderr)
        return 1
    print(summary(times), file=sys.stderr)
    if a.write_results is not None:
        missing = [name for name in STAGES if name not in times or not times[name].finished]
        if missing:
            print(f"stage_times: not written to the results: stages not finished: {' '.join(missing)}", file=sys.stderr)
            return 0
        write_section(SECTION, results_table(times), a.write_results)
        print(f"stage_times: wrote '{SECTION}' to {a.write_results}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
