"""metalbus: bare-metal provisioning over a NATS bus; this package is what every service shares."""

__version__ = "0.1.0"
