"""``multipart/form-data`` bodies (RFC 7578 over RFC 2046's framing) split into named parts (pure, over bytes).

What curl ``-F``, the commissioning runner, cloud-init and MAAS's own clients send: a boundary from the
Content-Type, each part's headers (``Content-Disposition: form-data; name="…"`` required,
``Content-Transfer-Encoding`` base64 or quoted-printable decoded, 7bit/8bit/binary taken as they are), its content
up to the CRLF before the next delimiter, and a closing ``--boundary--``. A part that is itself multipart, has no
name, or a body without its closing delimiter is a MultipartError. This replaces the standard library's email
parser, whose header registry cost a rack a third of its CPU when a thousand machines posted results at once
(bench/fleet.py).
"""

import binascii
import quopri
import re

MAX_PARTS = 256
MAX_HEADER_BYTES = 8192

_BOUNDARY = re.compile(r"""(?i)(?:^|;)\s*boundary\s*=\s*(?:"([^"]{1,70})"|([^\s;"]{1,70}))\s*(?:;|$)""")
_PARAMETER = re.compile(r"""(?i);\s*([a-z0-9!#$&+.^_`|~-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s;"]*))""")
_BOUNDARY_CHARACTERS = re.compile(r"^[0-9A-Za-z'()+_,\-./:=? ]*[0-9A-Za-z'()+_,\-./:=?]$")


class MultipartError(ValueError):
    """The body is not well-formed ``multipart/form-data``; the message says why."""


def boundary_of(content_type: str) -> bytes:
    """The boundary parameter of a multipart Content-Type (quoted or not)."""
    if "\r" in content_type or "\n" in content_type:
        raise MultipartError("malformed content type")
    match = _BOUNDARY.search(content_type)
    boundary = (match.group(1) or match.group(2)) if match else None
    if not boundary or not _BOUNDARY_CHARACTERS.match(boundary):
        raise MultipartError("multipart content type without a valid boundary")
    return boundary.encode("ascii")


def form_parts(content_type: str, body: bytes) -> list[tuple[str, bytes]]:
    """(name, decoded content) of each part, in order."""
    delimiter = b"--" + boundary_of(content_type)
    start = _first_delimiter(body, delimiter)
    parts: list[tuple[str, bytes]] = []
    separator = b"\r\n" + delimiter
    position = start + len(delimiter)
    while True:
        if body.startswith(b"--", position):
            return parts  # the closing delimiter (what follows it is an epilogue, ignored)
        line_end = body.find(b"\r\n", position)
        if line_end < 0 or body[position:line_end].strip(b" \t"):
            raise MultipartError("malformed multipart body: junk after a delimiter")
        end = body.find(separator, line_end + 2)
        if end < 0:
            raise MultipartError("malformed multipart body: no closing delimiter")
        if len(parts) >= MAX_PARTS:
            raise MultipartError(f"more than {MAX_PARTS} parts")
        parts.append(_part(body[line_end + 2 : end]))
        position = end + len(separator)


def _first_delimiter(body: bytes, delimiter: bytes) -> int:
    if body.startswith(delimiter):
        return 0
    found = body.find(b"\r\n" + delimiter)
    if found < 0:
        raise MultipartError("malformed multipart body: no delimiter")
    return found + 2


def _part(raw: bytes) -> tuple[str, bytes]:
    header_end = raw.find(b"\r\n\r\n")
    if raw.startswith(b"\r\n"):
        header_block, content = b"", raw[2:]
    elif header_end < 0 or header_end > MAX_HEADER_BYTES:
        raise MultipartError("malformed multipart body: a part without a header block")
    else:
        header_block, content = raw[:header_end], raw[header_end + 4 :]
    headers = _headers(header_block)
    if headers.get("content-type", "").lower().startswith("multipart/"):
        raise MultipartError("a form part is itself multipart")
    name = _parameters(headers.get("content-disposition", "")).get("name")
    if not name:
        raise MultipartError("a form part has no name")
    return name, _decoded(content, headers.get("content-transfer-encoding", "binary").strip().lower())


def _headers(block: bytes) -> dict[str, str]:
    headers: dict[str, str] = {}
    text = block.decode("utf-8", errors="replace")
    for line in re.split(r"\r\n(?![ \t])", text) if text else []:
        name, colon, value = line.partition(":")
        if not colon or not name.strip() or name != name.strip():
            raise MultipartError("malformed multipart body: a bad part header")
        headers[name.lower()] = " ".join(value.split())
    return headers


def _parameters(disposition: str) -> dict[str, str]:
    kind, _, _ = disposition.partition(";")
    if kind.strip().lower() != "form-data":
        return {}
    found: dict[str, str] = {}
    for match in _PARAMETER.finditer(disposition):
        quoted, plain = match.group(2), match.group(3)
        found[match.group(1).lower()] = re.sub(r"\\(.)", r"\1", quoted) if quoted is not None else plain
    return found


def _decoded(content: bytes, encoding: str) -> bytes:
    if encoding in ("binary", "8bit", "7bit", ""):
        return content
    if encoding == "base64":
        try:
            return binascii.a2b_base64(content)
        except binascii.Error as error:
            raise MultipartError(f"a part's base64 content is malformed: {error}") from error
    if encoding == "quoted-printable":
        return quopri.decodestring(content)
    raise MultipartError(f"content transfer encoding {encoding[:40]!r} is not supported")
