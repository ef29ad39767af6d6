"""``python -m router.requestlog.migrations upgrade [REVISION]``: a request log database to head.

The serving processes never import SQLAlchemy or Alembic (about 30 MB that would stay
resident for a second's work at start-up): a router that finds its database behind runs
this as a child and goes on. Operators can run it too. The database URL is read from
the first line of stdin, so a password never shows in ``ps``; the output is one JSON
line, ``{"newer": [...]}``: revisions in the database that this version does not know.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from router.requestlog.schema import make_engine, migrate


async def _upgrade(url: str, revision: str) -> list[str]:
    engine = make_engine(url)
    try:
        return await migrate(engine, revision)
    finally:
        await engine.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m router.requestlog.migrations",
        description="Upgrade a request log database; its URL is read from stdin.",
    )
    parser.add_argument("command", choices=["upgrade"])
    parser.add_argument("revision", nargs="?", default="head")
    args = parser.parse_args(argv)
    url = sys.stdin.readline().strip()
    try:
        newer = asyncio.run(_upgrade(url, args.revision))
    except Exception as exc:
        # The driver's own message, without SQLAlchemy's echo of the statement.
        detail = " ".join(str(getattr(exc, "orig", None) or exc).split())
        print(f"{type(exc).__name__}: {detail[:500]}", file=sys.stderr)
        return 1
    print(json.dumps({"newer": newer}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
