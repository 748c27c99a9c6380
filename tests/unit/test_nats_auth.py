"""The per-role NATS permissions derived from the subject catalogue, the config nats-server is given, and the
credential files `metalbus nats-config` writes (kept across runs, 0600, loadable as METALBUS_CONFIG)."""

import ast
import stat
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from metalbus import subjects
from metalbus.cli.main import app
from metalbus.nats_auth import (
    ADMIN_USER,
    API_USER,
    INTEGRATOR_USER,
    NatsUser,
    Permissions,
    Roles,
    permissions_of,
    render_authorization,
    users_for,
)
from metalbus.nats_credentials import auth_config_file, read_password, role_file, write_nats_credentials
from metalbus.stack.binaries import nats_server_binary
from metalbus.subjects import EventSubject, RequestSubject
from metalbus_api.settings import ApiSettings
from metalbus_rack_power.settings import RackPowerSettings

REPO = Path(__file__).resolve().parents[2]
ROLES = Roles(region_replicas=("region-1", "region-2"), rack_ids=("rack-1", "rack-2"), integrator=True)
REGION_SUBJECTS = [s.pattern for s in subjects.REQUEST_SUBJECTS if s.pattern.startswith("region.")]


def matches(pattern: str, subject: str) -> bool:
    """NATS subject matching: ``*`` is one token, ``>`` one or more at the end."""
    wanted, given = pattern.split("."), subject.split(".")
    for index, token in enumerate(wanted):
        if token == ">":
            return len(given) > index
        if index >= len(given) or token not in ("*", given[index]):
            return False
    return len(wanted) == len(given)


def may_publish(permissions: Permissions, subject: str) -> bool:
    return any(matches(pattern, subject) for pattern in permissions.publish)


def may_subscribe(permissions: Permissions, subject: str) -> bool:
    denied = any(matches(pattern, subject) for pattern in permissions.subscribe_deny)
    return not denied and any(matches(pattern, subject) for pattern in permissions.subscribe)


def everyone() -> dict[str, Permissions]:
    return {user: permissions_of(user, ROLES) for user in ROLES.user_names()}


def catalogue_names_imported_by(*roots: str) -> set[str]:
    """The names each Python file under ``roots`` imports from ``metalbus.subjects``."""
    names: set[str] = set()
    for root in roots:
        path = REPO / root
        for source in [path] if path.is_file() else path.rglob("*.py"):
            for node in ast.walk(ast.parse(source.read_text())):
                if isinstance(node, ast.ImportFrom) and node.module == "metalbus.subjects":
                    names |= {alias.name for alias in node.names}
    return names


def requested_region_subjects(*roots: str) -> list[str]:
    found = [getattr(subjects, name) for name in catalogue_names_imported_by(*roots)]
    return [s.pattern for s in found if isinstance(s, RequestSubject) and s.pattern.startswith("region.")]


def test_every_region_subject_is_served_by_every_replica_and_by_nobody_else() -> None:
    for user, permissions in everyone().items():
        for subject in REGION_SUBJECTS:
            assert may_subscribe(permissions, subject) is user.startswith("region-"), (user, subject)


@pytest.mark.parametrize(
    ("user", "roots"),
    [
        ("rack-rack-1", ("services/rack-dhcp", "services/rack-tftp", "services/rack-power", "services/rack-proxy")),
        ("rack-rack-1", ("libs/metalbus/rack_presence.py",)),
        (API_USER, ("services/api",)),
        (ADMIN_USER, ("libs/metalbus/cli/admin.py", "libs/metalbus/stack/probes.py")),
    ],
)
def test_each_role_may_request_every_region_subject_its_code_asks(user: str, roots: tuple[str, ...]) -> None:
    asked = requested_region_subjects(*roots)
    assert asked, f"{roots} import no region subject: the scan is broken"
    refused = [subject for subject in asked if not may_publish(permissions_of(user, ROLES), subject)]
    assert refused == []


def test_every_region_subject_is_asked_by_a_rack_or_the_api_except_minting_api_keys() -> None:
    rack, api = permissions_of("rack-rack-1", ROLES), permissions_of(API_USER, ROLES)
    unasked = [s for s in REGION_SUBJECTS if not (may_publish(rack, s) or may_publish(api, s))]
    assert unasked == [subjects.API_KEY_CREATE.pattern]
    assert may_publish(permissions_of(ADMIN_USER, ROLES), subjects.API_KEY_CREATE.pattern)


def test_racks_ask_no_operator_subject_and_the_api_no_rack_subject() -> None:
    rack, api = permissions_of("rack-rack-1", ROLES), permissions_of(API_USER, ROLES)
    assert not may_publish(rack, subjects.MACHINE_ACTION.pattern)
    assert not may_publish(rack, subjects.API_KEY_CHECK.pattern)
    assert not may_publish(api, subjects.LEASE_COMMIT.pattern)
    assert not may_publish(api, subjects.RACK_HEARTBEAT.pattern)


def test_a_rack_serves_only_its_own_subjects_and_only_the_region_asks_them() -> None:
    own, other = "rack.rack-1.power.command", "rack.rack-2.power.command"
    permissions = everyone()
    assert may_subscribe(permissions["rack-rack-1"], own)
    assert not may_subscribe(permissions["rack-rack-1"], other)
    assert may_subscribe(permissions["rack-rack-2"], other)
    askers = {user for user, p in permissions.items() if may_publish(p, own)}
    assert askers == {"region-1", "region-2"}
    assert permissions["rack-rack-1"].allow_responses and permissions["region-1"].allow_responses
    assert not permissions[API_USER].allow_responses and not permissions[INTEGRATOR_USER].allow_responses


def test_rack_services_may_follow_the_events_they_subscribe_to() -> None:
    roots = ("services/rack-tftp", "services/rack-proxy")
    followed = [getattr(subjects, name) for name in catalogue_names_imported_by(*roots)]
    events = [subjects.wildcard(e.pattern) for e in followed if isinstance(e, EventSubject)]
    assert events
    assert all(may_subscribe(permissions_of("rack-rack-1", ROLES), subject) for subject in events)


def test_only_region_replicas_publish_events_and_the_integrator_reads_them_all() -> None:
    for user, permissions in everyone().items():
        for event in subjects.EVENT_SUBJECTS:
            subject = event.format(**dict.fromkeys(event.params, "x1"))
            assert may_publish(permissions, subject) is user.startswith("region-"), (user, subject)
    integrator = permissions_of(INTEGRATOR_USER, ROLES)
    assert may_subscribe(integrator, "events.anything.new")
    assert not any(p.startswith(("region.", "rack.", "events.")) for p in integrator.publish)
    assert not any("CONSUMER" in p for p in integrator.publish)  # a consumer could deliver anywhere


def test_each_user_receives_replies_only_on_its_own_inbox() -> None:
    permissions = everyone()
    for user in ROLES.user_names():
        for other in ROLES.user_names():
            reply = f"_INBOX.{other}.abc.1"
            assert may_subscribe(permissions[user], reply) is (user == other), (user, other)


def test_nats_server_accepts_the_rendered_config(tmp_path: Path) -> None:
    passwords = {user: f"pw-{user}" for user in ROLES.user_names()}
    config = tmp_path / "auth.conf"
    config.write_text(render_authorization(users_for(ROLES, passwords), no_auth_user=ADMIN_USER))
    checked = subprocess.run(
        [str(nats_server_binary(None)), "-t", "-c", str(config)], capture_output=True, text=True, timeout=30
    )
    assert checked.returncode == 0, checked.stderr
    assert "pw-rack-rack-2" in config.read_text()


def test_an_unknown_no_auth_user_is_refused() -> None:
    users = [NatsUser("api", "pw", permissions_of(API_USER, ROLES))]
    with pytest.raises(ValueError, match="nobody"):
        render_authorization(users, no_auth_user="nobody")


def test_nats_config_writes_private_files_and_keeps_passwords_until_rotated(tmp_path: Path) -> None:
    out = tmp_path / "auth"
    args = ["nats-config", "--out", str(out), "--region-replicas", "2", "--rack", "rack-1", "--rack", "r2"]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    names = {"nats-auth.conf", "region-1.toml", "region-2.toml", "api.toml", "rack-rack-1.toml", "rack-r2.toml"}
    assert {path.name for path in out.iterdir()} == names | {"admin.toml", "integrator.toml"}
    assert all(stat.S_IMODE(path.stat().st_mode) == 0o600 for path in out.iterdir())
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    before = read_password(role_file(out, "rack-r2"))

    assert CliRunner().invoke(app, args).exit_code == 0
    assert read_password(role_file(out, "rack-r2")) == before
    assert CliRunner().invoke(app, [*args, "--rotate"]).exit_code == 0
    rotated = read_password(role_file(out, "rack-r2"))
    assert rotated is not None and rotated != before
    assert f'"password": "{rotated}"' in auth_config_file(out).read_text()


def test_nats_config_without_integrator_and_with_a_bad_rack_id(tmp_path: Path) -> None:
    no_integrator = CliRunner().invoke(app, ["nats-config", "--out", str(tmp_path / "a"), "--no-integrator"])
    assert no_integrator.exit_code == 0
    assert not (tmp_path / "a" / "integrator.toml").exists()
    assert '"user": "integrator"' not in auth_config_file(tmp_path / "a").read_text()
    refused = CliRunner().invoke(app, ["nats-config", "--out", str(tmp_path / "b"), "--rack", "Rack.1"])
    assert refused.exit_code == 1 and "invalid rack id 'Rack.1'" in refused.output
    assert not (tmp_path / "b").exists()


def test_role_files_configure_the_services_that_run_as_the_role(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    credentials = write_nats_credentials(tmp_path, ROLES)
    monkeypatch.setenv("METALBUS_CONFIG", str(role_file(tmp_path, "rack-rack-2")))
    rack = RackPowerSettings()
    assert (rack.nats_user, rack.nats_password, rack.rack_id) == (
        "rack-rack-2",
        credentials["rack-rack-2"].password,
        "rack-2",
    )
    assert rack.connect_options("rack-power").inbox_prefix == "_INBOX.rack-rack-2"
    monkeypatch.setenv("METALBUS_CONFIG", str(role_file(tmp_path, API_USER)))
    api = ApiSettings()
    assert (api.nats_user, api.nats_password) == ("api", credentials["api"].password)
