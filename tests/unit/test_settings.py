"""Service settings come from METALBUS_<SERVICE>_* variables and the TOML file, and fail in one line."""

from pathlib import Path

import pytest

from metalbus.settings import load_settings
from metalbus_api.settings import ApiSettings
from metalbus_rack_dhcp.settings import RackDhcpSettings
from metalbus_region.settings import RegionSettings


def test_environment_variables_use_the_service_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METALBUS_API_PORT", "6000")
    monkeypatch.setenv("METALBUS_RACK_DHCP_PORT", "6767")
    monkeypatch.setenv("METALBUS_RACK_DHCP_RACK_ID", "rack-42")
    assert ApiSettings().port == 6000
    dhcp = RackDhcpSettings()
    assert (dhcp.port, dhcp.rack_id) == (6767, "rack-42")


def test_toml_file_sections_apply_per_service_and_environment_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "metalbus.toml"
    config.write_text(
        '[region]\nreplica_id = "from-file"\ndatabase_pool_max = 7\n[rack-dhcp]\nport = 1067\nrack_id = "rack-file"\n'
    )
    monkeypatch.setenv("METALBUS_CONFIG", str(config))
    monkeypatch.setenv("METALBUS_REGION_DATABASE_POOL_MAX", "9")
    region = RegionSettings()
    assert (region.replica_id, region.database_pool_max) == ("from-file", 9)
    assert (RackDhcpSettings().port, RackDhcpSettings().rack_id) == (1067, "rack-file")


def test_invalid_setting_exits_with_one_line_naming_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METALBUS_RACK_DHCP_PORT", "70000")
    with pytest.raises(SystemExit) as exited:
        load_settings(RackDhcpSettings)
    message = str(exited.value.code)
    assert message.startswith("metalbus: invalid settings: METALBUS_RACK_DHCP_PORT")
    assert "\n" not in message


def test_unreadable_config_file_exits_with_its_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text("[region\n")
    monkeypatch.setenv("METALBUS_CONFIG", str(broken))
    with pytest.raises(SystemExit, match=f"cannot read {broken}"):
        load_settings(RegionSettings)
