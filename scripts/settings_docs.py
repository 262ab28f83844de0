#!/usr/bin/env python3
"""Write the settings tables of the docs from the settings' one declaration, or check them.

    python scripts/settings_docs.py          # rewrite the tables in docs/admin-guide.md, docs/worker.md
    python scripts/settings_docs.py --check  # exit 1 when a table differs from the declaration

A table sits between `<!-- settings:NAME -->` and `<!-- /settings:NAME -->` lines.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = {"pool": ROOT / "docs" / "admin-guide.md", "worker": ROOT / "docs" / "worker.md"}


def tables() -> dict[str, str]:
    """The rendered table of each program, from this tree's sources."""
    sys.path[:0] = [str(ROOT / "server"), str(ROOT / "worker")]
    from hivemind_nodepool.pool.config import SCHEMA as POOL
    from hivemind_worker.settings import SCHEMA as WORKER

    return {"pool": POOL.markdown_table(), "worker": WORKER.markdown_table()}


def with_table(text: str, name: str, table: str) -> str:
    """`text` with the block of `name` replaced by `table`."""
    begin, end = f"<!-- settings:{name} -->\n", f"<!-- /settings:{name} -->\n"
    start, stop = text.find(begin), text.find(end)
    if start < 0 or stop < start:
        raise SystemExit(f"no {begin.strip()} ... {end.strip()} block")
    return text[: start + len(begin)] + table + text[stop:]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only check; exit 1 on a difference")
    args = parser.parse_args()
    stale = []
    for name, table in tables().items():
        path = DOCS[name]
        text = path.read_text()
        wanted = with_table(text, name, table)
        if wanted == text:
            continue
        stale.append(path)
        if not args.check:
            path.write_text(wanted)
    if args.check and stale:
        names = ", ".join(str(p.relative_to(ROOT)) for p in stale)
        print(
            f"the settings tables in {names} are stale: run python scripts/settings_docs.py", file=sys.stderr
        )
        return 1
    for path in stale:
        print(f"rewrote the settings table in {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
