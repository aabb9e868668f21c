from django.apps import AppConfig


class IdempotencyConfig(AppConfig):
    name = "idempotency"
    verbose_name = "Exactly-once: locks, leases and runs"

    def ready(self) -> None:
        from importlib import import_module

        from django.conf import settings

        import idempotency.handlers  # noqa: F401  (the built-in demo.* job handlers)
        from billing import panels
        from idempotency.panels import runs_panel

        panels.register(runs_panel)

        for module in settings.ONCEONLY_JOB_HANDLER_MODULES:
            import_module(module)  # the project's own job handlers (idempotency.jobs.handler)
