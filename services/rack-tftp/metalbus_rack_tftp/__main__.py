"""Run rack-tftp: ``python -m metalbus_rack_tftp`` (or ``metalbus-rack-tftp``)."""

from metalbus.contracts.racks import RackServiceKind
from metalbus.logging import configure_logging
from metalbus.rack_presence import run_rack_service
from metalbus.runner import run_until_signalled
from metalbus.settings import load_settings
from metalbus_rack_tftp.settings import RackTftpSettings


def main() -> None:
    settings = load_settings(RackTftpSettings)
    configure_logging(settings.log_level, json_lines=settings.log_json)
    run_until_signalled(lambda stop: run_rack_service(RackServiceKind.TFTP, settings, stop))


if __name__ == "__main__":
    main()
