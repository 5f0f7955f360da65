"""``cliproxy-operator``: run the kopf operator with the usual kubeconfig or the pod's service account."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import secrets
import signal
import socket
import sys
from collections.abc import Sequence

import kopf

from .kopf_quiet import QuietSuccesses
from .kube import NAMESPACES_ENV

STOP_GRACE_SECONDS = 10.0  # how long kopf may take to stop once its credentials are gone


class LoginLost(logging.Filter):
    """Notices kopf's ``LoginError`` (the API refuses every credential we have) in its log records.

    kopf logs it once per watcher, with a traceback, then waits for ever for a re-login that cannot succeed (it
    does not even stop on SIGTERM). This filter drops those records and wakes :func:`_run`, which stops the
    operator and exits non-zero with one line.
    """

    def __init__(self) -> None:
        super().__init__()
        self.error: kopf.LoginError | None = None
        self.event = asyncio.Event()
        self.loop: asyncio.AbstractEventLoop | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if not isinstance(error, kopf.LoginError):
            return True
        if self.error is None and self.loop is not None:
            self.error = error
            self.loop.call_soon_threadsafe(self.event.set)
        return False


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cliproxy-operator", description=__doc__)
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument("--namespace", "-n", action="append", help="watch this namespace (repeatable)")
    scope.add_argument("--all-namespaces", "-A", action="store_true", help="watch every namespace (the default)")
    parser.add_argument("--peering", help="leader election through kopf peering under this name (else standalone)")
    parser.add_argument("--priority", type=int, default=0, help="peering priority; the highest one is active")
    parser.add_argument("--liveness", default=None, help="serve kopf's liveness probe at this URL")
    parser.add_argument("--log-format", choices=("json", "plain"), default="json")
    parser.add_argument("--verbose", action="store_true")
    parser.add_argument(
        "--check", action="store_true",
        help="resolve the identity and load the handlers, then exit without a cluster (the image build runs it "
        "as the runtime user)",
    )  # fmt: skip
    return parser


def identity() -> str:
    """Who this operator is among its peers, without the passwd database.

    kopf's own guess asks ``getpass.getuser()``, which fails for a uid with no passwd entry: exactly how the
    image runs (uid 10001 on a slim base). The pod's name (the chart passes ``POD_NAME``) says the most; outside
    a pod, the host name and process id do.
    """
    pod = os.environ.get("POD_NAME") or os.environ.get("POD_ID")
    return pod or f"{socket.gethostname()}/{os.getpid()}/{secrets.token_hex(3)}"


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    log_format = kopf.LogFormat.JSON if args.log_format == "json" else kopf.LogFormat.PLAIN
    kopf.configure(verbose=args.verbose, log_format=log_format)
    lost = LoginLost()
    for handler in logging.getLogger().handlers:
        handler.addFilter(lost)
    if not args.verbose:
        logging.getLogger("kopf.objects").addFilter(QuietSuccesses())
    if args.namespace:  # read by the handlers at import: nothing cluster-scoped is watched then
        os.environ[NAMESPACES_ENV] = ",".join(args.namespace)
    from . import handlers  # noqa: F401  (registers the handlers)

    me = identity()
    if args.check:
        print(f"cliproxy-operator: start-up check passed (identity {me})")
        return 0
    try:
        asyncio.run(_run(args, me, lost))
    except kopf.LoginError:
        # Its credentials are gone (say, its ServiceAccount went with its namespace): exit for the kubelet to
        # restart it with fresh ones, rather than hang or crash with a traceback.
        print("cliproxy-operator: cannot log in to the Kubernetes API: it refuses the operator's credentials "
              "(was its ServiceAccount or namespace deleted?); exiting", file=sys.stderr)  # fmt: skip
        return 1
    return 0


def stop_on_signals(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
    """SIGTERM and SIGINT set ``stop``, even when asyncio's own signal handling would lose them.

    asyncio (and kopf through it) learns of a signal from a byte the C handler writes to the loop's self-pipe.
    Every thread that hands a result back (each ``asyncio.to_thread`` call) writes a byte there too; a busy
    loop with a few hundred of those unread fills the pipe, and then the signal's byte is dropped: the kubelet's
    SIGTERM was ignored after a storm of namespace deletions. A Python-level handler runs whatever the pipe
    holds, and ``call_soon_threadsafe`` queues its callback before it tries to wake the loop.
    """

    def handler(signum: int, _: object) -> None:
        with contextlib.suppress(RuntimeError):  # the loop has closed: nothing left to stop
            loop.call_soon_threadsafe(stop.set)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, handler)


async def _run(args: argparse.Namespace, me: str, lost: LoginLost) -> None:
    loop = lost.loop = asyncio.get_running_loop()
    ready, stop = asyncio.Event(), asyncio.Event()
    operator = asyncio.create_task(kopf.operator(
        identity=me,  # type: ignore[arg-type]  # kopf's Identity is a NewType of str it does not export
        standalone=args.peering is None,
        peering_name=args.peering,
        priority=args.priority,
        namespaces=args.namespace or [],
        clusterwide=not args.namespace,
        liveness_endpoint=args.liveness,
        ready_flag=ready,
        stop_flag=stop,
    ))  # fmt: skip
    login_lost = asyncio.create_task(lost.event.wait())
    started = asyncio.create_task(ready.wait())
    await asyncio.wait({operator, login_lost, started}, return_when=asyncio.FIRST_COMPLETED)
    if started.done():  # kopf has put its signal handlers in by now: ours replace them (it still hears the pipe)
        stop_on_signals(loop, stop)
    started.cancel()
    await asyncio.wait({operator, login_lost}, return_when=asyncio.FIRST_COMPLETED)
    if operator.done():
        login_lost.cancel()
        return operator.result()
    operator.cancel()
    with contextlib.suppress(BaseException):
        await asyncio.wait_for(operator, STOP_GRACE_SECONDS)
    assert lost.error is not None
    raise lost.error


if __name__ == "__main__":
    sys.exit(main())
