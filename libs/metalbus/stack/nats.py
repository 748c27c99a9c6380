"""The nats-server command line with JetStream, shared by `metalbus up`, the tests and the benchmarks."""

from pathlib import Path

from metalbus.stack.binaries import nats_server_binary


def nats_server_argv(
    *, host: str, port: int, store_dir: Path, monitor_port: int | None = None, binary: Path | None = None
) -> tuple[str, ...]:
    argv = [
        str(nats_server_binary(binary)),
        "--addr", host,
        "--port", str(port),
        "--jetstream",
        "--store_dir", str(store_dir),
        "--server_name", "metalbus",
    ]  # fmt: skip
    if monitor_port is not None:
        argv += ["--http_port", str(monitor_port)]
    return tuple(argv)
