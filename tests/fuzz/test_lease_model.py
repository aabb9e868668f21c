"""The lease state machine against a model (Hypothesis stateful testing), through the real services (Redis Lua +
database): random sequences of acquire, extend, complete, fail and cancel — by the current holder, by stale
holders and with made-up lease ids — on a few keys.

The model: a key is free, held (lease id, version), completed (result), failed or cancelled. Acquire on a free,
failed or cancelled key acquires with version + 1; on a held key it polls; on a completed key it replays the
result. Only the current holder moves a held key; anyone else gets LeaseMismatch and changes nothing. A terminal
key never changes again except by a new acquisition (failed, cancelled): its result, version and status hold.
"""

import uuid

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test

from billing.auth import plan_limits_for
from idempotency import services
from idempotency.models import Lease

KEYS = ["k1", "k2", "k3"]
RESULTS = st.sampled_from([{"v": 1}, {"v": 2}, {"ok": True}])


class LeaseMachine(RuleBasedStateMachine):
    account_id: int = 0
    leases = Bundle("leases")  # (key, lease_id) pairs ever handed out, current or stale

    @initialize()
    def fresh_namespace(self):
        self.prefix = uuid.uuid4().hex[:8]  # every run its own keys: no cleanup between examples
        self.plan = plan_limits_for(self.account_id)
        self.model: dict[str, dict] = {key: {"state": "free", "version": 0} for key in KEYS}

    def k(self, key):
        return f"{self.prefix}:{key}"

    def holder_of(self, key):
        entry = self.model[key]
        return entry.get("lease_id") if entry["state"] == "held" else None

    @rule(target=leases, key=st.sampled_from(KEYS))
    def acquire(self, key):
        entry = self.model[key]
        out = services.lease_acquire(
            account_id=self.account_id, plan=self.plan, key=self.k(key), ttl=3600, metadata=None
        )
        if entry["state"] in ("free", "failed", "cancelled"):
            assert out.status == "acquired" and out.holder
            assert out.lease.version == entry["version"] + 1
            entry.update(state="held", lease_id=out.lease.lease_id, version=out.lease.version)
            return (key, out.lease.lease_id)
        if entry["state"] == "held":
            assert out.status == "polling" and not out.holder
        else:
            assert out.status == "completed" and out.lease.result == entry["result"]
        assert out.lease.version == entry["version"]
        return (key, f"lease_made-up-{uuid.uuid4().hex[:6]}")  # a non-holder's guess

    def _finish(self, pair, action, terminal, **extra):
        key, lease_id = pair
        entry = self.model[key]
        before = dict(entry)
        try:
            out = action(account_id=self.account_id, key=self.k(key), lease_id=lease_id, **extra)
        except services.LeaseMismatch:
            assert self.holder_of(key) != lease_id or entry["state"] != "held"
            assert entry == before
            return
        except services.LeaseConflict:
            assert entry["state"] != "held"  # only a terminal key refuses its own holder's transition
            return
        if self.holder_of(key) == lease_id:
            entry.update(state=terminal, **({"result": extra["result"]} if terminal == "completed" else {}))
            entry.pop("lease_id", None)
            entry["last_holder"] = lease_id
        else:
            # An answer without a transition: the same holder repeating itself after the key went terminal.
            assert entry["state"] != "held" and entry.get("last_holder") == lease_id
            assert out.lease.status == entry["state"]

    @rule(pair=leases, result=RESULTS)
    def complete(self, pair, result):
        self._finish(pair, services.lease_complete, "completed", result=result, result_hash=None)

    @rule(pair=leases)
    def fail(self, pair):
        self._finish(pair, services.lease_fail, "failed", error_code="boom", error_hash=None)

    @rule(pair=leases)
    def cancel(self, pair):
        self._finish(pair, services.lease_cancel, "cancelled", reason="model")

    @rule(pair=leases)
    def extend(self, pair):
        key, lease_id = pair
        entry = self.model[key]
        try:
            out = services.lease_extend(
                account_id=self.account_id, plan=self.plan, key=self.k(key), lease_id=lease_id, ttl=600
            )
        except services.LeaseMismatch:
            assert self.holder_of(key) != lease_id
            return
        assert self.holder_of(key) == lease_id or entry.get("last_holder") == lease_id
        if self.holder_of(key) == lease_id:
            assert out.status == "extended"

    @invariant()
    def database_agrees_with_the_model(self):
        if not hasattr(self, "model"):
            return
        rows = {row.key: row for row in Lease.objects.filter(account_id=self.account_id, key__startswith=self.prefix)}
        for key, entry in self.model.items():
            row = rows.get(self.k(key))
            if entry["state"] == "free":
                assert row is None
                continue
            assert row.version == entry["version"]
            assert row.status == {"held": "in_progress"}.get(entry["state"], entry["state"])
            if entry["state"] == "held":
                assert row.lease_id == entry["lease_id"]
            if entry["state"] == "completed":
                assert row.result == entry["result"]


@pytest.mark.django_db(transaction=True)
def test_lease_state_machine_matches_its_model(account_a):
    LeaseMachine.account_id = account_a.pk
    run_state_machine_as_test(
        LeaseMachine,
        settings=settings(
            max_examples=60,
            stateful_step_count=30,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        ),
    )
