from django.apps import AppConfig


class GovernanceConfig(AppConfig):
    name = "governance"
    verbose_name = "Governance: agents, policies, tools and decisions"

    def ready(self) -> None:
        from billing import notifications, panels
        from governance import approval_selectors, approvals, channels
        from governance.panels import operations_panel
        from governance.runs import connect_approvals, execute_action
        from idempotency import jobs

        panels.register(operations_panel, with_request=True, first=True)
        jobs.set_action_executor(execute_action)
        approval_selectors.register()  # the navigation's pending count, kept by every process that changes one
        # The retention sweep keeps the history of agents on legal hold (docs/operations.md §"Retention").
        from governance.holds import held_agents
        from idempotency.services import set_held_agents_reader

        set_held_agents_reader(held_agents)
        connect_approvals()  # keyed runs waiting for an approval hear of its decision (docs/runs.md)
        from governance.run_caps import connect_pauses

        connect_pauses()  # a keyed run paused at a per-run cap: an alert and the channels (docs/runs.md)
        from billing import usage
        from governance.alerts import after_quota

        if after_quota not in usage.QUOTA_LISTENERS:  # check-lock's and leases' quota alerts (docs/governance.md)
            usage.QUOTA_LISTENERS.append(after_quota)
        # Notification channels and email hear of approval requests and decisions (docs/notifications.md).
        for listeners, listener in (
            (approvals.REQUESTED, channels.on_approval_requested),
            (approvals.SETTLED, channels.on_approval_settled),
        ):
            if listener not in listeners:  # ready() may run more than once (tests that reload apps)
                listeners.append(listener)
        if channels.on_notice not in notifications.LISTENERS:  # tool errors and failed runs
            notifications.LISTENERS.append(channels.on_notice)

    def warm(self) -> None:
        """At a web process's boot (onceonly_site/wsgi.py): the pooled HTTP client of signed dispatch, built once
        rather than by several of the process's first requests at once (each with a TLS context of its own); and,
        when export is on, the OpenTelemetry exporter and its thread (else the first call would import the SDK)."""
        from governance import dispatch
        from onceonly_site import telemetry

        dispatch.client()
        try:
            telemetry.tracer()
        except Exception:  # a process without export still serves: the first span tries again
            telemetry.logger.warning("OpenTelemetry export could not be set up", exc_info=True)
