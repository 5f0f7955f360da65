# cliproxy-operator: the kopf operator that renders ProviderRoutes/ProviderCredentials into proxy config.
#
# Build from the repo root (the build context must be the repo root):
#   docker build -f deploy/docker/operator.Dockerfile -t cliproxy-operator:dev .
# Only pyproject.toml, README.md, proxy/, operator/ and deploy/docker/requirements.txt are copied in, so no
# .dockerignore is needed (BuildKit transfers only the paths the COPY instructions name).

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
# requirements.txt is a constraints file: pip picks what `cliproxy[operator]` needs (kopf, kubernetes and the
# proxy's own dependencies, which the operator imports), at the pinned versions, offline from /wheels.
# The entry point runs as the runtime user (uid 10001, no passwd entry, no USER/LOGNAME/HOME), so what
# crashes only there fails the build, not the pod.
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-index --find-links /wheels -c /src/requirements.txt "cliproxy[operator]" \
 && /opt/venv/bin/pip uninstall --yes pip setuptools \
 && setpriv --reuid=10001 --regid=10001 --clear-groups \
      env -i PATH=/opt/venv/bin:/usr/local/bin:/usr/bin:/bin cliproxy-operator --check

# ---- runtime: the venv only, non-root, exec-form entrypoint (no shell needed) ----
FROM python:3.11.14-slim-bookworm AS runtime

LABEL org.opencontainers.image.title="cliproxy-operator" \
      org.opencontainers.image.description="Kubernetes-native multi-provider LLM API gateway (operator)" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
COPY --from=builder /opt/venv /opt/venv

USER 10001:10001
ENTRYPOINT ["cliproxy-operator", "--all-namespaces"]
