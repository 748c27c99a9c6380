"""`metalbus doctor`: preflight checks of a rack host (ports, interfaces, boot files, NATS and the region)."""
