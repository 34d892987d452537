"""Instructions one dispatch run executes, today's code beside an earlier commit's
(``python -m bench.instructions [--events N] [--commit REV]``; needs valgrind).

Wall-clock rounds of the dispatch benchmark move by up to 20 % on a shared 2-core machine,
more than the differences worth finding. Valgrind's callgrind counts instructions instead,
the same to 0.2 % from one run to the next: each tree's ``Dispatcher.run_once()`` over the
same SQLite outbox, counted only while it runs (``callgrind_control -i``), the fake Graph in a
process of its own and not counted. The profiles stay in the work directory for
``callgrind_annotate`` (bench/PROFILE.md, "instructions counted, not timed").

Not part of ``make bench``: valgrind is not among the project's requirements, and a run takes
about a minute per tree.
"""

from __future__ import annotations

import argparse
import gc
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench import baseline, common

_COLLECTED = re.compile(r"Collected : (\d+)")


def _count_on(on: bool) -> None:
    subprocess.run(
        ["callgrind_control", "-i", "on" if on else "off", str(os.getpid())],
        capture_output=True,
        check=False,
    )


def worker(events: int, workdir: Path) -> None:
    """Inside valgrind: one dispatch run, counted from its start to its end only."""
    from bench import dispatch
    from waconv.conversions.dispatcher import Dispatcher

    run_once = Dispatcher.run_once

    def counted(self: Dispatcher, *args: object, **kwargs: object) -> object:
        _count_on(True)
        try:
            return run_once(self, *args, **kwargs)  # type: ignore[arg-type]
        finally:
            _count_on(False)

    Dispatcher.run_once = counted  # type: ignore[assignment,method-assign]
    rows = dispatch.make_rows(events)
    gc.freeze()
    dispatch.run_waconv(rows, "sqlite", 1, workdir)


def count(root: Path, events: int, workdir: Path, name: str) -> int:
    """Instructions of one dispatch run of ``root``'s waconv (its profile: workdir/name.cg)."""
    env = {**os.environ, "PYTHONPATH": common.tree_path(root)}
    proc = subprocess.run(
        [
            "valgrind",
            "--tool=callgrind",
            "--instr-atstart=no",
            f"--callgrind-out-file={workdir / name}.cg",
            common.PYTHON,
            "-m",
            "bench.instructions",
            "worker",
            str(events),
            str(workdir),
        ],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    found = _COLLECTED.search(proc.stderr)
    if proc.returncode or found is None:
        raise RuntimeError(f"callgrind run of {root} failed:\n{proc.stderr[-3000:]}")
    return int(found.group(1))


def main(argv: list[str]) -> int:
    if argv[:1] == ["worker"]:
        worker(int(argv[1]), Path(argv[2]))
        return 0
    parser = argparse.ArgumentParser(prog="python -m bench.instructions")
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--commit", default=baseline.BASELINE)
    args = parser.parse_args(argv)
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not installed (apt-get install valgrind)")
    workdir = Path(tempfile.mkdtemp(prefix="waconv-instructions-"))
    old = baseline.export(args.commit, workdir)
    today = count(common.REPO, args.events, workdir, "today")
    then = count(old, args.events, workdir, args.commit)
    print(f"{args.events:,} events, SQLite, Dispatcher.run_once():")
    print(f"  today          {today:>15,} instructions")
    print(f"  {args.commit:<14} {then:>15,} instructions")
    print(f"  today / then   {today / then:.3f}")
    print(f"profiles: {workdir}/*.cg (callgrind_annotate)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
