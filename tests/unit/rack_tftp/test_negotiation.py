"""Option negotiation of a read request: what the transfer uses and what the OACK says (RFC 2347-2349, 7440)."""

import pytest

from metalbus_rack_tftp.tftp_codec import NegotiationLimits, TransferOptions, negotiate

LIMITS = NegotiationLimits(max_blksize=1468, max_windowsize=64)


def test_a_request_without_options_gets_no_oack_and_512_byte_lockstep_blocks() -> None:
    negotiated = negotiate({}, 1000, LIMITS)
    assert negotiated.acknowledged == {}
    assert negotiated.options == TransferOptions(blksize=512, windowsize=1, timeout_s=None)


def test_every_known_option_is_acknowledged_and_tsize_carries_the_file_size() -> None:
    requested = {"blksize": "1468", "tsize": "0", "timeout": "3", "windowsize": "16"}
    negotiated = negotiate(requested, 46_000, LIMITS)
    assert negotiated.acknowledged == {"blksize": "1468", "timeout": "3", "tsize": "46000", "windowsize": "16"}
    assert negotiated.options == TransferOptions(blksize=1468, windowsize=16, timeout_s=3)


def test_a_block_larger_than_the_server_allows_is_answered_with_the_server_maximum() -> None:
    negotiated = negotiate({"blksize": "65464"}, 10, LIMITS)
    assert negotiated.acknowledged == {"blksize": "1468"}
    assert negotiated.options.blksize == 1468


def test_a_window_larger_than_the_server_allows_is_answered_with_the_server_maximum() -> None:
    negotiated = negotiate({"windowsize": "65535"}, 10, LIMITS)
    assert negotiated.acknowledged == {"windowsize": "64"}
    assert negotiated.options.windowsize == 64


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("blksize", "7"),
        ("blksize", "65465"),
        ("blksize", "big"),
        ("timeout", "0"),
        ("timeout", "256"),
        ("windowsize", "0"),
        ("windowsize", "65536"),
        ("tsize", "-1"),
        ("tsize", "9" * 5000),
        ("utimeout", "1000"),
        ("multicast", ""),
    ],
)
def test_unknown_options_and_invalid_values_are_ignored(name: str, value: str) -> None:
    negotiated = negotiate({name: value}, 10, LIMITS)
    assert negotiated.acknowledged == {}
    assert negotiated.options == TransferOptions()


def test_the_smallest_and_largest_valid_values_are_accepted() -> None:
    low = negotiate({"blksize": "8", "timeout": "1", "windowsize": "1"}, 0, NegotiationLimits(65464, 65535))
    high = negotiate({"blksize": "65464", "timeout": "255", "windowsize": "65535"}, 0, NegotiationLimits(65464, 65535))
    assert low.options == TransferOptions(blksize=8, windowsize=1, timeout_s=1)
    assert high.options == TransferOptions(blksize=65464, windowsize=65535, timeout_s=255)


def test_tsize_of_an_empty_file_is_left_out_of_the_oack_because_curl_rejects_tsize_0() -> None:
    negotiated = negotiate({"tsize": "0", "blksize": "1468"}, 0, LIMITS)
    assert negotiated.acknowledged == {"blksize": "1468"}
