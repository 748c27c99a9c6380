"""The ports catalogue is the one source: of the README's table, of doctor's list, of every port's default."""

from pathlib import Path

import pytest

from metalbus.contracts.power import PowerType
from metalbus.ports import (
    IPMI_PORT,
    PORTS,
    README_BEGIN_MARKER,
    README_END_MARKER,
    REDFISH_PORT,
    Direction,
    PortSpec,
    SettingRef,
    ports_in,
    render_ports_table,
)
from metalbus_rack_power import ipmi
from metalbus_rack_power.drivers import Bmc
from metalbus_rack_power.redfish import RedfishTarget
from metalbus_rack_proxy.settings import RackProxySettings
from metalbus_rack_tftp.settings import RackTftpSettings

README = Path(__file__).resolve().parents[2] / "README.md"


def spec_named(name: str) -> PortSpec:
    return next(spec for spec in PORTS if spec.name == name)


def test_readme_ports_table_is_the_rendering_of_the_catalogue() -> None:
    text = README.read_text()
    assert README_BEGIN_MARKER in text and README_END_MARKER in text, "README.md lacks the ports-table markers"
    between = text.split(README_BEGIN_MARKER, 1)[1].split(README_END_MARKER, 1)[0]
    assert between.strip() == render_ports_table().strip()


def test_the_rack_ports_of_the_issue_are_all_catalogued_with_their_production_numbers() -> None:
    rack_inbound = {port for spec in PORTS if spec.rack_inbound for port in spec.production_ports}
    assert rack_inbound == {67, 69, 53, 5248, 8000, 514, 5247}
    outbound = {port for spec in PORTS if spec.direction is Direction.OUTBOUND for port in spec.production_ports}
    assert outbound == {623, 443}
    assert spec_named("NATS clients").production_ports == (4222,)


def test_the_bmc_ports_are_the_ones_rack_power_uses_by_default() -> None:
    assert IPMI_PORT == ipmi.DEFAULT_PORT
    bmc = Bmc(power_type=PowerType.REDFISH, parameters={"address": "10.0.0.21"})
    assert RedfishTarget.of(bmc).base_url == f"https://10.0.0.21:{REDFISH_PORT}"


def test_the_embedded_stack_moves_the_privileged_ports_high() -> None:
    for name in ("DHCP", "TFTP", "DNS"):
        assert all(port >= 1024 for port in spec_named(name).embedded_ports), name
    assert spec_named("syslog relay").embedded_ports == (5247,)


def test_every_setting_the_catalogue_names_is_a_field_of_its_settings_class() -> None:
    for spec in PORTS:
        for ref in (spec.production, spec.embedded, spec.listen_address):
            if isinstance(ref, SettingRef):
                assert ref.field in ref.settings.model_fields, f"{spec.purpose}: {ref.settings.__name__}.{ref.field}"


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [("TFTP", "1069", (1069,)), ("rack HTTP", "15248", (15248,)), ("syslog relay", "[1514, 15247]", (1514, 15247))],
)
def test_the_variable_the_table_names_is_the_one_the_service_reads(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, expected: tuple[int, ...]
) -> None:
    spec = spec_named(name)
    assert isinstance(spec.production, SettingRef)
    monkeypatch.setenv(spec.production.variable, value)
    settings_class = spec.production.settings
    assert spec.production.ports_of(settings_class()) == expected


def test_a_port_set_to_zero_is_off_and_shown_as_off() -> None:
    assert SettingRef(RackProxySettings, "dns_port").ports_of(RackProxySettings(dns_port=0)) == ()
    metrics_row = next(line for line in render_ports_table().splitlines() if "metrics` of rack-tftp" in line)
    assert "| off |" in metrics_row


def test_settings_of_another_service_are_refused() -> None:
    with pytest.raises(TypeError):
        SettingRef(RackProxySettings, "dns_port").ports_of(RackTftpSettings())


def test_port_values_are_numbers_lists_or_nats_urls() -> None:
    assert ports_in(69) == (69,)
    assert ports_in([514, 5247]) == (514, 5247)
    assert ports_in("nats://a:4222, nats://b:4223") == (4222, 4223)
    with pytest.raises(TypeError):
        ports_in(True)


def test_the_rendered_table_has_one_row_per_record_and_names_each_variable() -> None:
    lines = render_ports_table().splitlines()
    assert len(lines) == 2 + len(PORTS)
    assert all(line.count("|") == lines[0].count("|") for line in lines)
    tftp_row = next(line for line in lines if line.startswith("| TFTP |"))
    assert "| 69/udp | 6969/udp |" in tftp_row
    assert "`METALBUS_RACK_TFTP_PORT`, `METALBUS_STACK_TFTP_PORT`" in tftp_row
