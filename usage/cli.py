"""`fognode usage`: who used how much, read straight from the usage store.

It reads the store the node writes (the SQLite file in the data directory,
or the PostgreSQL database given with ``--database-url``), so it works
whether or not the node is running. Registered on the main parser by
gateway/cli.py, which passes the default store location.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg

from .backends import open_store
from .migrations import SchemaTooNew
from .options import StoreOptions
from .store import Grouping, Total
from .when import iso_utc, parse_when

_GROUPINGS = {"user": Grouping.USER, "model": Grouping.MODEL, "user-model": Grouping.USER_MODEL}


def add_usage_commands(sub: Any) -> None:
    usage = sub.add_parser(
        "usage",
        help="tokens and requests per user or model, from the usage store",
        description="Sum the recorded usage over a time range (times in UTC). Reads the "
        "node's store directly: the SQLite file in the data directory, or a PostgreSQL URL.",
    )
    usage.add_argument(
        "--since",
        default="today",
        help="start: 'today' (the quota day, default), a span back such as 30m, 24h or 7d, "
        "or an ISO date or date-time (UTC unless it says otherwise)",
    )
    usage.add_argument("--until", default="now", help="end: 'now' (default), a span or a date")
    usage.add_argument("--user", metavar="UID", help="only this user (uid or apikey:NAME)")
    usage.add_argument(
        "--by", choices=sorted(_GROUPINGS), default="user", help="group by (default: user)"
    )
    usage.add_argument("--json", action="store_true", help="print JSON instead of a table")
    where = usage.add_mutually_exclusive_group()
    where.add_argument("--sqlite", type=Path, metavar="FILE", help="the SQLite usage file")
    where.add_argument("--database-url", metavar="URL", help="postgresql://... of shared nodes")


def run_usage_command(
    args: argparse.Namespace,
    *,
    sqlite_path: Path,
    database_url: str | None = None,
    day_start: timedelta = timedelta(0),
) -> int:
    """``sqlite_path``/``database_url``: where the node keeps its store, used
    unless the command line names another one."""
    now = time.time()
    try:
        since = parse_when(args.since, now=now, day_start=day_start)
        until = parse_when(args.until, now=now, day_start=day_start)
    except ValueError as exc:
        print(f"fognode usage: {exc}", file=sys.stderr)
        return 2
    url = args.database_url or (None if args.sqlite else database_url)
    path = args.sqlite or sqlite_path
    if url is None and not path.exists():
        totals: list[Total] = []
        print(f"fognode usage: nothing recorded yet ({path} does not exist)", file=sys.stderr)
    else:
        options = StoreOptions(database_url=url) if url else StoreOptions(sqlite_path=path)
        try:
            totals = asyncio.run(_totals(options, since, until, _GROUPINGS[args.by], args.user))
        except (
            OSError,
            SchemaTooNew,
            sqlite3.Error,
            asyncpg.PostgresError,
            asyncpg.InterfaceError,
        ) as exc:
            print(f"fognode usage: {exc}", file=sys.stderr)
            return 1
    grouping = _GROUPINGS[args.by]
    if args.json:
        print(json.dumps(_as_json(totals, since, until, args.by), indent=2))
    else:
        print(_table(totals, grouping, since, until))
    return 0


async def _totals(
    options: StoreOptions, since: float, until: float, by: Grouping, uid: str | None
) -> list[Total]:
    store = open_store(options)
    await store.open()
    try:
        return await store.totals(since=since, until=until, by=by, uid=uid)
    finally:
        await store.close()


def _as_json(totals: list[Total], since: float, until: float, by: str) -> dict[str, Any]:
    return {
        "since": iso_utc(since),
        "until": iso_utc(until),
        "by": by,
        "totals": [t.as_json() for t in totals],
    }


def _table(totals: list[Total], by: Grouping, since: float, until: float) -> str:
    keys = [name.upper().replace("UID", "USER") for name in by.value]
    head = [*keys, "REQUESTS", "REJECTED", "PARTIAL", "PROMPT", "COMPLETION", "TOTAL"]
    rows = [
        [
            *(str(getattr(t, name)) for name in by.value),
            *(
                f"{n:,}"
                for n in (
                    t.requests,
                    t.rejected,
                    t.partial,
                    t.prompt_tokens,
                    t.completion_tokens,
                    t.total_tokens,
                )
            ),
        ]
        for t in totals
    ]
    if len(totals) > 1:
        sums = [
            sum(getattr(t, f) for t in totals)
            for f in ("requests", "rejected", "partial", "prompt_tokens", "completion_tokens")
        ]
        rows.append(
            ["(all)", *[""] * (len(keys) - 1), *(f"{n:,}" for n in [*sums, sums[3] + sums[4]])]
        )
    widths = [max(len(row[i]) for row in [head, *rows]) for i in range(len(head))]

    def line(cells: list[str]) -> str:
        left = [c.ljust(w) for c, w in zip(cells[: len(keys)], widths, strict=False)]
        right = [c.rjust(w) for c, w in zip(cells[len(keys) :], widths[len(keys) :], strict=False)]
        return "  ".join(left + right).rstrip()

    title = f"Usage from {iso_utc(since)} to {iso_utc(until)} (UTC)"
    if not totals:
        return f"{title}: nothing recorded."
    return "\n".join([title, line(head), *(line(row) for row in rows)])
