"""deploy/: the compose file is valid Compose, runs what the embedded stack runs, and configures real settings.

No Docker engine is needed: the file is interpolated with deploy/.env.example as `docker compose` would, then
validated against the Compose Specification schema (vendored by check-jsonschema, a test dependency) and compared
with libs/metalbus/stack/components.py and the services' settings.
"""

import importlib
import json
import re
import shlex
from collections.abc import Iterator
from fnmatch import fnmatch
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from pydantic_settings import BaseSettings

from metalbus import healthcheck
from metalbus.nats_credentials import auth_config_file
from metalbus.stack.components import Component, stack_components
from metalbus.stack.config import StackLayout, StackSettings
from metalbus.stack.nats import nats_server_argv
from metalbus.stack.postgres import PostgresCluster

REPOSITORY = Path(__file__).resolve().parents[2]
DEPLOY = REPOSITORY / "deploy"
COMPOSE_FILE = DEPLOY / "docker-compose.yml"
ENV_EXAMPLE = DEPLOY / ".env.example"
ONE_SHOT = {"nats-config"}
NATS_AUTH_DIR = "/etc/metalbus/nats"
SETTINGS_CLASSES = {
    "metalbus_region": "metalbus_region.settings:RegionSettings",
    "metalbus_api": "metalbus_api.settings:ApiSettings",
    "metalbus_rack_dhcp": "metalbus_rack_dhcp.settings:RackDhcpSettings",
    "metalbus_rack_tftp": "metalbus_rack_tftp.settings:RackTftpSettings",
    "metalbus_rack_power": "metalbus_rack_power.settings:RackPowerSettings",
    "metalbus_rack_proxy": "metalbus_rack_proxy.settings:RackProxySettings",
}
REQUIRED_ONLY = {"POSTGRES_PASSWORD": "secret", "LAB_RACK_SHARED_SECRET": "secret"}
SOURCES = ["env-example", "defaults"]
VARIABLE = re.compile(r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")

# -- reading the compose file as `docker compose` does ---------------------------------------------------------------


def env_example() -> dict[str, str]:
    pairs = (line.split("=", 1) for line in ENV_EXAMPLE.read_text().splitlines() if line and not line.startswith("#"))
    return {name.strip(): value.strip() for name, value in pairs}


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's interpolation: $${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR?error}, $$."""

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, op, arg = match.group("name"), match.group("op"), match.group("arg")
        unset_or_empty = not env.get(name) if op and op.startswith(":") else name not in env
        if op and op.endswith("?") and unset_or_empty:
            raise KeyError(f"{name}: {arg}")
        if op and op.endswith("-") and unset_or_empty:
            return arg
        return env.get(name, "")

    return VARIABLE.sub(substitute, value)


def interpolated(node: Any, env: dict[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [interpolated(item, env) for item in node]
    if isinstance(node, dict):
        return {key: interpolated(value, env) for key, value in node.items()}
    return node


def compose_model(source: str = "env-example", **overrides: str) -> dict[str, Any]:
    """The file as `docker compose` sees it with deploy/.env.example, or with only the required variables set
    (every other value is then the file's own default)."""
    base = env_example() if source == "env-example" else dict(REQUIRED_ONLY)
    return interpolated(yaml.safe_load(COMPOSE_FILE.read_text()), base | overrides)  # type: ignore[no-any-return]


def active_services(model: dict[str, Any], profile: str) -> dict[str, dict[str, Any]]:
    return {
        name: service
        for name, service in model["services"].items()
        if not service.get("profiles") or profile in service["profiles"]
    }


def environment(service: dict[str, Any]) -> dict[str, str]:
    return {name: str(value) for name, value in service.get("environment", {}).items()}


def module_of(service: dict[str, Any]) -> str | None:
    command = service.get("command", [])
    return command[2] if command[:2] == ["python", "-m"] else None


def options(argv: list[str]) -> dict[str, str]:
    """``--flag value`` pairs of a nats-server command line (``--jetstream`` alone has the value "")."""
    parsed, flags = {}, iter(argv)
    for flag in flags:
        parsed[flag] = "" if flag == "--jetstream" else next(flags)
    return parsed


# -- (a) the Compose Specification -------------------------------------------------------------------------------------


@pytest.mark.parametrize("source", SOURCES)
def test_compose_file_validates_against_the_compose_specification(source: str) -> None:
    jsonschema = pytest.importorskip("jsonschema", reason="scripts/setup.sh --test installs check-jsonschema")
    vendor = pytest.importorskip(
        "check_jsonschema.builtin_schemas.vendor", reason="scripts/setup.sh --test installs check-jsonschema"
    )
    schema = json.loads((Path(vendor.__file__).parent / "compose-spec.json").read_text())
    validator = jsonschema.Draft202012Validator(schema)
    problems = [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(compose_model(source))
    ]
    assert problems == []


def test_the_stack_refuses_to_start_without_its_secrets() -> None:
    with pytest.raises(KeyError, match="POSTGRES_PASSWORD"):
        compose_model(POSTGRES_PASSWORD="")
    with pytest.raises(KeyError, match="LAB_RACK_SHARED_SECRET"):
        compose_model(LAB_RACK_SHARED_SECRET="")


def test_every_interpolated_variable_is_documented_and_none_is_a_service_setting() -> None:
    used = {m.group("name") for m in VARIABLE.finditer(COMPOSE_FILE.read_text()) if m.group("name")}
    assert used - env_example().keys() == set()
    # METALBUS_* names are service settings: one in the operator's shell must never leak into the compose file.
    assert [name for name in used if name.startswith("METALBUS_")] == []


# -- (b) the same commands as the embedded stack -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Component]:
    root = tmp_path_factory.mktemp("stack")
    (root / "postgres").mkdir()
    (root / "postgres" / "password").write_text("unused\n")
    cluster = PostgresCluster(root=root / "postgres", port=5438)
    components = stack_components(StackSettings(state_dir=root), StackLayout(root), cluster)
    return {component.name: component for component in components}


def embedded_name(service_name: str) -> str:
    """Which embedded component a container is: rack-2-dhcp is rack-dhcp, nats-1 is nats, region-2 is region-2."""
    if service_name.startswith("nats-") and service_name != "nats-config":
        return "nats"
    return re.sub(r"^rack-\d+-", "rack-", service_name)


def test_each_python_container_runs_the_module_its_embedded_component_runs(embedded: dict[str, Component]) -> None:
    services = compose_model()["services"]
    python_services = {name: service for name, service in services.items() if module_of(service)}
    assert len(python_services) == 11  # 2 regions, the api, two racks of four
    for name, service in python_services.items():
        argv = embedded[embedded_name(name)].argv
        assert Path(argv[0]).name.startswith("python"), name
        assert service["command"] == ["python", *argv[1:]], name


def test_each_nats_container_runs_the_embedded_nats_command_line(embedded: dict[str, Component]) -> None:
    nats_services = {name: s for name, s in compose_model()["services"].items() if embedded_name(name) == "nats"}
    assert sorted(nats_services) == ["nats", "nats-1", "nats-2", "nats-3"]
    auth_config = auth_config_file(Path(NATS_AUTH_DIR))
    argv = nats_server_argv(host="0.0.0.0", port=4222, monitor_port=8222, store_dir=Path("/data"), config=auth_config)
    expected = options(list(argv[1:]))
    cluster_flags = {"--cluster_name", "--cluster", "--routes"}  # the ha profile's, on top of the embedded ones
    for name, service in nats_services.items():
        command = service["command"]
        assert command[0] == Path(embedded["nats"].argv[0]).name == "nats-server"
        actual = options(command[1:])
        assert set(actual) - set(expected) <= cluster_flags, name
        # A cluster's nodes need names of their own; everything else is the embedded command line.
        assert {k: v for k, v in actual.items() if k not in cluster_flags | {"--server_name"}} == {
            k: v for k, v in expected.items() if k != "--server_name"
        }, name
        assert actual["--server_name"] == ("metalbus" if name == "nats" else name)


# -- (c) every METALBUS_* variable is a real, valid setting ----------------------------------------------------------


def settings_class(module: str) -> type[BaseSettings]:
    module_name, class_name = SETTINGS_CLASSES[module].split(":")
    return getattr(importlib.import_module(module_name), class_name)  # type: ignore[no-any-return]


@pytest.mark.parametrize("source", SOURCES)
def test_every_metalbus_variable_is_a_field_of_the_service_settings_and_valid(
    source: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, service in compose_model(source)["services"].items():
        module = module_of(service)
        if module is None:
            continue
        cls = settings_class(module)
        prefix = str(cls.model_config.get("env_prefix"))
        variables = {k: v for k, v in environment(service).items() if k != "METALBUS_CONFIG"}
        unknown = [k for k in variables if not k.startswith(prefix) or k[len(prefix) :].lower() not in cls.model_fields]
        assert unknown == [], f"{name}: not settings of {cls.__name__}"
        with monkeypatch.context() as patched:
            patched.delenv("METALBUS_CONFIG", raising=False)
            for variable, value in variables.items():
                patched.setenv(variable, value)
            loaded = cls()  # the values parse (JSON lists, ports, booleans) or this raises
        assert {k[len(prefix) :].lower() for k in variables} <= loaded.model_fields_set, name


# -- (d) health checks, restart policies, volumes, the ha profile ------------------------------------------------------


def health_command(service: dict[str, Any]) -> list[str]:
    test = service["healthcheck"]["test"]
    return shlex.split(test[1]) if test[0] == "CMD-SHELL" else test[1:]


@pytest.mark.parametrize("source", SOURCES)
def test_every_long_running_service_has_a_health_check_and_restarts_unless_stopped(source: str) -> None:
    for name, service in compose_model(source)["services"].items():
        if name in ONE_SHOT:
            assert service["restart"] == "no"
            continue
        assert service["restart"] == "unless-stopped", name
        assert health_command(service), name


def configured_ports(service: dict[str, Any]) -> set[int]:
    """Every port the container's settings bind: *_PORT values and the members of *_PORTS lists."""
    ports: set[int] = set()
    for name, value in environment(service).items():
        if name.endswith("_PORT") and value.isdigit():
            ports.add(int(value))
        elif name.endswith("_PORTS"):
            ports.update(json.loads(value))
    return ports - {0}


@pytest.mark.parametrize("source", SOURCES)
def test_process_health_checks_watch_the_service_s_own_module_nats_database_and_ports(source: str) -> None:
    for name, service in compose_model(source)["services"].items():
        check = health_command(service) if name not in ONE_SHOT else []
        if check[:4] != ["python", "-m", "metalbus.healthcheck", "process"]:
            continue
        parsed = healthcheck.parser().parse_args(check[3:])
        assert parsed.module == module_of(service), name
        env = environment(service)
        nats_port = urlsplit(next(v for k, v in env.items() if k.endswith("_NATS_URL")).split(",")[0]).port
        expected_connections = [nats_port or 4222]
        if "METALBUS_REGION_DATABASE_DSN" in env:
            expected_connections.append(urlsplit(env["METALBUS_REGION_DATABASE_DSN"]).port or 5432)
        assert parsed.connected_to == expected_connections, name
        assert {port for _, port in parsed.listening} <= configured_ports(service), name
        if module_of(service) in ("metalbus_rack_tftp", "metalbus_rack_proxy"):
            assert parsed.listening, f"{name} checks none of its ports"


def test_http_health_checks_ask_the_api_and_nats_on_their_configured_ports() -> None:
    services = compose_model()["services"]
    api_check = health_command(services["api"])
    assert urlsplit(api_check[4]).port == int(environment(services["api"])["METALBUS_API_PORT"])
    assert urlsplit(api_check[4]).path == "/api/v1/health"
    for name in ("nats", "nats-1", "nats-2", "nats-3"):
        url = urlsplit(health_command(services[name])[4])
        assert url.port == int(options(services[name]["command"][1:])["--http_port"]), name
        # a cluster node: once JetStream has a meta leader (before that, creating a stream gets no answer)
        expected = ("/healthz", "js-enabled-only=true") if name == "nats" else ("/healthz", "")
        assert (url.path, url.query) == expected, name


def test_nats_and_postgres_keep_their_data_in_named_volumes() -> None:
    model = compose_model()
    declared = set(model["volumes"])
    for name in ("nats", "nats-1", "nats-2", "nats-3"):
        service = model["services"][name]
        store = options(service["command"][1:])["--store_dir"]
        mounts = dict(v.split(":", 1)[::-1] for v in service["volumes"] if isinstance(v, str))
        assert mounts[store] in declared, name
    postgres = model["services"]["postgres"]
    assert any(
        v.split(":")[1] == "/var/lib/postgresql/data" and v.split(":")[0] in declared for v in postgres["volumes"]
    )


def rack_ids(services: dict[str, dict[str, Any]]) -> set[str]:
    return {v for s in services.values() for k, v in environment(s).items() if k.endswith("_RACK_ID")}


@pytest.mark.parametrize("source", SOURCES)
def test_single_profile_runs_one_nats_server_and_one_rack(source: str) -> None:
    services = active_services(compose_model(source), "single")
    assert [name for name in services if embedded_name(name) == "nats"] == ["nats"]
    assert rack_ids(services) == {"rack-1"}
    assert sorted(module_of(s) for s in services.values() if module_of(s) and "rack" in str(module_of(s))) == sorted(
        ["metalbus_rack_dhcp", "metalbus_rack_tftp", "metalbus_rack_power", "metalbus_rack_proxy"]
    )


@pytest.mark.parametrize("source", SOURCES)
def test_ha_profile_runs_three_nats_nodes_routed_to_each_other_and_two_racks(source: str) -> None:
    services = active_services(compose_model(source), "ha")
    nodes = {name: options(s["command"][1:]) for name, s in services.items() if embedded_name(name) == "nats"}
    assert sorted(nodes) == ["nats-1", "nats-2", "nats-3"]
    cluster_urls = {f"nats://{name}:{urlsplit(node['--cluster']).port}" for name, node in nodes.items()}
    for node in nodes.values():
        assert set(node["--routes"].split(",")) == cluster_urls
    assert len({node["--cluster_name"] for node in nodes.values()}) == 1
    assert len({node["--server_name"] for node in nodes.values()}) == 3
    assert rack_ids(services) == {"rack-1", "rack-2"}
    for kind in ("dhcp", "tftp", "power", "proxy"):
        ids = {environment(s)[f"METALBUS_RACK_{kind.upper()}_RACK_ID"] for n, s in services.items() if n.endswith(kind)}
        assert ids == {"rack-1", "rack-2"}, kind


@pytest.mark.parametrize("source", SOURCES)
def test_two_racks_on_one_host_listen_on_different_ports(source: str) -> None:
    services = active_services(compose_model(source), "ha")
    for kind in ("tftp", "proxy"):
        first, second = (configured_ports(services[name]) for name in (f"rack-{kind}", f"rack-2-{kind}"))
        assert first & second == set(), kind


# -- (e) the Dockerfile builds from files that exist and reach the build context ---------------------------------------


def dockerignore_excludes(path: str) -> bool:
    """.dockerignore semantics: patterns in order, the last match wins, ``!`` re-includes; a directory's rule
    covers what is under it."""
    excluded = False
    for line in (REPOSITORY / ".dockerignore").read_text().splitlines():
        pattern = line.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negated = pattern.startswith("!")
        pattern = pattern.removeprefix("!").removeprefix("**/")
        parts = Path(path).parts
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch(prefix, pattern) or fnmatch(Path(prefix).name, pattern) for prefix in prefixes):
            excluded = not negated
    return excluded


def dockerfile_copy_sources() -> Iterator[str]:
    for line in (DEPLOY / "Dockerfile").read_text().splitlines():
        words = line.split()
        if words[:1] == ["COPY"] and not any(word.startswith("--from") for word in words):
            yield from words[1:-1]


def test_dockerfile_copies_files_that_exist_and_are_in_the_build_context() -> None:
    sources = list(dockerfile_copy_sources())
    assert "libs" in sources and "scripts/boot-files.sh" in sources
    for source in sources:
        assert (REPOSITORY / source).exists(), source
        assert not dockerignore_excludes(source), f"{source} is left out by .dockerignore"
    assert dockerignore_excludes(".venv") and dockerignore_excludes(".metalbus") and dockerignore_excludes(".git")


def test_dockerfile_puts_the_virtualenv_first_on_path_for_the_compose_commands() -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"ENV PATH=/opt/metalbus/bin:", dockerfile)
    assert "python3 -m venv /opt/metalbus" in dockerfile
    # the image's build context is the repository (the Dockerfile's COPY paths are relative to it)
    build = compose_model()["services"]["nats-config"]["build"]
    assert (DEPLOY / build["context"]).resolve() == REPOSITORY and build["dockerfile"] == "deploy/Dockerfile"
