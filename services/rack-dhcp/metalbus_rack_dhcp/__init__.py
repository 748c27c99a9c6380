"""rack-dhcp: DHCPv4 for PXE on the rack's subnets (protocol work lands with its own issue)."""
