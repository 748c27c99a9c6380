"""Read a machine's credentials from an ``Authorization: OAuth …`` header (OAuth 1.0a PLAINTEXT, as MAAS) (pure).

What cloud-init (oauthlib) and the commissioning runner send::

    Authorization: OAuth oauth_nonce="…", oauth_timestamp="…", oauth_version="1.0",
        oauth_signature_method="PLAINTEXT", oauth_consumer_key="…", oauth_token="…", oauth_signature="%26<secret>"

RFC 5849 §3.5.1: the scheme is ``OAuth`` (any case), parameters are ``name="value"`` separated by commas, values
are percent-encoded; ``realm`` is not an OAuth parameter. The PLAINTEXT signature (§3.4.4) is
``encode(consumer secret) & encode(token secret)``, percent-encoded once more in the header; MAAS's consumer
secret is empty, so anything before the ``&`` is refused. Only PLAINTEXT is accepted (the rack cannot check an
HMAC: the region holds the secrets). The secret itself is checked by the region, never here.
"""

import re
from urllib.parse import unquote

from pydantic import ValidationError

from metalbus.contracts.metadata import OAuthCredentials

SCHEME = "oauth"
PLAINTEXT = "PLAINTEXT"
MAX_HEADER = 4096

# One ``name = "value"`` (or an unquoted value, which some clients send) and the comma after it.
_PARAMETER = re.compile(r'\s*([A-Za-z0-9_]+)\s*=\s*(?:"([^"]*)"|([^,\s"]*))\s*(?:,|$)')


class BadCredentials(ValueError):
    """No usable OAuth credentials in the request: answered 401 without asking the region."""


def parse_oauth_parameters(header: str) -> dict[str, str]:
    """The percent-decoded parameters of an ``OAuth`` authorization header; BadCredentials if it is not one."""
    if len(header) > MAX_HEADER:
        raise BadCredentials("authorization header too long")
    scheme, _, rest = header.strip().partition(" ")
    if scheme.lower() != SCHEME:
        raise BadCredentials(f"authorization scheme is {scheme!r}, not OAuth")
    parameters: dict[str, str] = {}
    position, rest = 0, rest.strip()
    while position < len(rest):
        match = _PARAMETER.match(rest, position)
        if match is None or match.end() == position:
            raise BadCredentials(f"malformed OAuth parameters at character {position}")
        name, quoted, bare = match.groups()
        if name in parameters:
            raise BadCredentials(f"OAuth parameter {name} given twice")
        parameters[name] = unquote(quoted if quoted is not None else bare, errors="strict")
        position = match.end()
    return parameters


def token_secret_from_signature(signature: str) -> str:
    """The token secret of a decoded PLAINTEXT signature ``<consumer secret>&<token secret>`` (consumer's empty)."""
    consumer_secret, separator, token_secret = signature.partition("&")
    if not separator:
        raise BadCredentials("PLAINTEXT signature has no '&'")
    if consumer_secret:
        raise BadCredentials("the consumer secret must be empty")
    return unquote(token_secret, errors="strict")


def credentials_from_header(header: str | None) -> OAuthCredentials:
    """The machine's credentials in an ``Authorization`` header, or BadCredentials saying what is wrong."""
    if header is None:
        raise BadCredentials("no Authorization header")
    try:
        parameters = parse_oauth_parameters(header)
    except UnicodeDecodeError as error:
        raise BadCredentials("OAuth parameter is not percent-encoded UTF-8") from error
    method = parameters.get("oauth_signature_method", PLAINTEXT)
    if method.upper() != PLAINTEXT:
        raise BadCredentials(f"signature method {method!r} is not supported, only PLAINTEXT")
    missing = [name for name in ("oauth_consumer_key", "oauth_token", "oauth_signature") if name not in parameters]
    if missing:
        raise BadCredentials(f"missing OAuth parameters: {', '.join(missing)}")
    try:
        return OAuthCredentials(
            consumer_key=parameters["oauth_consumer_key"],
            token_key=parameters["oauth_token"],
            token_secret=token_secret_from_signature(parameters["oauth_signature"]),
        )
    except UnicodeDecodeError as error:
        raise BadCredentials("token secret is not percent-encoded UTF-8") from error
    except ValidationError as error:
        fields = ", ".join(str(item["loc"][0]) for item in error.errors() if item["loc"])
        raise BadCredentials(f"OAuth credentials out of bounds: {fields}") from error
