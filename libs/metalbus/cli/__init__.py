"""The `metalbus` command line."""
