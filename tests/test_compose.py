"""The compose stack, checked without a Docker engine: Debian's
``docker-compose`` validates the file, and the parsed file and the two
Dockerfiles are read for the properties the stack promises (a node that
only the gateway can reach, healthchecks, restart policies, limits,
unprivileged users, entrypoints that are the repository's own scripts)."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import stat
import subprocess
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import ROOT

COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILES = {
    "node": ROOT / "docker" / "node.Dockerfile",
    "gateway": ROOT / "docker" / "gateway.Dockerfile",
}
SECRETS_DIR = "/run/secrets/"
COMPOSE = shutil.which("docker-compose")


@dataclass
class Stage:
    """One ``FROM`` stage of a Dockerfile: its base and its instructions."""

    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


def read_dockerfile(path: Path) -> list[Stage]:
    """The stages of a Dockerfile, with ``ARG`` defaults put into ``FROM``."""
    text = re.sub(r"\\\n", " ", path.read_text())
    defaults: dict[str, str] = {}
    stages: list[Stage] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, args = line.partition(" ")
        keyword, args = keyword.upper(), args.strip()
        if keyword == "ARG" and not stages:
            name, _, value = args.partition("=")
            defaults[name] = value
        elif keyword == "FROM":
            words = args.split()
            base = re.sub(r"\$\{(\w+)\}", lambda m: defaults[m.group(1)], words[0])
            named = len(words) == 3 and words[1].lower() == "as"
            stages.append(Stage(base, words[2] if named else None))
        else:
            stages[-1].instructions.append((keyword, args))
    return stages


def image_to_repo(stage: Stage, image_path: str) -> Path | None:
    """The repository file that a ``COPY`` (from the build context) put at
    ``image_path`` in the final image, if any."""
    for args in stage.all("COPY"):
        words = shlex.split(args)
        if any(w.startswith("--from") for w in words):
            continue
        *sources, dest = words
        for source in sources:
            if image_path == dest:
                return ROOT / source
            if image_path.startswith(dest.rstrip("/") + "/"):
                return ROOT / source / image_path[len(dest.rstrip("/")) + 1 :]
    return None


def exec_form(args: str) -> list[str]:
    """``["a", "b"]`` of ENTRYPOINT/CMD/HEALTHCHECK; shell form is refused,
    since only the exec form lets the process receive SIGTERM itself."""
    match = re.search(r"\[.*\]", args)
    assert match, f"not exec form: {args}"
    return yaml.safe_load(match.group(0))


def compose_config(env_file: str | None = None) -> subprocess.CompletedProcess[str]:
    """``docker-compose config``: the file as compose itself reads it."""
    assert COMPOSE is not None
    argv = [COMPOSE, "--project-directory", str(ROOT), "-f", str(COMPOSE_FILE)]
    if env_file:
        argv += ["--env-file", str(ROOT / env_file)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("BEAM")}
    return subprocess.run(
        [*argv, "config"],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """The stack as ``docker-compose config`` parses it (defaults filled in,
    variables resolved); the raw file only where docker-compose is missing."""
    if COMPOSE is None:
        return yaml.safe_load(COMPOSE_FILE.read_text())
    done = compose_config()
    assert done.returncode == 0, done.stderr
    return yaml.safe_load(done.stdout)


@pytest.fixture(scope="module")
def final_stages() -> dict[str, Stage]:
    return {name: read_dockerfile(path)[-1] for name, path in DOCKERFILES.items()}


@pytest.mark.skipif(
    COMPOSE is None,
    reason="docker-compose is not installed (`make test` installs Debian's"
    " package, which validates compose files without a Docker engine)",
)
@pytest.mark.parametrize("env_file", [None, ".env.example"])
def test_docker_compose_accepts_the_file(env_file: str | None) -> None:
    """``docker-compose config`` validates the file, with the built-in
    defaults and with the documented .env.example."""
    done = compose_config(env_file)
    assert done.returncode == 0, done.stderr
    parsed = yaml.safe_load(done.stdout)
    assert set(parsed["services"]) == {"node", "gateway"}


def test_node_is_reachable_only_on_the_internal_network(
    compose: dict[str, Any],
) -> None:
    """The node publishes nothing and sits on internal networks only; the
    gateway shares one of them and publishes its port on another."""
    node, gateway = compose["services"]["node"], compose["services"]["gateway"]
    networks = compose["networks"]
    assert "ports" not in node and "network_mode" not in node
    assert node["networks"] and all(
        networks[name].get("internal") is True for name in node["networks"]
    )

    assert set(node["networks"]) & set(gateway["networks"])
    assert any(not (networks[n] or {}).get("internal") for n in gateway["networks"])
    published = [
        str(p).rsplit(":", 1)[-1].removesuffix("/tcp") for p in gateway["ports"]
    ]
    assert published == ["8765"]


def test_gateway_reaches_the_node_by_service_name(compose: dict[str, Any]) -> None:
    """The gateway's ``--node`` is the node service's name and bridge port."""
    node, gateway = compose["services"]["node"], compose["services"]["gateway"]
    command = gateway["command"]
    targets = [command[i + 1] for i, word in enumerate(command) if word == "--node"]
    assert targets == [f"node:{node['environment']['BEAM_BRIDGE_PORT']}"]
    assert node["environment"]["BEAM_BRIDGE_HOST"] == "0.0.0.0"


def test_services_are_health_checked_by_their_own_scripts(
    compose: dict[str, Any], final_stages: dict[str, Stage]
) -> None:
    """Each service's healthcheck runs a script of this repository, copied
    into its image, that exists here and is executable."""
    for name, service in compose["services"].items():
        check = service["healthcheck"]
        assert check["test"][0] == "CMD", f"{name}: exec form expected"
        assert check["test"][-1] == "health"
        script = image_to_repo(final_stages[name], check["test"][1])
        assert script is not None and script.is_file(), (name, check["test"])
        assert os.access(script, os.X_OK)
        assert {"interval", "timeout", "retries", "start_period"} <= set(check)


def test_gateway_starts_once_the_node_is_healthy(compose: dict[str, Any]) -> None:
    """``depends_on`` waits for the node's healthcheck, not its start."""
    depends = compose["services"]["gateway"]["depends_on"]
    assert depends == {"node": {"condition": "service_healthy"}}


def test_services_restart_and_the_node_is_limited(compose: dict[str, Any]) -> None:
    """Both services restart on failure; the node has CPU, memory and
    process ceilings and runs without privileges on a read-only root."""
    services = compose["services"]
    for service in services.values():
        assert service["restart"] in {"always", "unless-stopped", "on-failure"}

    node = services["node"]
    limits = node["deploy"]["resources"]["limits"]
    assert limits["cpus"] and limits["memory"]
    assert node["pids_limit"] > 0
    assert node["read_only"] is True and node["cap_drop"] == ["ALL"]
    assert "no-new-privileges:true" in node["security_opt"]


def test_secrets_are_compose_secrets_read_from_files(
    compose: dict[str, Any],
) -> None:
    """The node secret reaches both services as a compose secret file, and
    no secret value is written in the compose file."""
    services = compose["services"]
    for name in ("node", "gateway"):
        env = services[name]["environment"]
        assert "BEAM_BRIDGE_SECRET" not in env and "BEAMBRIDGE_TOKEN" not in env
        assert env["BEAM_BRIDGE_SECRET_FILE"] == SECRETS_DIR + "node_secret"
        # Short form (a name) in the file, long form once compose parses it.
        names = [
            x if isinstance(x, str) else x["source"] for x in services[name]["secrets"]
        ]
        assert "node_secret" in names
    assert services["gateway"]["environment"]["BEAMBRIDGE_TOKEN_FILE"] == (
        SECRETS_DIR + "gateway_token"
    )
    for secret in compose["secrets"].values():
        assert set(secret) == {"file"}


def test_images_run_as_an_unprivileged_user(final_stages: dict[str, Stage]) -> None:
    """The last ``USER`` of each final stage is a user the image creates,
    not root."""
    for name, stage in final_stages.items():
        users = stage.all("USER")
        assert users, f"{name} runs as root"
        user = users[-1].split(":")[0]
        assert user not in {"root", "0"}
        created = " ".join(stage.all("RUN"))
        match = re.search(rf"useradd[^&;]*--uid (\d+)[^&;]*\s{user}\b", created)
        assert match and int(match.group(1)) >= 1000, name


def test_entrypoints_are_the_scripts_the_tests_run(
    final_stages: dict[str, Stage],
) -> None:
    """Each image's ENTRYPOINT is a repository script, executable: the node
    launcher and the gateway wrapper that test_remote_node.py starts."""
    expected = {
        "node": ROOT / "elixir_node" / "bin" / "beam_bridge_node",
        "gateway": ROOT / "docker" / "gateway.sh",
    }
    for name, stage in final_stages.items():
        (entrypoint,) = stage.all("ENTRYPOINT")
        command = exec_form(entrypoint)
        script = image_to_repo(stage, command[0])
        assert script == expected[name], (name, command)
        assert os.access(script, os.X_OK)


def test_node_image_builds_a_release_on_elixir_1_14_otp_25() -> None:
    """Multi-stage: an official Elixir 1.14 / OTP 25 image builds the
    release; slim Debian runs it, with the launcher pointed at it."""
    build, runtime = read_dockerfile(DOCKERFILES["node"])
    assert re.fullmatch(r"elixir:1\.14(\.\d+)?-otp-25(-slim)?", build.base)
    assert any("mix release" in run for run in build.all("RUN"))
    assert re.fullmatch(r"debian:\w+-slim", runtime.base)
    env = " ".join(runtime.all("ENV"))
    assert "BEAM_BRIDGE_RELEASE=/app/release/bin/beam_bridge" in env
    copied = [c for c in runtime.all("COPY") if c.startswith("--from=build")]
    assert copied == ["--from=build /release /app/release"]


def test_gateway_image_installs_the_cpu_torch_the_package_pins() -> None:
    """Slim Python 3.11; torch at the version pyproject.toml pins, from the
    CPU index, before the package itself."""
    build, runtime = read_dockerfile(DOCKERFILES["gateway"])
    assert re.fullmatch(r"python:3\.11-slim(-\w+)?", runtime.base)
    assert build.base == runtime.base
    pins = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "dependencies"
    ]
    (torch,) = [p for p in pins if p.startswith("torch")]
    runs = build.all("RUN")
    torch_at = next(i for i, r in enumerate(runs) if torch in r)
    assert "--index-url https://download.pytorch.org/whl/cpu" in runs[torch_at]
    assert runs.index("pip install .") > torch_at


def test_copied_sources_exist_and_are_in_the_build_context() -> None:
    """Every ``COPY`` from the context names a path that exists and that
    .dockerignore lets through."""
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    patterns = [p.strip() for p in lines if p.strip() and not p.startswith("#")]
    assert patterns[0] == "*", "the context is an allowlist"
    allowed = [p[1:].rstrip("/") for p in patterns if p.startswith("!")]
    for path in DOCKERFILES.values():
        for stage in read_dockerfile(path):
            for args in stage.all("COPY"):
                words = shlex.split(args)
                if any(w.startswith("--from") for w in words):
                    continue
                for source in words[:-1]:
                    assert (ROOT / source).exists(), (path.name, source)
                    assert any(
                        source == a or source.startswith(a + "/") for a in allowed
                    ), (path.name, source)


def test_make_secrets_writes_readable_files_once(tmp_path: Path) -> None:
    """docker/make-secrets.sh writes both secrets into a private folder,
    readable by the containers' own user, and never overwrites them."""
    folder = tmp_path / "secrets"
    script = ROOT / "docker" / "make-secrets.sh"
    subprocess.run([script, folder], check=True, capture_output=True, timeout=30)
    first = {p.name: p.read_text() for p in folder.iterdir()}
    assert set(first) == {".gitignore", "node_secret", "gateway_token"}
    assert len(first["node_secret"]) >= 32 and "\n" not in first["node_secret"]
    assert first["node_secret"] != first["gateway_token"]
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE((folder / "node_secret").stat().st_mode) == 0o644

    subprocess.run([script, folder], check=True, capture_output=True, timeout=30)
    assert {p.name: p.read_text() for p in folder.iterdir()} == first
