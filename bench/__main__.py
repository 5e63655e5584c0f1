"""``python -m bench [--quick] [NAME ...]``: run the benchmarks, each in a process of its own.

Prints every benchmark's figure lines as they come and exits with status 1 when one of
them failed (a correctness check, or a crash); a missed target is reported, not a failure.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

from bench.common import ROOT

BENCHMARKS = {
    "encode": "remote-write encoding, 100,000 series",
    "evaluate": "one evaluation of a counter rule, 1,000 to 1,000,000 series, end to end",
    "catchup": "restart after 24 h down, default rules; and a one-query-per-window evaluator",
    "catchup_large": "a day of catch-up for a rule of 100,000 series (144 million points)",
    "idle": "resident memory of tempo-bridge run after 10 windows",
    "parse": "parsing Tempo's answers, 1,000 to 1,000,000 series, per parser",
    "exemplars": "one steady evaluation with exemplars (one-window range query) and without",
    "receiver": "Prometheus's own time to take one evaluation's samples, 100,000 and 1,000,000",
    "daemon": "tempo-bridge run as a whole, one rule of 100,000 series, window after window",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="benchmarks: " + "; ".join(f"{k}: {v}" for k, v in BENCHMARKS.items()),
    )
    parser.add_argument("--quick", action="store_true", help="small sizes (what CI runs)")
    parser.add_argument("names", nargs="*", choices=[[], *BENCHMARKS], metavar="NAME",
                        help=f"benchmarks to run (default: all of {', '.join(BENCHMARKS)})")
    args = parser.parse_args(argv)
    failed = []
    for name in args.names or BENCHMARKS:
        started = time.monotonic()
        code = subprocess.call(
            [sys.executable, "-m", f"bench.{name}", *(["--quick"] if args.quick else [])],
            cwd=ROOT,
        )
        print(f"[{name}] # finished in {time.monotonic() - started:.1f} s, exit status {code}",
              flush=True)
        if code:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
