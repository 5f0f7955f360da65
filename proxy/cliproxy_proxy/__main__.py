"""``cliproxy-proxy --config PATH``: serve the gateway from a config file or a mounted ConfigMap directory.

``cliproxy-proxy --check PATH`` validates a config (its secret files included) and lists what it ignores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aiohttp import web

from .accesslog import RedactingAccessLogger
from .app import PROXY, create_app
from .config import ConfigError, ProxyConfig
from .kubesource import ApiServer, KubeSource, in_cluster_namespace
from .loader import ConfigSource
from .oauth.vendors import Sessions
from .runtime import build_credentials, build_runtime


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cliproxy-proxy", description=__doc__)
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--config", help="config file, or a directory holding config.yaml")
    what.add_argument("--check", metavar="CONFIG", help="validate this config, list what it ignores, and exit")
    parser.add_argument("--secrets-dir", help="directory of secret files (a mounted Secret)")
    parser.add_argument("--host", help="bind address (overrides the config's host)")
    parser.add_argument("--port", type=int, help="listen port (overrides the config's port)")
    parser.add_argument("--metrics-port", type=int, help="serve /metrics on this port instead (overrides metrics-port)")
    parser.add_argument("--reload-interval", type=float, default=1.0, help="seconds between config checks")
    parser.add_argument("--shutdown-timeout", type=float, default=60.0, help="seconds to drain in-flight requests")
    parser.add_argument("--log-format", choices=("text", "json"), default="text")
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--access-log", action="store_true", help="log every request")
    kube = parser.add_argument_group("Kubernetes source", "read the rendered ConfigMap and Secret through the API")
    kube.add_argument("--kube-name", help="name of the ConfigMap and Secret to watch (cliproxy-<gateway>)")
    kube.add_argument("--kube-namespace", help="their namespace (default: the pod's own)")
    kube.add_argument("--kube-api", help="API server URL (default: the in-cluster service account)")
    kube.add_argument("--kube-token-file", type=Path, help="with --kube-api: a file holding the bearer token")
    kube.add_argument("--kube-ca-file", type=Path, help="with --kube-api: the CA bundle that signs the server")
    kube.add_argument(
        "--kubeconfig", nargs="?", const="", default=None, metavar="PATH",
        help="reach the API as a kubeconfig's current context says (no PATH: $KUBECONFIG, else ~/.kube/config); "
        "for a proxy outside a pod",
    )  # fmt: skip
    kube.add_argument("--kube-context", help="with --kubeconfig: the context to use instead of the current one")
    return parser


def _source(args: argparse.Namespace) -> ConfigSource:
    if not args.kube_name:
        return ConfigSource(args.config, args.secrets_dir)
    if args.kubeconfig is not None:
        api = ApiServer.from_kubeconfig(args.kubeconfig or None, args.kube_context)
    elif args.kube_api:
        api = ApiServer(args.kube_api, token_file=args.kube_token_file, ca_file=args.kube_ca_file)
    else:
        api = ApiServer.in_cluster()
    namespace = args.kube_namespace or in_cluster_namespace()
    if not namespace:
        raise ConfigError("(kubernetes): pass --kube-namespace, the pod's namespace is not known outside a cluster")
    return KubeSource(args.config, args.secrets_dir, api=api, namespace=namespace, name=args.kube_name)


def _setup_logging(fmt: str, level: str) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(
        JsonFormatter() if fmt == "json" else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    logging.basicConfig(level=level.upper(), handlers=[handler])


def load_app(source: ConfigSource, reload_interval: float, *, host: str | None = None,
             metrics_port: int | None = None) -> web.Application:  # fmt: skip
    """Validate the initial config (raising ConfigError) and build the application around it.

    A Kubernetes source may start from an empty or invalid volume: the API may hold a good config, so the
    proxy starts empty and not ready, and waits for it.
    """
    sessions = Sessions()
    try:
        config, _ = source.read_config()
        credentials = build_credentials(config, source, sessions)
    except ConfigError as error:
        if not isinstance(source, KubeSource):
            raise
        logging.getLogger("cliproxy.proxy").warning("no usable config in the volume (%s); waiting for the API", error)
        empty = build_runtime(ProxyConfig(), None)
        return create_app(empty, source, reload_interval=reload_interval, configured=False,
                          host=host, metrics_port=metrics_port)  # fmt: skip
    fingerprint = source.fingerprint(credentials[1])
    runtime = build_runtime(config, source, fingerprint=fingerprint, credentials=credentials, sessions=sessions)
    listen = host if host is not None else (config.host or None)
    return create_app(runtime, source, reload_interval=reload_interval, host=listen, metrics_port=metrics_port)


def check(path: str, secrets_dir: str | None) -> int:
    """Validate a config as a load would, secret files included; 0 when it would serve, 2 otherwise."""
    source = ConfigSource(path, secrets_dir)
    try:
        config, _ = source.read_config()
        runtime = build_runtime(config, source)
    except ConfigError as error:
        print(f"cliproxy-proxy: invalid config: {error}", file=sys.stderr)
        return 2
    print(f"{source.config_file()}: valid: {len(runtime.credentials)} credentials, {len(runtime.routes)} models")
    if config.ignored:
        print(f"{len(config.ignored)} cliproxyapi++ settings are accepted but not implemented:")
        print("".join(f"  {note}\n" for note in config.ignored), end="")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _setup_logging(args.log_format, "ERROR" if args.check is not None else args.log_level)
    if args.check is not None:  # its findings are its output, not log lines
        return check(args.check, args.secrets_dir)
    try:
        source = _source(args)
        app = load_app(source, args.reload_interval, host=args.host, metrics_port=args.metrics_port)
    except ConfigError as error:
        print(f"cliproxy-proxy: invalid config: {error}", file=sys.stderr)
        return 2
    runtime = app[PROXY].runtime
    host = args.host if args.host is not None else (runtime.config.host or None)
    port = args.port or runtime.config.port
    logging.getLogger("cliproxy.proxy").info("serving %d models on %s:%d", len(runtime.routes), host or "0.0.0.0", port)
    web.run_app(
        app,
        host=host,
        port=port,
        shutdown_timeout=args.shutdown_timeout,
        access_log=logging.getLogger("aiohttp.access") if args.access_log else None,
        print=None,
        loop=_loop(),
        **server_options(runtime.config),
    )
    return 0


def server_options(config: ProxyConfig) -> dict[str, Any]:
    """What the listener enforces on clients.

    A connection waits at most ``client-timeouts.headers`` for a request's headers (aiohttp's keep-alive timer
    runs from the connection's start and is not reset by bytes that trickle in); the rest of a refused body is
    read away for at most a second; a client that leaves cancels its handler, and with it the upstream call.
    """
    return {
        "keepalive_timeout": config.client_timeouts.headers,
        "lingering_time": 1.0,
        "handler_cancellation": True,
        "access_log_class": RedactingAccessLogger,
    }


def _loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


if __name__ == "__main__":
    sys.exit(main())
