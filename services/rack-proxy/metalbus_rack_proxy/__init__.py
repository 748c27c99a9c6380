"""rack-proxy: metadata, APT, syslog and DNS for machines (protocol work lands with its own issue)."""
