"""A private PostgreSQL cluster under a directory of ours: initdb once, then start/stop on a chosen port.

PostgreSQL refuses to run as root, so when we are root the cluster belongs to the ``postgres`` system user
(created by Debian's postgresql package) and every directory it needs is handed to that user.
"""

import asyncio
import hashlib
import os
import pwd
import secrets
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from metalbus.stack.binaries import MissingBinary, postgres_bin_dir
from metalbus.stack.processes import start_detached, stop_process

DATABASE = "metalbus"
ROLE = "metalbus"
ROOT_RUNS_AS = "postgres"


class ClusterError(RuntimeError):
    """The cluster could not be prepared or did not come up; the message says why."""


def cluster_os_user() -> str | None:
    """The account to run PostgreSQL as: None (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(ROOT_RUNS_AS)
    except KeyError:
        raise MissingBinary(f"running as root needs the '{ROOT_RUNS_AS}' user: apt-get install postgresql") from None
    return ROOT_RUNS_AS


def unreachable_parent(path: Path, user: str) -> Path | None:
    """The first of ``path`` and its ancestors that ``user`` cannot traverse (missing ones are skipped)."""
    entry = pwd.getpwnam(user)
    resolved = path.resolve()
    for parent in (*reversed(resolved.parents), resolved):
        if not parent.exists():
            continue
        info = parent.stat()
        if info.st_uid == entry.pw_uid:
            mode_bit = 0o100
        elif info.st_gid == entry.pw_gid:
            mode_bit = 0o010
        else:
            mode_bit = 0o001
        if not info.st_mode & mode_bit:
            return parent
    return None


ROOT_FALLBACK_DIR = Path("/var/lib/metalbus/postgres")


def place_cluster_root(root: Path) -> None:
    """Make ``root`` a place the cluster's user can reach.

    As root, the state directory often lies under a directory the ``postgres`` user may not traverse
    (a clone in /root). Then the cluster lives under /var/lib/metalbus/postgres/<digest of the path> and
    ``root`` becomes a symbolic link to it, so everything is still found through the state directory.
    """
    user = cluster_os_user()
    if user is None or root.is_symlink() or root.exists() or unreachable_parent(root.parent, user) is None:
        return
    digest = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:16]
    target = ROOT_FALLBACK_DIR / digest
    target.mkdir(parents=True, exist_ok=True)
    for directory in (ROOT_FALLBACK_DIR.parent, ROOT_FALLBACK_DIR):
        directory.chmod(0o755)
    root.parent.mkdir(parents=True, exist_ok=True)
    root.symlink_to(target, target_is_directory=True)


@dataclass(frozen=True)
class PostgresCluster:
    root: Path
    port: int
    host: str = "127.0.0.1"
    settings: tuple[tuple[str, str], ...] = ()
    """Further server settings (``-c name=value``), e.g. to load pg_stat_statements for a benchmark."""

    @property
    def home(self) -> Path:
        """The real directory behind ``root`` (the cluster's user may not be able to follow the link)."""
        return self.root.resolve()

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def password_file(self) -> Path:
        return self.home / "password"

    @property
    def pid_file(self) -> Path:
        return self.root / "postgres.pid-identity"

    @property
    def log_file(self) -> Path:
        return self.root / "postgres.log"

    def dsn(self, database: str = DATABASE) -> str:
        password = self.password_file.read_text().strip()
        return f"postgresql://{ROLE}:{password}@{self.host}:{self.port}/{database}"

    def initialise(self) -> None:
        """initdb on first use (a second call finds the cluster and does nothing)."""
        user = cluster_os_user()
        place_cluster_root(self.root)
        self.root.mkdir(parents=True, exist_ok=True)
        if user is not None:
            blocked = unreachable_parent(self.root, user)
            if blocked is not None:
                raise ClusterError(
                    f"user {user} cannot reach {self.root}: {blocked} is not searchable; "
                    "choose a state directory outside it (e.g. under /var/lib or /srv)"
                )
        if not self.password_file.exists():
            self.password_file.write_text(secrets.token_urlsafe(24) + "\n")
        self.password_file.chmod(0o600)
        if user is not None:
            entry = pwd.getpwnam(user)
            for path in (self.home, self.password_file):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        if (self.data_dir / "PG_VERSION").exists():
            return
        initdb = postgres_bin_dir() / "initdb"
        result = subprocess.run(
            [
                str(initdb),
                "--pgdata",
                str(self.data_dir),
                "--username",
                ROLE,
                "--pwfile",
                str(self.password_file),
                "--auth-local",
                "scram-sha-256",
                "--auth-host",
                "scram-sha-256",
                "--encoding",
                "UTF8",
                "--locale",
                "C",
            ],
            capture_output=True,
            text=True,
            user=user,
            group=user,
            extra_groups=[] if user else None,
            cwd=self.home,
            check=False,
        )
        if result.returncode != 0:
            raise ClusterError(f"initdb failed: {result.stderr.strip().splitlines()[-1:]}")

    def start(self) -> subprocess.Popen[bytes]:
        postgres = postgres_bin_dir() / "postgres"
        argv = [
            str(postgres),
            "-D", str(self.data_dir),
            "-p", str(self.port),
            "-c", f"listen_addresses={self.host}",
            # No Unix socket: every client uses TCP, and a socket path (at most 107 bytes) would limit where
            # the state directory may live.
            "-c", "unix_socket_directories=",
            "-c", "max_connections=200",
            *(argument for name, value in self.settings for argument in ("-c", f"{name}={value}")),
        ]  # fmt: skip
        return start_detached(
            argv,
            log_path=self.log_file,
            pid_path=self.pid_file,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C"},
            user=cluster_os_user(),
            cwd=self.home,
        )

    def stop(self) -> bool:
        # SIGINT is PostgreSQL's "fast" shutdown: disconnect clients, checkpoint, exit.
        return stop_process(self.pid_file, stop_signal=signal.SIGINT, grace_s=30)

    async def wait_ready(self, timeout_s: float = 30.0) -> None:
        """Wait until the server accepts our role, then make sure the metalbus database exists."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            try:
                conn = await asyncpg.connect(self.dsn("postgres"), timeout=2)
                break
            except (TimeoutError, OSError, asyncpg.PostgresError) as error:
                if loop.time() > deadline:
                    raise ClusterError(f"PostgreSQL not ready on port {self.port}: {error}") from error
                await asyncio.sleep(0.1)
        try:
            if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", DATABASE):
                await conn.execute(f'CREATE DATABASE "{DATABASE}"')
        finally:
            await conn.close()

    async def create_database(self, name: str) -> str:
        """A fresh, empty database in this cluster (for tests); returns its DSN."""
        conn = await asyncpg.connect(self.dsn("postgres"), timeout=5)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        return self.dsn(name)
