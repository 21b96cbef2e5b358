"""``hpcinsight silence add|list|expire``: arguments and output (the Kafka side is :mod:`hpcinsight.sinks.alerts.silences`)."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any


def add_cli_arguments(p: argparse.ArgumentParser) -> None:
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    a = actions.add_parser(
        "add",
        help="mute alerts matching every --match for --duration",
        description="Mute alerts matching every --match for --duration; prints the silence id.",
    )
    a.add_argument(
        "--match",
        action="append",
        default=[],
        metavar="LABEL=VALUE",
        help="matcher (=, !=, =~ regex, !~), e.g. kind=gpu_xid or node=~'n1[0-9]'; repeatable",
    )
    a.add_argument("--duration", required=True, help="how long, e.g. 2h, 30m, 1d")
    a.add_argument("--comment", required=True, help="why (shown by silence list)")
    a.add_argument("--author", default=None, help="who (default: the login name)")
    a.add_argument("--starts-in", default="0s", help="start later, e.g. 1h (default: now)")
    a = actions.add_parser("list", help="active and pending silences", description="Active and pending silences.")
    a.add_argument("--all", action="store_true", help="expired ones too")
    a.add_argument("--format", choices=("table", "json"), default="table")
    a = actions.add_parser("expire", help="end a silence now", description="End a silence now.")
    a.add_argument("id", help="the silence id (or its first characters)")


def run_cli(args: argparse.Namespace, client_config: dict[str, Any], prefix: str) -> int:
    import getpass

    from hpcinsight.core.durations import parse_seconds
    from hpcinsight.sinks.alerts import silences
    from hpcinsight.sinks.alerts.message import utc

    if args.action == "add":
        s = silences.add(
            client_config,
            prefix,
            args.match,
            parse_seconds(args.duration, "--duration"),
            args.comment,
            args.author or getpass.getuser(),
            starts_in_s=parse_seconds(args.starts_in, "--starts-in"),
        )
        print(f"silence {s.id}: {', '.join(s.matchers)} from {utc(s.starts_at)} until {utc(s.ends_at)}")
        return 0
    if args.action == "expire":
        s = silences.expire(client_config, prefix, args.id)
        print(f"silence {s.id} expired at {utc(s.ends_at)}")
        return 0
    now = int(time.time() * 1000)
    rows = sorted(silences.read_all(client_config, prefix).values(), key=lambda s: s.starts_at)
    rows = [s for s in rows if args.all or silences.state(s, now) != "expired"]
    if args.format == "json":
        print(
            json.dumps(
                [
                    {
                        "id": s.id,
                        "state": silences.state(s, now),
                        "matchers": s.matchers,
                        "starts_at": s.starts_at,
                        "ends_at": s.ends_at,
                        "created_by": s.created_by,
                        "comment": s.comment,
                    }
                    for s in rows
                ],
                indent=2,
            )
        )
        return 0
    for s in rows:
        print(
            f"{s.id}  {silences.state(s, now):8} {utc(s.starts_at)} -> {utc(s.ends_at)}  {s.created_by}: "
            f"{', '.join(s.matchers)}  ({s.comment})"
        )
    if not rows:
        print("no silences" if args.all else "no active or pending silences (--all shows expired ones)")
    return 0
