# cliproxy-proxy: the aiohttp LLM gateway.
#
# Build from the repo root (the build context must be the repo root):
#   docker build -f deploy/docker/proxy.Dockerfile -t cliproxy-proxy:dev .
# Only pyproject.toml, README.md, proxy/, operator/ and deploy/docker/requirements.txt are copied in, so no
# .dockerignore is needed (BuildKit transfers only the paths the COPY instructions name).
#
# The same image also carries `cliproxy-demo-upstream` (a local fake provider used by deploy/e2e/kind-e2e.sh).

# ---- builder: build the project wheel and a venv with the pinned dependencies ----
FROM python:3.11.14-slim-bookworm AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY deploy/docker/requirements.txt /src/requirements.txt
COPY pyproject.toml README.md /src/
COPY proxy /src/proxy
COPY operator /src/operator

# The project wheel (setuptools comes from build isolation), then every pinned dependency as a wheel.
RUN pip wheel --no-deps --wheel-dir /wheels /src \
 && pip wheel --wheel-dir /wheels -r /src/requirements.txt
# requirements.txt is a constraints file: pip picks only what `cliproxy` (no extras) needs, at the pinned versions,
# offline from /wheels.
# The entry point runs as the runtime user (uid 10001, no passwd entry, no USER/LOGNAME/HOME), so what
# crashes only there fails the build, not the pod.
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-index --find-links /wheels -c /src/requirements.txt cliproxy \
 && /opt/venv/bin/pip uninstall --yes pip setuptools \
 && setpriv --reuid=10001 --regid=10001 --clear-groups \
      env -i PATH=/opt/venv/bin:/usr/local/bin:/usr/bin:/bin cliproxy-proxy --help > /dev/null

# ---- runtime: the venv only, non-root, exec-form entrypoint (no shell needed) ----
FROM python:3.11.14-slim-bookworm AS runtime

LABEL org.opencontainers.image.title="cliproxy-proxy" \
      org.opencontainers.image.description="Kubernetes-native multi-provider LLM API gateway (proxy)" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
COPY --from=builder /opt/venv /opt/venv

USER 10001:10001
EXPOSE 8317
ENTRYPOINT ["cliproxy-proxy"]
CMD ["--config", "/etc/cliproxy/config", "--secrets-dir", "/etc/cliproxy/secrets", "--host", "0.0.0.0", "--port", "8317", "--log-format", "json"]
