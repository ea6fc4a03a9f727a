"""Render the README's benchmark tables from ``benchmarks/results/*.json``.

Why generated: a hand-copied table drifts from the run it claims to show. Each table in README.md
sits between ``<!-- bench:NAME -->`` and ``<!-- /bench:NAME -->`` and is replaced by the rows of
``benchmarks/results/NAME.json`` (every column, in the order the benchmark wrote them) and a line
saying when, on what machine and with which command they were measured. Prose around the blocks
is the author's; the numbers inside are the run's.

    python benchmarks/readme_tables.py          # after benchmarks/run_all.py (or run_all.py --readme)
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import RESULTS, ROOT, load_rows, markdown_table

README = ROOT / "README.md"
BLOCK = re.compile(r"(<!-- bench:(?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /bench:(?P=name) -->)", re.S)
#: Columns that are bookkeeping rather than results.
EXCLUDE = ("load avg",)


def render(name: str) -> str:
    measured, rows = load_rows(name)
    table = markdown_table(rows, EXCLUDE)
    if not measured:
        return table + "\n"
    quick = " --quick" if measured.get("quick") else ""
    command = measured.get("command") or f"python benchmarks/run_all.py{quick}"  # older files: run_all
    return (f"{table}\n\n<sub>Measured {measured['date']} by `{command}` on "
            f"{measured['cores']} cores, {measured['memory_GiB']:g} GiB (1-min load average "
            f"{measured['load_avg_1m']:g} at the end).</sub>\n")


def update_readme(readme: Path = README) -> list[str]:
    """Rewrite every generated block whose results file exists; the names rewritten."""
    text = readme.read_text()
    done: list[str] = []

    def sub(m: re.Match[str]) -> str:
        name = m.group("name")
        if not (RESULTS / f"{name}.json").exists():
            return m.group(0)
        done.append(name)
        return m.group(1) + render(name) + m.group(4)

    readme.write_text(BLOCK.sub(sub, text))
    return done


if __name__ == "__main__":
    print("rewritten:", ", ".join(update_readme()) or "none")
