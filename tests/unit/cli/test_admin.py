"""`metalbus admin create-key` finds the region's NATS from an embedded stack's record, or refuses in one line."""

from pathlib import Path

from typer.testing import CliRunner

from metalbus.cli.admin import nats_url_of_stack
from metalbus.cli.main import app
from metalbus.stack.config import StackLayout, StackSettings, save_record


def test_the_nats_address_comes_from_the_stack_record(tmp_path: Path) -> None:
    save_record(StackLayout(tmp_path), StackSettings(state_dir=tmp_path, host="127.0.0.1", nats_port=14222))
    assert nats_url_of_stack(tmp_path) == "nats://127.0.0.1:14222"


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
