# The dashboard (with its embedded broker and one local worker), or a worker in team mode.
# A container serves 0.0.0.0, so `up` refuses to start without access control: run it with
# -e APPROXIMANT_EDITOR_PASSWORD=… (or OIDC, docs/security.md).
# Untested here: these machines have no Docker engine. See README "Docker".
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    APPROXIMANT_DATA_DIR=/data

WORKDIR /srv/approximant
COPY pyproject.toml README.md ./
COPY approximant ./approximant
COPY app ./app
COPY engine ./engine
COPY storage ./storage
COPY tasks ./tasks
COPY examples ./examples
RUN pip install .

VOLUME ["/data"]
EXPOSE 8501
HEALTHCHECK CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8501/_stcore/health')"
CMD ["approximant", "up", "--host", "0.0.0.0", "--port", "8501"]
