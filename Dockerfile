# OnceOnly Server — one image for every process (web, worker, beat, migrate); the command picks the script.
# A thin wrapper over deploy/*.sh, which are what the test suite runs (tests/deploy/test_production.py): the image
# adds only the Python base, a user, and the paths. See docs/operations.md, "Docker Compose".
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    ONCEONLY_VAR_DIR=/var/lib/onceonly \
    ONCEONLY_BIND=0.0.0.0:8000

RUN useradd --system --home-dir /opt/onceonly --shell /usr/sbin/nologin onceonly \
    && mkdir -p /opt/onceonly /var/lib/onceonly \
    && chown onceonly:onceonly /opt/onceonly /var/lib/onceonly
WORKDIR /opt/onceonly

# The code, then deploy/install.sh (its virtualenv in /opt/onceonly/.venv): a code change reinstalls the dependencies
# too, as the editable install needs the code; keep the image build on a machine with a pip cache or a mirror.
COPY --chown=onceonly:onceonly pyproject.toml README.md ./
COPY --chown=onceonly:onceonly deploy/ deploy/
COPY --chown=onceonly:onceonly onceonly_site/ onceonly_site/
COPY --chown=onceonly:onceonly billing/ billing/
COPY --chown=onceonly:onceonly idempotency/ idempotency/
COPY --chown=onceonly:onceonly governance/ governance/
COPY --chown=onceonly:onceonly templates/ templates/
COPY --chown=onceonly:onceonly static/ static/
COPY --chown=onceonly:onceonly manage.py LICENSE ./
USER onceonly
RUN deploy/install.sh

VOLUME ["/var/lib/onceonly"]
EXPOSE 8000
CMD ["deploy/web.sh"]
