"""CLI profiles: `metalbus login` stores them privately, commands pick one, the environment overrides it."""

import stat
import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from metalbus.cli.config import (
    ConfigError,
    Profile,
    add_profile,
    config_path,
    load_profiles,
    normalise_url,
    remove_profile,
    resolve_target,
)
from metalbus.cli.main import app
from tests.unit.cli.fake_api import BASE_URL, GOOD_KEY, FakeApi

OTHER_KEY = "mb_0ther000_ZyXwVuTsRqPoNmLkJiHgFeDc"


def test_the_profiles_file_lives_under_xdg_config_home_or_else_dot_config() -> None:
    assert config_path({"XDG_CONFIG_HOME": "/x/conf", "HOME": "/home/op"}) == Path("/x/conf/metalbus/cli.toml")
    assert config_path({"HOME": "/home/op"}) == Path("/home/op/.config/metalbus/cli.toml")


def test_login_checks_the_key_then_saves_the_profile_readable_by_its_owner_only(tmp_path: Path) -> None:
    fake = FakeApi()
    result = CliRunner().invoke(
        app, ["login", "lab", BASE_URL + "/api/v1/", GOOD_KEY], obj=fake.environment(XDG_CONFIG_HOME=str(tmp_path))
    )
    assert result.exit_code == 0, result.output
    path = tmp_path / "metalbus" / "cli.toml"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    saved = tomllib.loads(path.read_text())
    assert saved == {"default": "lab", "profiles": {"lab": {"url": BASE_URL, "api_key": GOOD_KEY}}}
    [check] = fake.requests_to("GET", "/api/v1/machines")
    assert check.headers["authorization"] == f"Bearer {GOOD_KEY}"


def test_login_with_a_refused_key_saves_nothing_and_says_so(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["login", "lab", BASE_URL, OTHER_KEY], obj=FakeApi().environment(XDG_CONFIG_HOME=str(tmp_path))
    )
    assert result.exit_code == 1
    assert result.stderr == "metalbus: not logged in or key refused\n"
    assert not (tmp_path / "metalbus" / "cli.toml").exists()


def test_login_refuses_something_that_is_not_an_api_key(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["login", "lab", BASE_URL, "hunter2"], obj=FakeApi().environment(XDG_CONFIG_HOME=str(tmp_path))
    )
    assert result.exit_code == 2
    assert "not a metalbus API key" in result.stderr
    assert not (tmp_path / "metalbus").exists()


def test_an_existing_file_with_loose_permissions_is_rewritten_0600(tmp_path: Path) -> None:
    path = tmp_path / "cli.toml"
    path.write_text('default = "old"\n')
    path.chmod(0o644)
    add_profile(path, Profile("lab", BASE_URL, GOOD_KEY))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_profiles(path).entries["lab"].api_key == GOOD_KEY


def test_the_last_login_is_the_default_and_profile_picks_another(tmp_path: Path) -> None:
    path = tmp_path / "metalbus" / "cli.toml"
    add_profile(path, Profile("lab", "http://lab:5240", GOOD_KEY))
    add_profile(path, Profile("prod", "http://prod:5240", OTHER_KEY))
    environ = {"XDG_CONFIG_HOME": str(tmp_path)}
    assert resolve_target(environ, None).url == "http://prod:5240"
    assert resolve_target(environ, "lab").api_key == GOOD_KEY
    assert resolve_target(environ | {"METALBUS_PROFILE": "lab"}, None).profile == "lab"


def test_environment_variables_override_the_profile_and_suffice_without_one(tmp_path: Path) -> None:
    add_profile(tmp_path / "metalbus" / "cli.toml", Profile("lab", "http://lab:5240", GOOD_KEY))
    environ = {"XDG_CONFIG_HOME": str(tmp_path), "METALBUS_URL": "http://elsewhere:8080/"}
    target = resolve_target(environ, None)
    assert (target.url, target.api_key) == ("http://elsewhere:8080", GOOD_KEY)
    assert resolve_target(environ | {"METALBUS_API_KEY": OTHER_KEY}, None).api_key == OTHER_KEY
    nothing_saved = {"XDG_CONFIG_HOME": str(tmp_path / "empty"), "METALBUS_URL": BASE_URL}
    assert resolve_target(nothing_saved | {"METALBUS_API_KEY": OTHER_KEY}, None).url == BASE_URL


def test_without_profile_or_environment_a_command_says_how_to_log_in(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["machines", "list"], obj=FakeApi().environment(XDG_CONFIG_HOME=str(tmp_path)))
    assert result.exit_code == 1
    assert result.stderr.startswith("metalbus: not logged in: run `metalbus login <profile> <url> <api-key>`")
    with pytest.raises(ConfigError, match="no profile 'ghost'"):
        resolve_target({"XDG_CONFIG_HOME": str(tmp_path)}, "ghost")


def test_logout_forgets_the_profile_and_moves_the_default(tmp_path: Path) -> None:
    path = tmp_path / "metalbus" / "cli.toml"
    add_profile(path, Profile("lab", "http://lab:5240", GOOD_KEY))
    add_profile(path, Profile("prod", "http://prod:5240", OTHER_KEY))
    result = CliRunner().invoke(app, ["logout", "prod"], obj=FakeApi().environment(XDG_CONFIG_HOME=str(tmp_path)))
    assert result.exit_code == 0, result.output
    profiles = load_profiles(path)
    assert (profiles.default, sorted(profiles.entries)) == ("lab", ["lab"])
    assert OTHER_KEY not in path.read_text()
    with pytest.raises(ConfigError, match="no profile 'prod'"):
        remove_profile(path, "prod")


@pytest.mark.parametrize(
    ("given", "root"),
    [
        ("http://h:5240", "http://h:5240"),
        ("http://h:5240/", "http://h:5240"),
        ("https://h/api/v1", "https://h"),
        ("http://h/prefix/api/v1/", "http://h/prefix"),
    ],
)
def test_urls_are_kept_as_the_api_root(given: str, root: str) -> None:
    assert normalise_url(given) == root


def test_a_url_that_is_not_http_is_refused() -> None:
    with pytest.raises(ConfigError, match="not an http"):
        normalise_url("ftp://h")


def test_a_profile_name_with_quotes_round_trips_through_the_file(tmp_path: Path) -> None:
    path = tmp_path / "cli.toml"
    add_profile(path, Profile("lab.1_a-b", 'http://h:1/"x"', GOOD_KEY))
    assert load_profiles(path).entries["lab.1_a-b"].url == 'http://h:1/"x"'
