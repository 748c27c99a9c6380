"""multipart/form-data bodies split into named parts: what independent encoders (aiohttp's MultipartWriter, a
hand-written curl-like body) produce comes back byte for byte; malformed bodies are refused saying why."""

import asyncio

import pytest
from aiohttp import MultipartWriter, payload
from hypothesis import given, settings
from hypothesis import strategies as st

from metalbus_rack_proxy.multipart_form import MultipartError, boundary_of, form_parts

CURL_BODY = (
    b"--------------------------d74496d66958873e\r\n"
    b'Content-Disposition: form-data; name="op"\r\n\r\n'
    b"signal\r\n"
    b"--------------------------d74496d66958873e\r\n"
    b'Content-Disposition: form-data; name="00-cpu.out"; filename="00-cpu.out"\r\n'
    b"Content-Type: application/octet-stream\r\n\r\n"
    b"line one\r\n--not a delimiter\r\n\x00\xff\r\n"
    b"--------------------------d74496d66958873e--\r\n"
)
CURL_TYPE = "multipart/form-data; boundary=------------------------d74496d66958873e"


def aiohttp_encoded(fields: list[tuple[str, bytes]]) -> tuple[str, bytes]:
    """The body aiohttp's own multipart writer makes of these fields (an encoder we did not write)."""
    writer = MultipartWriter("form-data")
    for name, value in fields:
        part = writer.append_payload(payload.BytesPayload(value))
        part.set_content_disposition("form-data", name=name)

    class Sink:
        def __init__(self) -> None:
            self.data = b""

        async def write(self, chunk: bytes) -> None:
            self.data += chunk

    sink = Sink()
    asyncio.run(writer.write(sink))  # type: ignore[arg-type]
    return writer.content_type, sink.data


def test_a_body_as_curl_sends_it_splits_into_its_fields_with_the_bytes_unchanged() -> None:
    assert form_parts(CURL_TYPE, CURL_BODY) == [
        ("op", b"signal"),
        ("00-cpu.out", b"line one\r\n--not a delimiter\r\n\x00\xff"),
    ]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.text(alphabet="abcdefghij-_.0123456789", min_size=1, max_size=20), st.binary(max_size=300)),
        max_size=8,
    )
)
def test_whatever_aiohttp_encodes_comes_back_as_it_went_in(fields: list[tuple[str, bytes]]) -> None:
    content_type, body = aiohttp_encoded(fields)
    assert form_parts(content_type, body) == fields


def test_a_quoted_boundary_a_preamble_an_epilogue_and_base64_content_are_understood() -> None:
    body = (
        b"this preamble is ignored\r\n--a b\r\n"
        b'Content-Disposition: form-data; name="x.yaml"\r\nContent-Transfer-Encoding: base64\r\n\r\n'
        b"eyJhIjogMX0=\r\n--a b--\r\nan epilogue"
    )
    assert form_parts('multipart/form-data; boundary="a b"', body) == [("x.yaml", b'{"a": 1}')]


@pytest.mark.parametrize(
    ("content_type", "body", "problem"),
    [
        (CURL_TYPE, CURL_BODY[:-50], "no closing delimiter"),
        (CURL_TYPE, b"no delimiter anywhere", "no delimiter"),
        ("multipart/form-data", CURL_BODY, "boundary"),
        ("multipart/form-data; boundary=x", b"--x\r\nContent-Disposition: form-data\r\n\r\nv\r\n--x--", "no name"),
        (
            "multipart/form-data; boundary=x",
            b'--x\r\nContent-Disposition: form-data; name="n"\r\nContent-Type: multipart/mixed; boundary=y\r\n\r\n'
            b"--y--\r\n--x--",
            "itself multipart",
        ),
        ("multipart/form-data; boundary=x", b"--x junk\r\n\r\n--x--", "junk after a delimiter"),
        ("multipart/form-data; boundary=x\r\nX: y", CURL_BODY, "malformed content type"),
    ],
)
def test_malformed_bodies_are_refused_saying_why(content_type: str, body: bytes, problem: str) -> None:
    with pytest.raises(MultipartError, match=problem):
        form_parts(content_type, body)


def test_a_boundary_longer_than_rfc_2046_allows_is_refused() -> None:
    with pytest.raises(MultipartError):
        boundary_of("multipart/form-data; boundary=" + "b" * 71)
