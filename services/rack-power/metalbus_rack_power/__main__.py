"""Run rack-power: ``python -m metalbus_rack_power`` (or ``metalbus-rack-power``)."""

from metalbus.logging import configure_logging
from metalbus.runner import run_until_signalled
from metalbus.settings import load_settings
from metalbus_rack_power.service import run_rack_power
from metalbus_rack_power.settings import RackPowerSettings


def main() -> None:
    settings = load_settings(RackPowerSettings)
    configure_logging(settings.log_level, json_lines=settings.log_json)
    run_until_signalled(lambda stop: run_rack_power(settings, stop))


if __name__ == "__main__":
    main()
