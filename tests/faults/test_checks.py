"""The fault suite's lease checks on a synthetic journal (no stack): a lease is judged against the TTL it was taken
with, recorded with its acquisition, so a phase that outlives a lease's TTL reports no false violation — and a
takeover or a refused complete within that TTL is still one.
"""

from __future__ import annotations

from tests.faults.stack import ProcessUsage
from tests.faults.suite import FD_GROWTH_LIMIT, Op, PhaseResult, lease_violations, lock_violations

KEY = "lease:none-0:0:0"


def acquired(at: float, lease_id: str, ttl: int, key: str = KEY) -> Op:
    body = {"status": "acquired", "key": key, "lease_id": lease_id, "ttl": ttl}
    return Op("lease", key, at, at + 0.01, 200, body, extra={"ttl": ttl})


def completed(at: float, lease_id: str, key: str = KEY) -> Op:
    return Op("complete", key, at, at + 0.01, 200, {"status": "completed"}, extra={"lease_id": lease_id})


def refused(at: float, lease_id: str, key: str = KEY) -> Op:
    body = {"detail": {"error": "lease_mismatch"}}
    return Op("complete", key, at, at + 0.01, 409, body, extra={"lease_id": lease_id})


def test_a_lease_taken_by_another_holder_after_its_ttl_is_no_violation():
    ops = [acquired(0, "a", ttl=20), acquired(25, "b", ttl=20), completed(25.1, "b")]
    assert lease_violations(ops, held=set()) == []


def test_a_lease_taken_by_another_holder_within_its_ttl_is_a_violation():
    # A TTL longer than the suite's pool leases: the check must use this one, not a constant.
    ops = [acquired(0, "a", ttl=100), acquired(80, "b", ttl=100), completed(80.1, "b")]
    assert lease_violations(ops, held=set()) == [f"lease {KEY}: acquired by two holders at once"]


def test_a_complete_refused_after_the_ttl_is_no_violation():
    ops = [acquired(0, "a", ttl=20), acquired(25, "b", ttl=20), completed(25.1, "b"), refused(30, "a")]
    assert lease_violations(ops, held=set()) == []


def test_a_complete_refused_within_the_ttl_is_a_violation():
    ops = [acquired(0, "a", ttl=20), refused(10, "a")]
    [violation] = lease_violations(ops, held=set())
    assert violation.startswith(f"lease {KEY}: the holder's complete was refused") and "within its TTL" in violation


def test_a_held_key_outlived_by_its_phase_is_no_violation():
    """The suite's soak before the fix: a key held with a TTL the phase outlived, taken after the TTL by the pool's
    traffic, and the holder's late complete refused."""
    key = "held:none-0:0"
    ops = [acquired(0, "held", ttl=300, key=key), acquired(301, "pool", ttl=60, key=key)]
    ops += [completed(301.1, "pool", key=key), refused(420, "held", key=key)]
    assert lease_violations(ops, held={key}) == []


def test_a_held_key_taken_within_its_ttl_is_a_violation():
    key = "held:none-0:0"
    ops = [
        acquired(0, "held", ttl=300, key=key),
        acquired(200, "pool", ttl=60, key=key),
        completed(200.1, "pool", key=key),
    ]
    ops.append(refused(250, "held", key=key))
    violations = lease_violations(ops, held={key})
    assert any("two holders at once" in v for v in violations), violations
    assert any("complete was refused" in v for v in violations), violations


def locked(at: float, ttl: int) -> Op:
    key = "lock:none-0:0:0"
    return Op("check_lock", key, at, at + 0.01, 200, {"status": "locked", "key": key, "ttl": ttl}, extra={"ttl": ttl})


def test_a_check_lock_key_locked_again_after_its_ttl_is_no_violation():
    assert lock_violations([locked(0, ttl=20), locked(25, ttl=20)]) == []


def test_a_check_lock_key_locked_again_within_its_ttl_is_a_violation():
    assert lock_violations([locked(0, ttl=3600), locked(3000, ttl=3600)]) == [
        "check-lock lock:none-0:0:0: locked again within its 3600 s TTL"
    ]


def test_open_files_grown_past_the_limit_in_a_phase_are_a_leak():
    def phase(web_fds_at_end: int) -> PhaseResult:
        start = [ProcessUsage("web", "gunicorn master", 10, 90_000, 12), ProcessUsage("worker", "worker1", 20, 1, 30)]
        end = [ProcessUsage("web", "gunicorn master", 10, 95_000, web_fds_at_end), start[1]]
        return PhaseResult("none", 1.0, [], [], [], {}, {"start": start, "end": end})

    assert phase(12 + FD_GROWTH_LIMIT).leaks() == []
    assert phase(13 + FD_GROWTH_LIMIT).leaks() == [
        f"web: {FD_GROWTH_LIMIT + 1} more open files at the end of the phase than at its start"
    ]
