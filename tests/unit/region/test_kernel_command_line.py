"""The kernel command line of a boot config: order, quoting, and values that no bootloader can mangle."""

import string
from ipaddress import IPv4Address

import pytest
from hypothesis import given
from hypothesis import strategies as st

from metalbus.contracts.metadata import OAuthCredentials
from metalbus_region.kernel_command_line import (
    MAX_COMMAND_LINE,
    KernelCommandLineError,
    commissioning_parameters,
    enlistment_parameters,
    render_kernel_command_line,
    split_kernel_parameters,
)

RACK = IPv4Address("10.20.0.2")
CREDENTIALS = OAuthCredentials(consumer_key="ck-1", token_key="tk_2", token_secret="s3cr3t-Value_9")
URL_SAFE = string.ascii_letters + string.digits + "-_"  # what secrets.token_urlsafe produces


def words_as_dict(line: str) -> dict[str, str]:
    return dict(word.split("=", 1) for word in line.split(" "))


def test_commissioning_line_has_the_resource_parameters_first_then_metalbus_parameters_in_order() -> None:
    line = render_kernel_command_line(
        "console=ttyS0,115200 quiet", commissioning_parameters(RACK, "x7kq2m", CREDENTIALS)
    )
    assert line == (
        "console=ttyS0,115200 quiet metalbus.purpose=commissioning metalbus.system_id=x7kq2m "
        "metalbus.metadata_url=http://10.20.0.2:5248/MAAS/metadata/ metalbus.consumer_key=ck-1 "
        "metalbus.token_key=tk_2 metalbus.token_secret=s3cr3t-Value_9"
    )


def test_enlistment_line_points_at_the_anonymous_enlistment_tree_and_carries_no_credentials() -> None:
    line = render_kernel_command_line("", enlistment_parameters(RACK, "a1b2c3"))
    assert line == (
        "metalbus.purpose=enlistment metalbus.system_id=a1b2c3 "
        "metalbus.metadata_url=http://10.20.0.2:5248/MAAS/metadata/enlist/"
    )
    assert "token" not in line


def test_a_rack_that_relays_syslog_is_named_last_as_the_machines_syslog_destination() -> None:
    commissioning = commissioning_parameters(RACK, "x7kq2m", CREDENTIALS, 5248, syslog_port=5247)
    enlistment = enlistment_parameters(RACK, "a1b2c3", 5248, syslog_port=1514)
    assert commissioning[-1] == ("metalbus.syslog", "10.20.0.2:5247")
    assert enlistment[-1] == ("metalbus.syslog", "10.20.0.2:1514")
    assert words_as_dict(render_kernel_command_line("", commissioning))["metalbus.syslog"] == "10.20.0.2:5247"


def test_quoted_resource_parameters_stay_one_word_and_extra_whitespace_collapses() -> None:
    line = render_kernel_command_line('  console=tty0\t  dyndbg="file x.c +p"   ro ', [("metalbus.purpose", "x")])
    assert line == 'console=tty0 dyndbg="file x.c +p" ro metalbus.purpose=x'
    assert split_kernel_parameters(line) == ["console=tty0", 'dyndbg="file x.c +p"', "ro", "metalbus.purpose=x"]


def test_a_resource_parameter_with_the_name_of_ours_is_dropped_so_ours_is_never_shadowed() -> None:
    line = render_kernel_command_line(
        "metalbus.token_key=stale quiet metalbus.metadata_url=http://elsewhere/",
        commissioning_parameters(RACK, "x7kq2m", CREDENTIALS),
    )
    assert "stale" not in line and "elsewhere" not in line
    assert line.startswith("quiet metalbus.purpose=commissioning ")
    assert words_as_dict(line.removeprefix("quiet "))["metalbus.token_key"] == "tk_2"


@pytest.mark.parametrize(
    "value",
    ["two words", 'a"b', "a'b", "a\\b", "$HOME", "a;b", "a{b}", "a|b", "a&b", "a*b", "a?b", "a#b", "a\nb", "\tx", ""],
)
def test_values_that_a_bootloader_would_split_or_expand_are_refused(value: str) -> None:
    with pytest.raises(KernelCommandLineError, match=r"metalbus\.token_secret"):
        render_kernel_command_line("", [("metalbus.token_secret", value)])


@pytest.mark.parametrize("name", ["", "a b", "a=b", 'a"'])
def test_names_must_be_plain_words(name: str) -> None:
    with pytest.raises(KernelCommandLineError, match="not a kernel parameter name"):
        render_kernel_command_line("", [(name, "value")])


def test_a_parameter_given_twice_is_refused() -> None:
    with pytest.raises(KernelCommandLineError, match="twice"):
        render_kernel_command_line("", [("metalbus.purpose", "a"), ("metalbus.purpose", "b")])


@pytest.mark.parametrize("base", ['dyndbg="never closed', "console=tty0\x00", "a\x1bb"])
def test_resource_parameters_with_an_unbalanced_quote_or_a_control_character_are_refused(base: str) -> None:
    with pytest.raises(KernelCommandLineError):
        render_kernel_command_line(base, [])


def test_a_line_longer_than_the_kernel_accepts_is_refused() -> None:
    base = "x" * (MAX_COMMAND_LINE - len(" metalbus.purpose=ab") + 1)
    with pytest.raises(KernelCommandLineError, match="limit"):
        render_kernel_command_line(base, [("metalbus.purpose", "ab")])
    assert len(render_kernel_command_line(base[:-1], [("metalbus.purpose", "ab")])) == MAX_COMMAND_LINE


@given(
    consumer_key=st.text(URL_SAFE, min_size=1, max_size=64),
    token_key=st.text(URL_SAFE, min_size=1, max_size=64),
    token_secret=st.text(URL_SAFE, min_size=1, max_size=128),
    rack=st.ip_addresses(v=4),
)
def test_any_url_safe_credentials_come_back_whole_from_the_rendered_line(
    consumer_key: str, token_key: str, token_secret: str, rack: IPv4Address
) -> None:
    credentials = OAuthCredentials(consumer_key=consumer_key, token_key=token_key, token_secret=token_secret)
    line = render_kernel_command_line("console=ttyS0", commissioning_parameters(rack, "x7kq2m", credentials))
    words = split_kernel_parameters(line)
    assert line == " ".join(words)  # one space between words, none inside a value
    parsed = words_as_dict(" ".join(words[1:]))
    assert (parsed["metalbus.consumer_key"], parsed["metalbus.token_key"], parsed["metalbus.token_secret"]) == (
        consumer_key,
        token_key,
        token_secret,
    )
    assert parsed["metalbus.metadata_url"] == f"http://{rack}:5248/MAAS/metadata/"
