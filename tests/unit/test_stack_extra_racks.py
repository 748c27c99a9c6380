"""`metalbus up` with further racks, each in a network namespace: what it plans and how it launches them."""

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from metalbus.stack.components import Component, ReadyCheck, planned_components, stack_components
from metalbus.stack.config import ExtraRack, StackLayout, StackSettings
from metalbus.stack.postgres import PostgresCluster

SECOND = ExtraRack(rack_id="rack-2", namespace="mbrack2", dhcp_interfaces=["eth-machines"])


def settings_with_second_rack(root: Path) -> StackSettings:
    return StackSettings(state_dir=root, dhcp_interfaces=["veth-own"], nats_port=4333, extra_racks=[SECOND])


@pytest.fixture
def launched(tmp_path: Path) -> dict[str, Component]:
    (tmp_path / "postgres").mkdir()
    (tmp_path / "postgres" / "password").write_text("unused\n")
    cluster = PostgresCluster(root=tmp_path / "postgres", port=5438)
    components = stack_components(settings_with_second_rack(tmp_path), StackLayout(tmp_path), cluster)
    return {component.name: component for component in components}


def test_the_extra_rack_starts_after_the_own_rack_relay_first(tmp_path: Path) -> None:
    names = [component.name for component in planned_components(settings_with_second_rack(tmp_path))]
    own = names.index("rack-proxy")
    assert names[own + 1 :] == [
        "nats-relay@rack-2",
        "rack-dhcp@rack-2",
        "rack-tftp@rack-2",
        "rack-power@rack-2",
        "rack-proxy@rack-2",
    ]


def test_extra_rack_services_run_inside_their_namespace_as_their_own_rack(launched: dict[str, Component]) -> None:
    dhcp = launched["rack-dhcp@rack-2"]
    assert dhcp.argv[:4] == ("ip", "netns", "exec", "mbrack2")
    assert dhcp.argv[-2:] == ("-m", "metalbus_rack_dhcp")
    assert dhcp.env["METALBUS_RACK_DHCP_RACK_ID"] == "rack-2"
    assert dhcp.env["METALBUS_RACK_DHCP_NATS_USER"] == "rack-rack-2"
    assert json.loads(dhcp.env["METALBUS_RACK_DHCP_SERVE_INTERFACES"]) == ["eth-machines"]
    assert dhcp.env["METALBUS_RACK_DHCP_METRICS_PORT"] == "0"


def test_the_own_rack_keeps_the_host_namespace_and_its_settings(launched: dict[str, Component]) -> None:
    dhcp = launched["rack-dhcp"]
    assert dhcp.argv[0] != "ip"
    assert dhcp.env["METALBUS_RACK_DHCP_RACK_ID"] == "rack-1"
    assert dhcp.env["METALBUS_RACK_DHCP_NATS_USER"] == "rack-rack-1"
    assert json.loads(dhcp.env["METALBUS_RACK_DHCP_SERVE_INTERFACES"]) == ["veth-own"]
    assert (
        dhcp.env["METALBUS_RACK_DHCP_NATS_PASSWORD"]
        != launched["rack-dhcp@rack-2"].env["METALBUS_RACK_DHCP_NATS_PASSWORD"]
    )


def test_extra_racks_reach_nats_through_their_relay_on_their_own_loopback(launched: dict[str, Component]) -> None:
    relay = launched["nats-relay@rack-2"]
    assert relay.check is ReadyCheck.RELAY
    assert relay.argv[-8:] == ("-m", "metalbus.stack.namespace_relay", "--namespace", "mbrack2", "--port", "4333",
                               "--to-host", "127.0.0.1")  # fmt: skip
    for kind in ("dhcp", "tftp", "power", "proxy"):
        env = launched[f"rack-{kind}@rack-2"].env
        assert env[f"METALBUS_RACK_{kind.upper()}_NATS_URL"] == "nats://127.0.0.1:4333"


def test_each_rack_has_its_own_apt_cache(launched: dict[str, Component]) -> None:
    own = launched["rack-proxy"].env["METALBUS_RACK_PROXY_APT_CACHE_DIR"]
    extra = launched["rack-proxy@rack-2"].env["METALBUS_RACK_PROXY_APT_CACHE_DIR"]
    assert own != extra


def test_two_racks_with_one_id_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="same id"):
        StackSettings(state_dir=tmp_path, extra_racks=[ExtraRack(rack_id="rack-1", namespace="mbrack")])


def test_extra_racks_come_from_the_environment_as_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METALBUS_STACK_EXTRA_RACKS", json.dumps([SECOND.model_dump()]))
    assert StackSettings().rack_ids == ["rack-1", "rack-2"]
