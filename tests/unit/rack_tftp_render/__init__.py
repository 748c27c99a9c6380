"""Unit tests of rack-tftp's per-machine boot configs: names, renderers, the decision cache, the file source."""
