"""Render the reliability tests' outcomes into the table of ``docs/reliability.md``.

Usage: ``python scripts/reliability_table.py RESULTS_JSON [PAGE]``. ``RESULTS_JSON`` is the
file the tests fill when ``YOLO_BATCH_RELIABILITY_OUT`` names it (``scripts/reliability.sh``
does both steps). ``PAGE`` defaults to :data:`TARGET`, ``docs/reliability.md``. The table
replaces what stands between the page's ``reliability:begin`` and ``reliability:end`` markers;
nothing else in the page changes.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

#: The page whose table this script rewrites (``tests/test_docs.py`` checks it has the markers).
TARGET = Path(__file__).resolve().parents[1] / "docs" / "reliability.md"
BEGIN = "<!-- reliability:begin -->"
END = "<!-- reliability:end -->"
HEADER = (
    "| area | fault or input | tried | images | rows lost | rows duplicated | outcome |\n"
    "| --- | --- | ---: | ---: | ---: | ---: | --- |"
)


def render(entries: list[dict]) -> str:
    rows = []
    for e in sorted(entries, key=lambda e: (e["area"], e["long"], e["case"])):
        case = e["case"] + (" *(long, opt-in)*" if e["long"] else "")
        rows.append(
            f"| {e['area']} | {_cell(case)} | {e['trials']} | {e['images']} | "
            f"{e['rows_lost']} | {e['rows_duplicated']} | {_cell(e['result'])} |"
        )
    newest = max((e.get("recorded_at") or 0) for e in entries) if entries else 0
    stamp = time.strftime("%Y-%m-%d", time.gmtime(newest)) if newest else "never"
    return f"{HEADER}\n" + "\n".join(rows) + f"\n\n*Generated from the test run of {stamp}.*"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def update_page(page: Path, table: str) -> None:
    text = page.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{page} has no {BEGIN} ... {END} section to fill")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    page.write_text(f"{head}{BEGIN}\n{table}\n{END}{tail}")


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 1
    entries = json.loads(Path(argv[0]).read_text())
    page = Path(argv[1]) if len(argv) > 1 else TARGET
    update_page(page, render(entries))
    print(f"{page}: {len(entries)} reliability outcomes")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
