"""Static checks of the container packaging and the kind e2e script (no Docker engine or cluster needed).

Run as a module to regenerate deploy/docker/requirements.txt from the installed environment:
    .venv/bin/python -m tests.deploy.test_packaging > deploy/docker/requirements.txt
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "deploy" / "docker"
SCRIPT = ROOT / "deploy" / "e2e" / "kind-e2e.sh"
REQUIREMENTS = DOCKER / "requirements.txt"
DOCKERFILES = {"proxy": DOCKER / "proxy.Dockerfile", "operator": DOCKER / "operator.Dockerfile"}
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SCRIPTS = PYPROJECT["project"]["scripts"]
REGENERATE = ".venv/bin/python -m tests.deploy.test_packaging > deploy/docker/requirements.txt"


# ---- requirements.txt -------------------------------------------------------------------------------------------


def runtime_closure(project: str = "cliproxy", extras: tuple[str, ...] = ("operator",)) -> dict[str, str]:
    """Installed ``name -> version`` for every requirement reachable from ``project[extras]`` (markers evaluated)."""
    found: dict[str, str] = {}
    todo = [(project, extras)]
    while todo:
        name, wanted = todo.pop()
        for req in map(Requirement, importlib.metadata.distribution(name).requires or []):
            if req.marker and not any(req.marker.evaluate({"extra": e}) for e in wanted or ("",)):
                continue
            dist = importlib.metadata.distribution(req.name)
            key = canonicalize_name(dist.metadata["Name"])
            if key not in found:
                found[key] = f"{dist.metadata['Name']}=={dist.version}"
                todo.append((req.name, tuple(req.extras)))
    return found


def render_requirements() -> str:
    header = [
        "# Pinned runtime dependencies of cliproxy (base install + the `operator` extra) at the versions in .venv.",
        "# deploy/docker/*.Dockerfile use it as a pip constraints file, so each image installs only what it needs.",
        f"# Regenerate from the repo root: {REGENERATE}",
    ]
    return "\n".join(header + sorted(runtime_closure().values(), key=str.lower)) + "\n"


def pinned() -> dict[str, str]:
    pins = {}
    for line in REQUIREMENTS.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            req = Requirement(line)
            pins[canonicalize_name(req.name)] = str(req.specifier)
    return pins


def test_requirements_header_records_the_command():
    assert REGENERATE in REQUIREMENTS.read_text().splitlines()[2]


def test_requirements_pin_every_line_exactly():
    lines = [ln for ln in REQUIREMENTS.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    assert len(lines) >= 20
    for line in lines:
        assert re.fullmatch(r"[A-Za-z0-9._-]+==[A-Za-z0-9.+!-]+", line), line


@pytest.mark.parametrize("group", ["dependencies", "operator"])
def test_requirements_cover_declared_runtime_dependencies(group):
    project = PYPROJECT["project"]
    declared = project["dependencies"] if group == "dependencies" else project["optional-dependencies"][group]
    pins = pinned()
    for spec in map(Requirement, declared):
        name = canonicalize_name(spec.name)
        assert name in pins, f"{spec.name} missing from requirements.txt"
        # the pin must satisfy the range pyproject.toml declares
        assert spec.specifier.contains(pins[name].removeprefix("=="), prereleases=True), (spec, pins[name])


def test_requirements_leave_out_dev_only_packages():
    pins = pinned()
    for dev_only in ("pytest", "ruff", "mypy", "openai", "anthropic"):
        assert dev_only not in pins


# ---- Dockerfiles ------------------------------------------------------------------------------------------------


@dataclass
class Instruction:
    keyword: str
    args: str
    stage: int  # index of the FROM this instruction belongs to


def parse_dockerfile(path: Path) -> list[Instruction]:
    """Instructions with comments dropped and backslash continuations joined."""
    instructions: list[Instruction] = []
    logical = ""
    stage = -1
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not logical and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            logical += line[:-1] + " "
            continue
        logical += line
        keyword, _, args = logical.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        assert stage >= 0, f"{path.name}: {keyword} before the first FROM"
        instructions.append(Instruction(keyword, args.strip(), stage))
        logical = ""
    assert not logical, f"{path.name}: dangling line continuation"
    return instructions


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


def final_stage(instructions: list[Instruction]) -> list[Instruction]:
    last = max(i.stage for i in instructions)
    return [i for i in instructions if i.stage == last]


@pytest.fixture(params=sorted(DOCKERFILES))
def dockerfile(request) -> tuple[str, list[Instruction]]:
    return request.param, parse_dockerfile(DOCKERFILES[request.param])


def test_parser_reads_instructions_and_continuations(tmp_path):
    sample = tmp_path / "Dockerfile"
    sample.write_text("# c\nFROM a:1 AS b\nRUN x \\\n  && y\n\nFROM a:1\nUSER 5\n")
    parsed = [(i.keyword, i.args, i.stage) for i in parse_dockerfile(sample)]
    assert parsed == [("FROM", "a:1 AS b", 0), ("RUN", "x  && y", 0), ("FROM", "a:1", 1), ("USER", "5", 1)]


def test_dockerfile_is_multi_stage_on_a_pinned_python_311_slim(dockerfile):
    _, instructions = dockerfile
    froms = [i.args.split() for i in instructions if i.keyword == "FROM"]
    assert len(froms) >= 2
    aliases = set()
    for words in froms:
        image = words[0]
        assert image not in aliases, "a stage should start from the pinned base, not another stage"
        repo, _, tag = image.partition(":")
        assert repo == "python"
        assert re.fullmatch(r"3\.11\.\d+-slim(-\w+)?", tag), f"base image not pinned to a patch tag: {image}"
        if len(words) == 3:
            assert words[1].upper() == "AS"
            aliases.add(words[2])
    assert len({words[0] for words in froms}) == 1, "builder and runtime should share one base tag"


def test_dockerfile_builds_a_wheel_and_installs_it_with_the_pins(dockerfile):
    _, instructions = dockerfile
    builder_runs = " ".join(i.args for i in instructions if i.keyword == "RUN" and i.stage == 0)
    assert "pip wheel" in builder_runs
    assert "-c /src/requirements.txt" in builder_runs and "--no-index" in builder_runs
    copies = [i.args for i in instructions if i.keyword == "COPY"]
    assert any("deploy/docker/requirements.txt" in c for c in copies)
    final_copies = [i.args for i in final_stage(instructions) if i.keyword == "COPY"]
    assert final_copies and all(c.startswith("--from=") for c in final_copies), "runtime copies from the builder only"


def test_dockerfile_runtime_runs_as_numeric_non_root_user(dockerfile):
    _, instructions = dockerfile
    users = [i.args for i in final_stage(instructions) if i.keyword == "USER"]
    assert users, "final stage sets no USER"
    uid, _, gid = users[-1].partition(":")
    assert uid == "10001" and gid in ("", "10001")
    assert not [i for i in final_stage(instructions) if i.keyword == "RUN"], "final stage should need no shell"


def test_dockerfile_build_runs_the_entry_point_as_the_runtime_user(dockerfile):
    """--help as root in the builder proved nothing: the operator crashed only as uid 10001 with no passwd entry."""
    name, instructions = dockerfile
    runs = " ".join(i.args for i in instructions if i.keyword == "RUN" and i.stage == 0)
    check = {"proxy": "cliproxy-proxy --help", "operator": "cliproxy-operator --check"}[name]
    assert re.search(r"setpriv --reuid=10001 --regid=10001 --clear-groups +env -i PATH=\S+ " + re.escape(check), runs)


def test_dockerfile_entrypoint_names_a_console_script(dockerfile):
    name, instructions = dockerfile
    final = final_stage(instructions)
    entrypoints = [exec_form(i.args) for i in final if i.keyword == "ENTRYPOINT"]
    assert len(entrypoints) == 1
    expected = {"proxy": ["cliproxy-proxy"], "operator": ["cliproxy-operator", "--all-namespaces"]}[name]
    assert entrypoints[0] == expected
    assert entrypoints[0][0] in SCRIPTS
    for cmd in (i for i in final if i.keyword == "CMD"):
        exec_form(cmd.args)


def test_proxy_image_defaults_and_port():
    final = final_stage(parse_dockerfile(DOCKERFILES["proxy"]))
    (cmd,) = [exec_form(i.args) for i in final if i.keyword == "CMD"]
    assert cmd == [
        "--config", "/etc/cliproxy/config", "--secrets-dir", "/etc/cliproxy/secrets",
        "--host", "0.0.0.0", "--port", "8317", "--log-format", "json",
    ]  # fmt: skip
    assert [i.args for i in final if i.keyword == "EXPOSE"] == ["8317"]


def test_operator_image_installs_the_operator_extra():
    runs = " ".join(i.args for i in parse_dockerfile(DOCKERFILES["operator"]) if i.keyword == "RUN")
    assert '"cliproxy[operator]"' in runs
    proxy_runs = " ".join(i.args for i in parse_dockerfile(DOCKERFILES["proxy"]) if i.keyword == "RUN")
    assert "cliproxy[operator]" not in proxy_runs


def test_proxy_default_args_are_accepted_by_the_cli():
    from cliproxy_proxy.__main__ import _parser

    final = final_stage(parse_dockerfile(DOCKERFILES["proxy"]))
    (cmd,) = [exec_form(i.args) for i in final if i.keyword == "CMD"]
    args = _parser().parse_args(cmd)
    assert (args.config, args.port, args.log_format) == ("/etc/cliproxy/config", 8317, "json")


def test_dockerfiles_copy_only_paths_that_exist():
    for path in DOCKERFILES.values():
        for instruction in parse_dockerfile(path):
            if instruction.keyword == "COPY" and not instruction.args.startswith("--from="):
                for source in instruction.args.split()[:-1]:
                    assert (ROOT / source).exists(), f"{path.name}: COPY source {source} missing"


# ---- kind e2e script --------------------------------------------------------------------------------------------


def path_without(tmp_path: Path, *hidden: str, stubs: tuple[str, ...] = ()) -> str:
    """A PATH of symlinks to everything on the current PATH except ``hidden``, plus recording stubs."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        if not os.path.isdir(directory):
            continue
        for entry in os.scandir(directory):
            target = bindir / entry.name
            if entry.name in hidden or entry.name in stubs or target.exists():
                continue
            if entry.is_file() and os.access(entry.path, os.X_OK):
                target.symlink_to(entry.path)
    for stub in stubs:
        script = bindir / stub
        script.write_text(f'#!/bin/sh\necho "{stub} $*" >> "{tmp_path}/calls"\nexit 0\n')
        script.chmod(0o755)
    return str(bindir)


def run_script(path: str) -> subprocess.CompletedProcess[str]:
    bash = shutil.which("bash")
    assert bash
    env = {"PATH": path, "HOME": os.environ.get("HOME", "/tmp")}
    return subprocess.run([bash, str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60, check=False)


def test_script_is_valid_bash():
    result = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert SCRIPT.read_text().splitlines()[0] == "#!/usr/bin/env bash"
    assert "set -euo pipefail" in SCRIPT.read_text()
    assert os.access(SCRIPT, os.X_OK)


def test_script_passes_shellcheck():
    """No Docker here to run it, so its shell is checked statically (`make test` installs Debian's shellcheck)."""
    shellcheck = shutil.which("shellcheck")
    assert shellcheck, "shellcheck is not installed: `make sysdeps` installs it (Debian package shellcheck)"
    result = subprocess.run([shellcheck, "--external-sources", str(SCRIPT)], capture_output=True, text=True,
                            check=False, cwd="/")  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_script_waits_for_every_pod_of_the_release():
    text = SCRIPT.read_text()
    wait = 'kc wait --for=condition=Ready pod -l "app.kubernetes.io/instance=$RELEASE"'
    assert wait in text
    # After the route is applied (proxies stay not ready until their first config), before the first request.
    assert text.index("kind: ProviderRoute") < text.index(wait) < text.index('step "GET /v1/models"')


def test_script_skips_without_docker_and_kind(tmp_path):
    result = run_script(path_without(tmp_path, "docker", "kind"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("SKIPPED:")
    assert "docker" in result.stdout and "kind" in result.stdout
    assert "PASSED" not in result.stdout and "==>" not in result.stdout


def test_script_names_only_the_missing_tool_and_touches_nothing(tmp_path):
    result = run_script(path_without(tmp_path, "kind", stubs=("docker", "kubectl", "helm")))
    assert result.returncode == 0, result.stderr
    (line,) = result.stdout.splitlines()
    assert line.startswith("SKIPPED:") and line.endswith("missing from PATH: kind")
    assert not (tmp_path / "calls").exists(), "the script ran a tool before deciding to skip"


def test_script_skips_when_the_docker_daemon_is_unreachable(tmp_path):
    bindir = Path(path_without(tmp_path, stubs=("kind", "kubectl", "helm")))
    docker = bindir / "docker"
    if docker.exists():
        docker.unlink()
    docker.write_text(f'#!/bin/sh\necho "docker $*" >> "{tmp_path}/calls"\nexit 1\n')
    docker.chmod(0o755)
    result = run_script(str(bindir))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("SKIPPED:") and "daemon" in result.stdout
    assert (tmp_path / "calls").read_text() == "docker info\n"


def test_script_uses_the_chart_values_and_console_scripts():
    text = SCRIPT.read_text()
    for value in ("image.proxy.repository", "image.proxy.tag", "image.operator.repository", "image.operator.tag"):
        assert f"--set {value}=" in text
    assert "--set image.repository=" in text, "the chart's shared-image layout (image.repository/tag) is handled"
    assert "deploy/helm/cliproxy" in text
    assert '"cliproxy-demo-upstream"' in text and "cliproxy-demo-upstream" in SCRIPTS
    assert "trap teardown EXIT" in text
    assert text.count("--for=condition=Ready") >= 2


def test_script_expects_the_rotated_key_within_seconds():
    """The chart's API source applies a rotated key within a second: allow ~15 s, not the kubelet's minutes."""
    text = SCRIPT.read_text()
    match = re.search(r"^ROTATION_TIMEOUT=\$\{ROTATION_TIMEOUT:-(\d+)\}$", text, re.MULTILINE)
    assert match and 5 <= int(match.group(1)) <= 15
    waits = [line for line in text.splitlines() if "chat_ok" in line and line.lstrip().startswith("wait_")]
    assert waits == [
        'wait_within "$ROTATION_TIMEOUT" "a chat completion through the proxy with the rotated key" chat_ok'
    ]
    # The clock starts at the Secret change, after the fake already refuses the old key: it times the proxy alone.
    fake_restart = text.index('"--key","demo-key-2"]')
    rotate = text.index("--from-literal=key=demo-key-2")
    assert fake_restart < text.index("the fake still accepts the old key") < rotate < text.index(waits[0])
    assert "--kube-name=" in text, "the script checks that the chart enabled the API source"
    # helm --wait would hang: proxy pods stay not ready until the first config, which needs the route applied later.
    install = text[text.index('helm install "$RELEASE"') :].split("\n\n", 1)[0]
    assert "--wait" not in install


def test_script_wait_within_times_out(tmp_path):
    text = SCRIPT.read_text()
    helper = re.search(r"^wait_within\(\) \{\n.*?^\}$", text, re.MULTILINE | re.DOTALL)
    assert helper
    script = tmp_path / "wait.sh"
    script.write_text(
        'fail() { echo "FAIL: $*"; exit 1; }\n' + helper.group(0) + "\n"
        'wait_within 5 "a marker file" test -e "$1"\necho ok\nwait_within 1 "never" false\n'
    )
    marker = tmp_path / "marker"
    marker.touch()
    result = subprocess.run(["bash", str(script), str(marker)], capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 1
    assert result.stdout.splitlines() == ["ok", "FAIL: timed out after 1s waiting for: never"]


if __name__ == "__main__":
    sys.stdout.write(render_requirements())
