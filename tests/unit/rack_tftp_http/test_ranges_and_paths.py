"""Which bytes the HTTP boot server sends for a Range header (RFC 9110 §14), and which path the source receives."""

import pytest

from metalbus_rack_tftp.http_boot import (
    MAX_RANGES,
    PartialContent,
    RangeNotSatisfiable,
    WholeFile,
    answer_range,
    is_traversal,
    source_path,
)

SIZE = 10_000


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("bytes=0-0", PartialContent(0, 0)),
        ("bytes=0-499", PartialContent(0, 499)),
        ("bytes=100-199", PartialContent(100, 199)),
        ("bytes=-1", PartialContent(SIZE - 1, SIZE - 1)),
        ("bytes=-500", PartialContent(SIZE - 500, SIZE - 1)),
        ("bytes=5-", PartialContent(5, SIZE - 1)),
        ("bytes=9999-", PartialContent(9999, 9999)),
        ("bytes=9000-20000", PartialContent(9000, SIZE - 1)),
        ("bytes=-20000", PartialContent(0, SIZE - 1)),
        ("bytes=0-", PartialContent(0, SIZE - 1)),
        ("Bytes = 10-19", WholeFile()),
        ("BYTES=10-19", PartialContent(10, 19)),
        ("bytes= 10-19 ", PartialContent(10, 19)),
    ],
)
def test_a_single_satisfiable_range_is_sent_as_partial_content(header: str, expected: PartialContent) -> None:
    assert answer_range(header, SIZE) == expected


@pytest.mark.parametrize(
    "header",
    [
        "bytes=10000-",
        "bytes=10000-10001",
        "bytes=20000-30000",
        "bytes=-0",
        "bytes=10000-,20000-",
    ],
)
def test_ranges_that_all_start_at_or_past_the_end_are_not_satisfiable(header: str) -> None:
    assert answer_range(header, SIZE) == RangeNotSatisfiable()


@pytest.mark.parametrize(
    "header",
    [
        "",
        "bytes",
        "bytes=",
        "bytes=-",
        "bytes=abc",
        "bytes=1-2-3",
        "bytes=+1-2",
        "bytes=0x10-0x20",
        "bytes=20-10",
        "items=0-10",
        "0-10",
        "bytes=0-10,garbage",
        "bytes=1.5-2",
    ],
)
def test_a_malformed_range_header_is_ignored_and_the_whole_file_sent(header: str) -> None:
    assert answer_range(header, SIZE) == WholeFile()


@pytest.mark.parametrize(
    "header",
    ["bytes=0-10,5-20", "bytes=0-0,-1", "bytes=0-99,200-299", "bytes=20000-,0-10"],
)
def test_several_ranges_overlapping_or_not_get_the_whole_file(header: str) -> None:
    assert answer_range(header, SIZE) == WholeFile()


def test_no_range_header_means_the_whole_file() -> None:
    assert answer_range(None, SIZE) == WholeFile()


def test_if_range_without_validators_to_match_means_the_whole_file() -> None:
    assert answer_range("bytes=0-0", SIZE, if_range_present=True) == WholeFile()


def test_more_ranges_than_the_limit_are_ignored_rather_than_evaluated() -> None:
    header = "bytes=" + ",".join(["0-0"] * (MAX_RANGES + 1))
    assert answer_range(header, SIZE) == WholeFile()


def test_an_empty_file_satisfies_no_range_but_a_suffix_gives_the_whole_empty_file() -> None:
    assert answer_range("bytes=0-", 0) == RangeNotSatisfiable()
    assert answer_range("bytes=0-0", 0) == RangeNotSatisfiable()
    assert answer_range("bytes=-0", 0) == RangeNotSatisfiable()
    assert answer_range("bytes=-5", 0) == WholeFile()


def test_partial_content_length_counts_both_ends() -> None:
    assert PartialContent(100, 199).length == 100
    assert PartialContent(0, 0).length == 1


@pytest.mark.parametrize(
    ("url_path", "expected"),
    [
        ("/ipxe.cfg-52:54:00:12:34:56", "ipxe.cfg-52:54:00:12:34:56"),
        ("/images/amd64/ephemeral/vmlinuz", "images/amd64/ephemeral/vmlinuz"),
        ("/pxelinux.cfg/01-52-54-00-12-34-56", "pxelinux.cfg/01-52-54-00-12-34-56"),
        ("//etc/passwd", "etc/passwd"),
        ("///images//x", "images//x"),
        ("/", ""),
    ],
)
def test_the_source_gets_the_url_path_without_its_leading_slashes(url_path: str, expected: str) -> None:
    assert source_path(url_path) == expected


@pytest.mark.parametrize(
    "path",
    ["..", "../etc/passwd", "images/../../etc/passwd", "images/..", "a\\..\\b", "lpxelinux.0\x00.cfg"],
)
def test_parent_segments_and_nul_bytes_are_traversal(path: str) -> None:
    assert is_traversal(path)


@pytest.mark.parametrize("path", ["images/a..b", "...", "ipxe.cfg-52:54:00:12:34:56", "images/.hidden", ""])
def test_dots_inside_names_are_not_traversal(path: str) -> None:
    assert not is_traversal(path)
