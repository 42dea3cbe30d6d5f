"""Print the chaos suite's figures (`.gallery/chaos/*.json`, written by `make chaos`) as a Markdown table.

usage: python scripts/chaos_table.py [FOLDER]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def table(records: list[dict[str, object]]) -> str:
    lines = ["| scenario | outcome | figures | seconds |", "|---|---|---|---:|"]
    for record in records:
        figures = record["figures"]
        assert isinstance(figures, dict)
        shown = ", ".join(f"{key.replace('_', ' ')} {value}" for key, value in figures.items())
        outcome = "passed" if record["passed"] else "**failed**"
        lines.append(f"| {record['title']} | {outcome} | {shown} | {record['seconds']} |")
    return "\n".join(lines)


def main() -> int:
    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / ".gallery" / "chaos"
    paths = sorted(folder.glob("*.json"), key=lambda p: p.stat().st_mtime)
    if not paths:
        print(f"no figures in {folder}: run `make chaos` first", file=sys.stderr)
        return 1
    print(table([json.loads(p.read_text()) for p in paths]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
