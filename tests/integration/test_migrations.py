"""Migrations against a real PostgreSQL: in order, once, safely concurrent, and tamper-evident."""

import asyncio
import subprocess
import sys

import asyncpg
import pytest

from metalbus.db.migrate import (
    Migration,
    MigrationError,
    apply_migrations,
    current_level,
    migrate_dsn,
    shipped_migrations,
    target_level,
)


async def test_fresh_database_is_brought_to_the_shipped_level(database_dsn: str) -> None:
    report = await migrate_dsn(database_dsn)
    assert report.level == target_level() >= 1
    assert report.applied == tuple(range(1, target_level() + 1))
    conn = await asyncpg.connect(database_dsn)
    try:
        tables = {r["tablename"] for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname='public'")}
        assert {"schema_migrations", "racks", "rack_services"} <= tables
    finally:
        await conn.close()


async def test_applying_twice_is_a_no_op(database_dsn: str) -> None:
    await migrate_dsn(database_dsn)
    conn = await asyncpg.connect(database_dsn)
    try:
        before = await conn.fetch("SELECT version, checksum, applied_at FROM schema_migrations ORDER BY version")
        report = await apply_migrations(conn)
        after = await conn.fetch("SELECT version, checksum, applied_at FROM schema_migrations ORDER BY version")
    finally:
        await conn.close()
    assert report.applied == ()
    assert report.level == target_level()
    assert before == after


async def test_concurrent_runners_in_one_process_take_turns(database_dsn: str) -> None:
    reports = await asyncio.gather(*(migrate_dsn(database_dsn) for _ in range(6)))
    applied = [version for report in reports for version in report.applied]
    assert sorted(applied) == list(range(1, target_level() + 1)), "each migration applied exactly once"
    assert {report.level for report in reports} == {target_level()}


async def test_two_processes_migrating_at_once_are_safe(database_dsn: str) -> None:
    command = [sys.executable, "-m", "metalbus.cli.main", "db", "migrate", "--dsn", database_dsn]
    runners = [
        await asyncio.create_subprocess_exec(*command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for _ in range(2)
    ]
    results = await asyncio.wait_for(asyncio.gather(*(r.communicate() for r in runners)), timeout=60)
    outputs = [stdout.decode() for stdout, _ in results]
    assert [runner.returncode for runner in runners] == [0, 0], outputs
    assert all(f"level {target_level()}" in output for output in outputs)
    applied_now = sorted(output.split("applied now: ")[1].strip(" )\n") for output in outputs)
    assert applied_now == sorted(["none", ", ".join(str(v) for v in range(1, target_level() + 1))])
    conn = await asyncpg.connect(database_dsn)
    try:
        assert await conn.fetchval("SELECT count(*) FROM schema_migrations") == target_level()
    finally:
        await conn.close()


async def test_a_migration_changed_after_it_was_applied_is_refused(database_dsn: str) -> None:
    await migrate_dsn(database_dsn)
    first = shipped_migrations()[0]
    tampered = (Migration(first.version, first.name, first.sql + "\n-- edited"), *shipped_migrations()[1:])
    conn = await asyncpg.connect(database_dsn)
    try:
        with pytest.raises(MigrationError, match="was changed after it was applied"):
            await apply_migrations(conn, tampered)
        assert await current_level(conn) == target_level()
    finally:
        await conn.close()


async def test_a_failing_migration_leaves_nothing_half_applied(database_dsn: str) -> None:
    broken = (
        *shipped_migrations(),
        Migration(target_level() + 1, "broken", "CREATE TABLE half (id int); SELECT * FROM no_such_table;"),
    )
    conn = await asyncpg.connect(database_dsn)
    try:
        with pytest.raises(asyncpg.UndefinedTableError):
            await apply_migrations(conn, broken)
        assert await current_level(conn) == target_level()
        assert await conn.fetchval("SELECT to_regclass('half')") is None
        # The advisory lock was released: another run proceeds at once.
        report = await asyncio.wait_for(apply_migrations(conn), timeout=5)
        assert report.applied == ()
    finally:
        await conn.close()


async def test_database_newer_than_this_release_is_refused(database_dsn: str) -> None:
    await migrate_dsn(database_dsn)
    with pytest.raises(MigrationError, match="does not know"):
        conn = await asyncpg.connect(database_dsn)
        try:
            await apply_migrations(conn, shipped_migrations()[:-1] if target_level() > 1 else ())
        finally:
            await conn.close()
