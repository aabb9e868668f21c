import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "onceonly_site.settings")
application = get_wsgi_application()


def _warm() -> None:
    """What a web process would otherwise build on its first requests, several threads at once (gthread): every
    view module (the URLconf), what each app's ``warm()`` builds (governance: the dispatch client) and the Celery
    task modules. Each gunicorn worker runs it once as it boots, before it accepts."""
    from django.apps import apps
    from django.urls import get_resolver

    from onceonly_site.celery import app

    get_resolver().url_patterns  # noqa: B018  (imports every view module)
    for config in apps.get_app_configs():
        warm = getattr(config, "warm", None)
        if callable(warm):
            warm()
    app.loader.import_default_modules()


_warm()
