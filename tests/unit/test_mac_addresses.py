"""MacAddress: every accepted spelling becomes aa:bb:cc:dd:ee:ff; anything else is refused."""

import pytest

from metalbus.contracts.common import normalise_mac


@pytest.mark.parametrize(
    "spelling",
    ["52:54:00:ab:cd:ef", "52:54:00:AB:CD:EF", "52-54-00-ab-cd-ef", "525400abcdef", " 52:54:00:ab:cd:ef "],
)
def test_every_accepted_spelling_becomes_the_canonical_one(spelling: str) -> None:
    assert normalise_mac(spelling) == "52:54:00:ab:cd:ef"


@pytest.mark.parametrize(
    "text",
    ["52:54:00:ab:cd:eg", "52:54:00:ab:cd", "52:54:00:ab:cd:ef:01", "52:54-00:ab:cd:ef", "52:54:00:ab:cd:ef\n0", ""],
)
def test_anything_else_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="not a MAC address"):
        normalise_mac(text)
