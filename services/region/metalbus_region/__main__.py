"""Run one region replica: ``python -m metalbus_region`` (or ``metalbus-region``)."""

from metalbus.logging import configure_logging
from metalbus.runner import run_until_signalled
from metalbus.settings import load_settings
from metalbus_region.service import serve_region
from metalbus_region.settings import RegionSettings


def main() -> None:
    settings = load_settings(RegionSettings)
    configure_logging(settings.log_level, json_lines=settings.log_json)
    run_until_signalled(lambda stop: serve_region(settings, stop))


if __name__ == "__main__":
    main()
