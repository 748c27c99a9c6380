"""Run the api: ``python -m metalbus_api`` (or ``metalbus-api``)."""

import uvicorn

from metalbus.logging import configure_logging
from metalbus.settings import load_settings
from metalbus_api.app import create_app
from metalbus_api.settings import ApiSettings


def main() -> None:
    settings = load_settings(ApiSettings)
    configure_logging(settings.log_level, json_lines=settings.log_json)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=False,
        timeout_graceful_shutdown=5,
    )


if __name__ == "__main__":
    main()
