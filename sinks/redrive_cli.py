"""``hpcinsight dead-letters list|redrive``: arguments and output (the Kafka side is :mod:`hpcinsight.sinks.redrive`)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from hpcinsight.core.group_lock import LockHeld, LockLost, LockUnanswered

#: topics whose messages sent back late are mostly dropped downstream (docs/guarantees.md)
_TIME_SERIES = ("gpu.samples.raw", "ib.samples.raw", "step.metrics.raw")


def add_cli_arguments(p: argparse.ArgumentParser) -> None:
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    a = actions.add_parser(
        "list",
        help="the letters Kafka holds, counted by topic, stage and reason",
        description="The letters Kafka holds, counted by source topic, stage and reason, newest first.",
    )
    _selection_arguments(a)
    a.add_argument("--format", choices=("table", "json"), default="table")
    a = actions.add_parser(
        "redrive",
        help="send letters back to their topics, each at most once",
        description=(
            "Send the selected letters back to the topics they came from (their bytes and key), once their "
            "cause is fixed; each letter at most once, however often this runs. One sending run at a time: "
            "a second is refused and told who holds the lock (dead-letters list says when a run is under way)."
        ),
    )
    _selection_arguments(a)
    a.add_argument("--dry-run", action="store_true", help="say what would be sent back, send nothing")
    a.add_argument("--batch", type=int, default=500, help="letters recorded together (default 500)")
    a.add_argument("--by", default=None, help="who sends them back (default: the login name)")


def _selection_arguments(a: argparse.ArgumentParser) -> None:
    a.add_argument("--topic", action="append", default=None, help="source topic, e.g. scheduler.events; repeatable")
    a.add_argument("--stage", action="append", default=None, help="stage that refused it, e.g. validate or sink; repeatable")
    a.add_argument("--reason", default=None, help="a part of the reason (any case), e.g. 'schema version'")
    a.add_argument("--since", default=None, help="letters of the last ..., e.g. 2h or 3d (default: all Kafka holds)")


def run_cli(args: argparse.Namespace, client_config: dict[str, Any], prefix: str) -> int:
    import getpass

    from hpcinsight.core.durations import parse_seconds
    from hpcinsight.sinks import redrive
    from hpcinsight.sinks.alerts.message import utc

    since_ms = None if args.since is None else int((time.time() - parse_seconds(args.since, "--since")) * 1000)
    selection = redrive.Selection(
        topics=None if args.topic is None else frozenset(args.topic),
        stages=None if args.stage is None else frozenset(args.stage),
        reason=args.reason,
        since_ms=since_ms,
    )
    if args.action == "list":
        counted = redrive.Report()
        history, _ = redrive.read_history(client_config, prefix)
        letters = redrive.read_letters(client_config, prefix, counted)
        rows = redrive.summary((x for x in letters if selection.matches(x, prefix)), history, prefix)
        unreadable = counted.unreadable
        under_way = redrive.run_under_way(client_config, prefix)
        said = f"a redrive run is under way: {under_way}" if under_way else None
        if args.format == "json":
            print(json.dumps(rows, indent=2))
            if said:
                print(said, file=sys.stderr)
            return 0
        if said:
            print(said)
        for r in rows:
            print(
                f"{utc(r['last_ts'])}  {r['letters']:6d} letters  {r['sent_back']:6d} sent back  "
                f"{r['topic']}  [{r['stage']}]  {r['reason']}" + (f"  ({r['cut']} cut short)" if r["cut"] else "")
            )
        if not rows:
            print("no dead letters" + (" match" if any(vars(selection).values()) else ""))
        if unreadable:
            print(f"{unreadable} message(s) of the dead-letter topic are not letters and were skipped")
        return 0
    if args.batch < 1:
        raise ValueError("--batch must be at least 1")
    try:
        report = redrive.redrive(
            client_config,
            prefix,
            selection,
            args.by or getpass.getuser(),
            batch=args.batch,
            dry_run=args.dry_run,
            on_batch=lambda n: print(f"sent back {n}", flush=True),
        )
    except LockHeld as err:
        print(
            f"hpcinsight: another redrive run is under way, {err}; run this again once it has finished "
            "(a run killed outright holds it for some 10 s more). --dry-run needs no lock.",
            file=sys.stderr,
        )
        return 1
    except LockUnanswered as err:
        print(f"hpcinsight: no lock taken, nothing sent: {err}", file=sys.stderr)
        return 1
    except LockLost as err:
        print(
            f"hpcinsight: stopped: {err}, so another run may have started. What was sent is recorded; "
            "run this again to send the rest.",
            file=sys.stderr,
        )
        return 1
    if report.recovered:
        print(f"{report.recovered} letter(s) sent by a run that was stopped before recording them, found by their header")
    verb = "would send back" if args.dry_run else "sent back"
    print(f"{verb} {report.to_send if args.dry_run else report.sent} letter(s)", flush=True)
    for name, count in (
        ("sent back already (by an earlier run, or with another letter of the same message)", report.already),
        ("refused again after an earlier run sent them back (fix the cause first): not sent", report.came_back),
        ("kept only their first bytes (too large): not sent", report.cut),
        (
            "name no topic of this catalog and prefix (e.g. alerts.outbox: notifications no receiver took): not sent",
            report.foreign,
        ),
    ):
        if count:
            print(f"{count} {name}")
    late = sorted(t for t in report.topics if t.endswith(_TIME_SERIES))
    if late:
        print(
            f"note: {', '.join(late)} carry time series; samples sent back after their windows closed, or older "
            "than what is stored for their GPU, are dropped downstream (docs/guarantees.md)"
        )
    return 0
