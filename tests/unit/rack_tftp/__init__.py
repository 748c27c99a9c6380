"""Unit tests of rack-tftp: packet codec, option negotiation, boot-root confinement."""
