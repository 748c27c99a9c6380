"""rack-tftp: bootloaders and per-machine boot configs over TFTP and HTTP (protocol work: its own issue)."""
