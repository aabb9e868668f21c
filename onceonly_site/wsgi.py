import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "onceonly_site.settings")
application = get_wsgi_application()


def _warm() -> None:
    """What a web process would otherwise build on its first requests, several threads at once (gthread): every
    view module (the URLconf), the pooled HTTP client of signed dispatch (one TLS context, not one per racing
    thread) and the Celery task modules. Each gunicorn worker runs it once as it boots, before it accepts."""
    from django.urls import get_resolver

    from governance import dispatch
    from onceonly_site.celery import app

    get_resolver().url_patterns  # noqa: B018  (imports every view module)
    dispatch.client()
    app.loader.import_default_modules()


_warm()
