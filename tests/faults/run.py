"""`make faults`: the fault suite at full length, with its summary table (exit 1 on any violation).

make faults                                  # every fault, 40 s of traffic each (about 6 minutes)
python -m tests.faults.run --seconds 15      # the length `make test` runs (tests/faults/test_faults.py)
python -m tests.faults.run --only postgres_restart,redis_flushall
python -m tests.faults.run --only none --seconds 600   # a 10-minute soak: watch RSS and open files per process
"""

from __future__ import annotations

import argparse
import sys
import time

from tests.faults import suite
from tests.faults.stack import missing_tools


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=40.0, help="traffic per fault (default 40)")
    parser.add_argument("--only", default="", help="comma-separated faults: " + ", ".join(suite.FAULTS))
    parser.add_argument(
        "--held-ttl",
        type=int,
        default=None,
        metavar="SECONDS",
        help="TTL of the keys held all phase (default: the phase's length + "
        f"{suite.HELD_TTL_MARGIN} s); a shorter one shows how the checks judge leases a phase "
        "outlives",
    )
    options = parser.parse_args()
    faults = tuple(f for f in options.only.split(",") if f) or suite.FAULTS
    unknown = set(faults) - set(suite.FAULTS)
    if unknown:
        parser.error(f"unknown fault(s): {', '.join(sorted(unknown))}")
    missing = missing_tools()
    if missing:
        print("make faults needs: " + "; ".join(missing), file=sys.stderr)
        return 2
    started = time.monotonic()
    results = suite.run(
        faults,
        options.seconds,
        log=lambda m: print(f"[faults {time.strftime('%H:%M:%S')}] {m}", flush=True),
        held_ttl=options.held_ttl,
    )
    print()
    print(suite.report(results))
    violations = sum(len(r.violations) for r in results)
    leaks = sum(len(r.leaks()) for r in results)
    print(f"\n{violations} violation(s), {leaks} leak(s) in {time.monotonic() - started:.0f} s")
    return 1 if violations or leaks else 0


if __name__ == "__main__":
    sys.exit(main())
