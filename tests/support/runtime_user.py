"""Run an entry point as the images run it: uid/gid 10001 with no passwd entry, no USER, LOGNAME or HOME.

Anything that asks the passwd database who we are crashes there and nowhere else. The process becomes uid 10001
in a user namespace of its own (``unshare --user --map-user``): ``getuid()`` says 10001 and the passwd database
has no such entry, as in the image, while the interpreter (which may live in a home directory only root can
enter) stays readable.
"""

from __future__ import annotations

import pwd
import shutil
import subprocess
import sys
from pathlib import Path

RUNTIME_UID = 10001  # deploy/docker/*.Dockerfile: USER 10001:10001


def runtime_user_env(**extra: str) -> dict[str, str]:
    """The image's environment: PATH and what the chart sets, nothing that names a user or a home."""
    return {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1", **extra}


def as_runtime_user(command: list[str]) -> list[str]:
    """``command`` run as uid/gid 10001 in a user namespace."""
    return ["unshare", "--user", f"--map-user={RUNTIME_UID}", f"--map-group={RUNTIME_UID}", *command]


def check_runtime_user() -> None:
    """Fail (not skip) when the conditions cannot be reproduced here: the test would prove nothing."""
    try:
        pwd.getpwuid(RUNTIME_UID)
    except KeyError:
        pass
    else:
        raise AssertionError(f"uid {RUNTIME_UID} has a passwd entry here; the test would prove nothing")
    assert shutil.which("unshare"), "unshare (util-linux) is needed to run as the image's uid"
    probe = subprocess.run(as_runtime_user(["id", "-u"]), capture_output=True, text=True, env=runtime_user_env())
    assert probe.stdout.strip() == str(RUNTIME_UID), f"cannot enter a user namespace as {RUNTIME_UID}: {probe.stderr}"
