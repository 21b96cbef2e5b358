"""``python -m tests.chaos``: run chaos campaigns and write their result table as Markdown.

    python -m tests.chaos --minutes 30 --brokers 1 --brokers 3 --seed 7 --report docs/chaos-results.md
    python -m tests.chaos --short                    # the suite's profile, 75 s of faults

Exit status 0 when every check of every campaign passed, 1 otherwise (the report says which).
Findings are also appended, as they happen, to the file named by ``CHAOS_FINDINGS``.
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import sys
import tempfile
import time
from pathlib import Path

from tests.chaos.harness import Profile, markdown, run


def machine() -> str:
    load = os.getloadavg()
    return (
        f"{platform.node() or 'host'}: {os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}, "
        f"load average {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} (1/5/15 min) at the end"
    )


def main(argv: list[str] | None = None) -> int:
    # SIGTERM unwinds like Ctrl-C, so the campaign stops its components (each runs in a session
    # of its own and would outlive a campaign killed outright)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    parser = argparse.ArgumentParser(
        prog="python -m tests.chaos", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=None, help="minutes of faults per campaign (long profile)")
    parser.add_argument("--short", action="store_true", help="the suite's short profile (75 s of faults)")
    parser.add_argument(
        "--brokers",
        type=int,
        action="append",
        choices=(1, 3),
        help="1 (a single broker) or 3 (a KRaft cluster); repeat for both (default 1)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--report", type=Path, default=None, help="write the Markdown result table here")
    parser.add_argument("--run-dir", type=Path, default=None, help="logs, broker data and store (default: a temp dir)")
    args = parser.parse_args(argv)
    if (args.minutes is None) == (not args.short):
        parser.error("give --minutes N or --short")
    base = args.run_dir or Path(tempfile.mkdtemp(prefix="hpcinsight-chaos-"))
    results = []
    for brokers in args.brokers or [1]:
        profile = Profile.short(brokers, args.seed) if args.short else Profile.long(args.minutes, brokers, args.seed)
        print(
            f"chaos: {brokers} broker(s), {profile.seconds:g} s of faults, seed {args.seed}, run dir {base / f'b{brokers}'}",
            flush=True,
        )
        results.append(run(profile, base / f"b{brokers}"))
        print(markdown(results[-1:]), flush=True)
    text = markdown(results, machine())
    if args.report:
        command = "python -m tests.chaos " + " ".join(argv if argv is not None else sys.argv[1:])
        write_report(args.report, text, command)
    return 0 if all(r.passed for r in results) else 1


BEGIN, END = "<!-- chaos:latest:begin -->", "<!-- chaos:latest:end -->"


def write_report(path: Path, tables: str, command: str) -> None:
    """Put ``tables`` between the page's latest-run markers; everything else on the page (its
    findings, the history of earlier runs) stays. A page without the markers gets them at its end;
    a missing page is made of them alone."""
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    block = f"{BEGIN}\n<!-- written by `{command}` at {stamp} -->\n\n{tables.strip()}\n{END}"
    page = path.read_text() if path.exists() else ""
    if BEGIN in page and END in page and page.index(BEGIN) < page.index(END):
        page = page[: page.index(BEGIN)] + block + page[page.index(END) + len(END) :]
    else:
        page = (page.rstrip() + "\n\n" if page.strip() else "") + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page)


if __name__ == "__main__":
    sys.exit(main())
