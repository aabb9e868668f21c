"""`make faults`: the fault suite at full length, with its summary table (exit 1 on any violation).

make faults                                  # every fault, 40 s of traffic each (about 6 minutes)
python -m tests.faults.run --seconds 15      # the length `make test` runs (tests/faults/test_faults.py)
python -m tests.faults.run --only postgres_restart,redis_flushall
python -m tests.faults.run --only none --seconds 600   # a 10-minute soak: watch RSS and open files per process
python -m tests.faults.run --scale-out       # two web nodes, two worker nodes, a Redis Cluster: its own faults
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from tests.cluster.stack import missing_tools as cluster_missing_tools
from tests.faults import suite
from tests.faults.stack import missing_tools


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=40.0, help="traffic per fault (default 40)")
    parser.add_argument(
        "--only",
        default="",
        help="comma-separated faults: "
        + ", ".join(suite.FAULTS)
        + "; with --scale-out: "
        + ", ".join(suite.SCALE_OUT_FAULTS),
    )
    parser.add_argument(
        "--scale-out",
        action="store_true",
        help="two web nodes, two Celery worker nodes and a Redis Cluster (3 primaries + 3 replicas), with the faults "
        "of that topology (docs/scaling.md)",
    )
    parser.add_argument(
        "--held-ttl",
        type=int,
        default=None,
        metavar="SECONDS",
        help="TTL of the keys held all phase (default: the phase's length + "
        f"{suite.HELD_TTL_MARGIN} s); a shorter one shows how the checks judge leases a phase "
        "outlives",
    )
    parser.add_argument("--json", metavar="FILE", help="also write each phase's counts, violations and evidence here")
    options = parser.parse_args()
    known = suite.SCALE_OUT_FAULTS if options.scale_out else suite.FAULTS
    faults = tuple(f for f in options.only.split(",") if f) or known
    unknown = set(faults) - set(known)
    if unknown:
        parser.error(f"unknown fault(s) for this topology: {', '.join(sorted(unknown))}")
    missing = missing_tools() + (cluster_missing_tools() if options.scale_out else [])
    if missing:
        print("make faults needs: " + "; ".join(missing), file=sys.stderr)
        return 2
    started = time.monotonic()
    results = suite.run(
        faults,
        options.seconds,
        log=lambda m: print(f"[faults {time.strftime('%H:%M:%S')}] {m}", flush=True),
        held_ttl=options.held_ttl,
        topology="scale_out" if options.scale_out else "single",
    )
    print()
    print(suite.report(results))
    if options.json:
        Path(options.json).write_text(json.dumps([result.summary() for result in results], indent=2, default=str))
    violations = sum(len(r.violations) for r in results)
    leaks = sum(len(r.leaks()) for r in results)
    print(f"\n{violations} violation(s), {leaks} leak(s) in {time.monotonic() - started:.0f} s")
    return 1 if violations or leaks else 0


if __name__ == "__main__":
    sys.exit(main())
