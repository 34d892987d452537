"""``python -m bench [all|ingest|processing|dispatch|fleet|connectors|console|baseline|report]
[--quick]``: run, then write bench/RESULTS.md.

``make bench`` runs everything. A partial run (``ingest``, ``processing``, ``dispatch``,
``fleet``, ``connectors``, ``console`` or ``baseline``) replaces only its own part of
bench/results.json and rewrites RESULTS.md from it.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import common, report

FULL = {
    "deliveries": 20_000,
    "warmup": 500,
    "server_rounds": 3,
    "events": 20_000,
    "rounds": 5,
    "orders": 1_000,
}
QUICK = {
    "deliveries": 2_000,
    "warmup": 100,
    "server_rounds": 1,
    "events": 5_000,
    "rounds": 1,
    "orders": 200,
}
# Applying stored deliveries in one process: the per-delivery path takes minutes for 20,000 on
# PostgreSQL, and three contenders alternate.
PROCESSING = {"full": (5_000, 3), "quick": (1_000, 1)}
PARTS = ("ingest", "processing", "dispatch", "fleet", "connectors", "console", "baseline")


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument(
        "part",
        nargs="?",
        choices=(
            "all",
            "ingest",
            "processing",
            "dispatch",
            "fleet",
            "connectors",
            "console",
            "baseline",
            "report",
        ),
        default="all",
        help="report: only write RESULTS.md and latency.png again from bench/results.json",
    )
    p.add_argument("--quick", action="store_true", help="fewer deliveries and events")
    p.add_argument("--deliveries", type=int, help="signed deliveries posted per server")
    p.add_argument("--warmup", type=int, help="warm-up deliveries per server (not measured)")
    p.add_argument(
        "--cap-seconds",
        type=float,
        default=90.0,
        help="end an ingest run's slices after this long (posts in flight are still awaited)",
    )
    p.add_argument(
        "--process-wait",
        type=float,
        default=300.0,
        help="how long to wait, after the last 200, for waconv to process every delivery",
    )
    p.add_argument(
        "--server-rounds",
        type=int,
        help="rounds per server of ingest and connectors (the median is reported)",
    )
    p.add_argument("--events", type=int, help="conversions per dispatch run")
    p.add_argument("--rounds", type=int, help="dispatch rounds (the median is reported)")
    p.add_argument("--orders", type=int, help="Shopify webhooks in the connectors burst")
    p.add_argument(
        "--report-conversions",
        type=int,
        help="conversions in the ads report's store (default 1,000,000; --quick 100,000)",
    )
    p.add_argument(
        "--backends", default="sqlite,postgresql", help="comma-separated: sqlite,postgresql"
    )
    p.add_argument(
        "--contenders", default="bare,pywa,waconv", help="ingest servers, comma-separated"
    )
    p.add_argument(
        "--profile",
        action="store_true",
        help="record the waconv ingest runs with py-spy (raw stacks in the work directory)",
    )
    p.add_argument(
        "--commit",
        help="baseline: the earlier commit measured beside today's code (default: 0.3.1's)",
    )
    p.add_argument("--workdir", type=Path, help="keep databases, logs and profiles here")
    return p.parse_args(argv)


def _commands(data: dict[str, Any]) -> list[str]:
    return sorted({data[k]["command"] for k in PARTS if k in data})


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    # SIGTERM (make interrupted, a CI timeout) unwinds like Ctrl-C, so servers are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    data: dict[str, Any] = report.load()
    if args.part == "report":
        report.write(data, _commands(data))
        return 0
    sizes = dict(QUICK if args.quick else FULL)
    for key in sizes:
        if getattr(args, key) is not None:
            sizes[key] = getattr(args, key)
    backends = [b for b in args.backends.split(",") if b]
    if args.part in ("all", "ingest", "baseline") and shutil.which("wrk") is None:
        print("wrk is missing: apt-get install wrk (Debian/Ubuntu)", file=sys.stderr)
        return 2
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="waconv-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    common.log(f"work directory: {workdir}")

    data["machine"] = common.machine_info()
    date = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    command = "python -m bench " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    if args.part in ("all", "ingest"):
        from bench import ingest

        result = ingest.run(
            deliveries=sizes["deliveries"],
            warmup=sizes["warmup"],
            backends=backends,
            contenders=[c for c in args.contenders.split(",") if c],
            workdir=workdir,
            cap_seconds=args.cap_seconds,
            process_wait=args.process_wait,
            profile=args.profile,
            rounds=sizes["server_rounds"],
        )
        data["ingest"] = {"date": date, "command": command.strip(), **result.to_dict()}
        report.save(data)
    if args.part in ("all", "processing"):
        from bench import processing

        count, rounds = PROCESSING["quick" if args.quick else "full"]
        presult = processing.run(
            deliveries=count, rounds=rounds, backends=backends, workdir=workdir
        )
        data["processing"] = {"date": date, "command": command.strip(), **presult.to_dict()}
        report.save(data)
    if args.part in ("all", "dispatch"):
        from bench import dispatch

        dresult = dispatch.run(
            events=sizes["events"], rounds=sizes["rounds"], backends=backends, workdir=workdir
        )
        data["dispatch"] = {"date": date, "command": command.strip(), **dresult.to_dict()}
        report.save(data)
    if args.part in ("all", "fleet"):
        from bench import fleet

        fresult = fleet.run(**(fleet.QUICK if args.quick else fleet.FULL), workdir=workdir)
        data["fleet"] = {"date": date, "command": command.strip(), **fresult}
        report.save(data)
    if args.part in ("all", "connectors"):
        from bench import connectors

        cresult = connectors.run(
            orders=sizes["orders"],
            backends=backends,
            workdir=workdir,
            rounds=sizes["server_rounds"],
        )
        data["connectors"] = {"date": date, "command": command.strip(), **cresult.to_dict()}
        report.save(data)

    if args.part in ("all", "console"):
        from bench import console

        scale = dict(console.QUICK if args.quick else console.FULL)
        if args.report_conversions:
            scale = {"conversions": args.report_conversions, "clicks": args.report_conversions // 5}
        runs = console.run(**scale, backends=backends, workdir=workdir)
        data["console"] = {
            "date": date,
            "command": command.strip(),
            "runs": [r.to_dict() for r in runs],
        }
        report.save(data)
    if args.part in ("all", "baseline"):
        from bench import baseline

        bresult = baseline.run(
            commit=args.commit or baseline.BASELINE,
            deliveries=sizes["deliveries"],
            warmup=sizes["warmup"],
            events=sizes["events"],
            rounds=sizes["server_rounds"],
            backends=backends,
            workdir=workdir,
        )
        data["baseline"] = {"date": date, "command": command.strip(), **bresult}
        report.save(data)
    report.write(data, _commands(data))
    common.log(f"wrote {report.RESULTS_MD.relative_to(common.REPO)} and latency.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
