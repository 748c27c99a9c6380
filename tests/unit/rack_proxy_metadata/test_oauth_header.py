"""Which credentials the metadata proxy reads from an ``Authorization: OAuth`` header, and which headers it refuses."""

from urllib.parse import quote

import pytest

from metalbus.contracts.metadata import OAuthCredentials
from metalbus_rack_proxy.metadata_oauth import (
    MAX_HEADER,
    BadCredentials,
    credentials_from_header,
    parse_oauth_parameters,
)

EXPECTED = OAuthCredentials(consumer_key="ck1", token_key="tk1", token_secret="ts1")

# As oauthlib (cloud-init's OauthUrlHelper) writes it for PLAINTEXT with an empty consumer secret.
CLOUD_INIT_HEADER = (
    'OAuth oauth_nonce="158749375046911417051600000000", oauth_timestamp="1600000000", oauth_version="1.0", '
    'oauth_signature_method="PLAINTEXT", oauth_consumer_key="ck1", oauth_token="tk1", oauth_signature="%26ts1"'
)
# As the commissioning runner (commissioning_script.sh) writes it.
RUNNER_HEADER = (
    'OAuth oauth_version="1.0", oauth_signature_method="PLAINTEXT", oauth_consumer_key="ck1", '
    'oauth_token="tk1", oauth_signature="%26ts1", oauth_nonce="123-1-1700000000", oauth_timestamp="1700000000"'
)


@pytest.mark.parametrize(
    "header",
    [
        CLOUD_INIT_HEADER,
        RUNNER_HEADER,
        'OAuth realm="OAuth", oauth_consumer_key="ck1", oauth_token="tk1", oauth_signature="%26ts1"',
        'oauth oauth_consumer_key="ck1",oauth_token="tk1",oauth_signature="%26ts1"',  # scheme in any case, no spaces
        'OAUTH  oauth_consumer_key = "ck1" , oauth_token="tk1",  oauth_signature="%26ts1"  ',
        "OAuth oauth_consumer_key=ck1, oauth_token=tk1, oauth_signature=%26ts1",  # unquoted values
        'OAuth oauth_consumer_key="ck1", oauth_token="tk1", oauth_signature="&ts1"',  # signature not re-encoded
        'OAuth oauth_consumer_key="%63k1", oauth_token="tk%31", oauth_signature="%26ts1"',  # encoded plain letters
        'OAuth oauth_signature_method="plaintext", oauth_consumer_key="ck1", oauth_token="tk1", '
        'oauth_signature="%26ts1"',
    ],
)
def test_the_headers_clients_send_give_the_machine_credentials(header: str) -> None:
    assert credentials_from_header(header) == EXPECTED


def test_a_secret_with_reserved_characters_is_percent_decoded_twice_as_rfc_5849_encodes_it() -> None:
    secret = "a+b/c=d&e f%"
    signature = quote("&" + quote(secret, safe=""), safe="")  # §3.4.4, then §3.5.1
    header = f'OAuth oauth_consumer_key="ck1", oauth_token="tk1", oauth_signature="{signature}"'
    assert credentials_from_header(header).token_secret == secret


def test_parameters_are_percent_decoded_and_realm_is_kept_apart() -> None:
    parameters = parse_oauth_parameters('OAuth realm="Example", oauth_token="a%20b%2Cc", oauth_nonce=""')
    assert parameters == {"realm": "Example", "oauth_token": "a b,c", "oauth_nonce": ""}


@pytest.mark.parametrize(
    ("header", "problem"),
    [
        (None, "no Authorization header"),
        ("Bearer abc", "not OAuth"),
        ("Basic dXNlcjpwYXNz", "not OAuth"),
        ("OAuth", "missing OAuth parameters"),
        ('OAuth oauth_consumer_key="ck1", oauth_token="tk1"', "missing OAuth parameters: oauth_signature"),
        ('OAuth oauth_token="tk1", oauth_signature="%26ts1"', "oauth_consumer_key"),
        ('OAuth oauth_consumer_key="ck1", oauth_token="tk1", oauth_signature="ts1"', "no '&'"),
        ('OAuth oauth_consumer_key="ck1", oauth_token="tk1", oauth_signature="cs%26ts1"', "consumer secret"),
        (
            'OAuth oauth_signature_method="HMAC-SHA1", oauth_consumer_key="ck1", oauth_token="tk1", '
            'oauth_signature="abc"',
            "only PLAINTEXT",
        ),
        ('OAuth oauth_token="tk1", oauth_token="tk2", oauth_consumer_key="c", oauth_signature="%26s"', "twice"),
        ('OAuth oauth_token="tk1" oauth_consumer_key="c"', "malformed"),
        ('OAuth oauth_token="unterminated', "malformed"),
        ('OAuth oauth_consumer_key="ck1", oauth_token="tk1", oauth_signature="%26%FF"', "UTF-8"),
        ('OAuth oauth_consumer_key="", oauth_token="tk1", oauth_signature="%26ts1"', "consumer_key"),
        ('OAuth oauth_consumer_key="ck1", oauth_token="tk1", oauth_signature="%26"', "token_secret"),
        (f'OAuth oauth_consumer_key="{"k" * 65}", oauth_token="tk1", oauth_signature="%26s"', "consumer_key"),
        ("OAuth " + "x" * MAX_HEADER, "too long"),
    ],
)
def test_headers_without_usable_credentials_are_refused_saying_why(header: str | None, problem: str) -> None:
    with pytest.raises(BadCredentials, match=problem):
        credentials_from_header(header)
