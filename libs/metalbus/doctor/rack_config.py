"""The settings of a rack host's four services, read the way the services read them (or as `metalbus up` sets them)."""

import json
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import ValidationError

from metalbus.rack_presence import RackServiceSettings
from metalbus.settings import load_settings
from metalbus.stack.components import ReadyCheck, stack_components
from metalbus.stack.config import StackLayout, load_record
from metalbus.stack.launcher import cluster_for
from metalbus_rack_dhcp.settings import RackDhcpSettings
from metalbus_rack_power.settings import RackPowerSettings
from metalbus_rack_proxy.settings import RackProxySettings
from metalbus_rack_tftp.settings import RackTftpSettings

S = TypeVar("S", bound=RackServiceSettings)


class RackConfigError(Exception):
    """The settings cannot be read (no stack recorded, an invalid value): a one-line reason."""


@dataclass(frozen=True)
class RackHostSettings:
    dhcp: RackDhcpSettings
    tftp: RackTftpSettings
    proxy: RackProxySettings
    power: RackPowerSettings

    def by_component(self) -> dict[str, RackServiceSettings]:
        """Each service's settings under its component name (``rack-dhcp`` …), in a stable order."""
        return {"rack-dhcp": self.dhcp, "rack-tftp": self.tftp, "rack-proxy": self.proxy, "rack-power": self.power}


def load_rack_host_settings() -> RackHostSettings:
    """METALBUS_RACK_<SERVICE>_* and the METALBUS_CONFIG file, exactly as each service loads them."""
    try:
        return RackHostSettings(
            dhcp=load_settings(RackDhcpSettings),
            tftp=load_settings(RackTftpSettings),
            proxy=load_settings(RackProxySettings),
            power=load_settings(RackPowerSettings),
        )
    except SystemExit as error:  # load_settings' one-line reason
        raise RackConfigError(str(error.code)) from None


def settings_from_environment(cls: type[S], environment: dict[str, str]) -> S:
    """``cls`` built from an environment like the one `metalbus up` hands the service (its variables win over
    the process's own environment and the TOML file, as they do in the launched service)."""
    prefix = str(cls.model_config.get("env_prefix", ""))
    values: dict[str, Any] = {}
    for name, value in environment.items():
        field = name.removeprefix(prefix).lower()
        if name.startswith(prefix) and field in cls.model_fields:
            values[field] = json.loads(value) if value.startswith(("[", "{")) else value
    try:
        return cls(**values)
    except ValidationError as error:
        raise RackConfigError(f"invalid settings for {cls.__name__}: {error.errors()[0]['msg']}") from None


def embedded_rack_host_settings(layout: StackLayout) -> RackHostSettings:
    """The rack services' settings as the `metalbus up` recorded in ``layout`` launches them."""
    stack = load_record(layout)
    if stack is None:
        raise RackConfigError(f"no stack recorded in {layout.root} (run `metalbus up` there first)")
    environments = {
        component.name: component.env
        for component in stack_components(stack, layout, cluster_for(stack, layout))
        if component.check is ReadyCheck.RACK_SERVICE
    }
    return RackHostSettings(
        dhcp=settings_from_environment(RackDhcpSettings, environments["rack-dhcp"]),
        tftp=settings_from_environment(RackTftpSettings, environments["rack-tftp"]),
        proxy=settings_from_environment(RackProxySettings, environments["rack-proxy"]),
        power=settings_from_environment(RackPowerSettings, environments["rack-power"]),
    )
