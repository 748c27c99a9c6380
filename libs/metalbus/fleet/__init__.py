"""The fleet simulator: virtual machines that speak the real boot protocols (DHCP, TFTP, HTTP, metadata, syslog)."""
