"""`metalbus admin create-key` finds the region's NATS (and its admin login) from an embedded stack's record or
METALBUS_CONFIG's [admin] table, or refuses in one line."""

from pathlib import Path

import pytest
from typer.testing import CliRunner

from metalbus.cli.admin import stack_connect_options, url_connect_options
from metalbus.cli.main import app
from metalbus.stack.config import StackLayout, StackSettings, save_record
from metalbus.stack.nats import stack_nats_credentials


def test_the_nats_address_and_admin_login_come_from_the_stack(tmp_path: Path) -> None:
    layout = StackLayout(tmp_path)
    save_record(layout, StackSettings(state_dir=tmp_path, host="127.0.0.1", nats_port=14222))
    admin = stack_nats_credentials(layout.nats_store, ["region-1"], ["rack-1"])["admin"]

    options = stack_connect_options(tmp_path)

    assert options.servers == ("nats://127.0.0.1:14222",)
    assert (options.user, options.password) == ("admin", admin.password)


def test_with_a_nats_url_the_login_is_the_admin_table_of_metalbus_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "admin.toml"
    config.write_text('[admin]\nnats_user = "admin"\nnats_password = "s3cr3t"\n')
    monkeypatch.setenv("METALBUS_CONFIG", str(config))

    options = url_connect_options("nats://region-host:4222")

    assert (options.servers, options.user, options.password) == (("nats://region-host:4222",), "admin", "s3cr3t")
    assert options.inbox_prefix == "_INBOX.admin"


def test_without_a_recorded_stack_it_says_what_to_give(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["admin", "create-key", "--name", "ci", "--state-dir", str(tmp_path)])
    assert result.exit_code == 1
    assert result.stderr == (
        f"metalbus: no stack recorded in {tmp_path.resolve()}: give --nats-url, or --state-dir of a `metalbus up`\n"
    )


def test_a_key_name_the_region_would_refuse_is_refused_before_connecting() -> None:
    result = CliRunner().invoke(app, ["admin", "create-key", "--name", "semi;colon", "--nats-url", "nats://nowhere:1"])
    assert result.exit_code == 1
    assert result.stderr.startswith("metalbus: invalid key name 'semi;colon': ")


def test_state_dir_and_nats_url_together_are_refused(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["admin", "create-key", "--name", "ci", "--state-dir", str(tmp_path), "--nats-url", "nats://x:1"]
    )
    assert (result.exit_code, result.stderr) == (1, "metalbus: give --state-dir or --nats-url, not both\n")
