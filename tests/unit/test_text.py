"""How client text is quoted in messages (api/text.py)."""

from __future__ import annotations

from fleetops.api.text import SHOWN_CHARS, cut, shown_value


def test_cut_keeps_short_text_and_shortens_long_text() -> None:
    assert cut("abc") == "abc"
    long = "x" * (SHOWN_CHARS + 10)
    assert cut(long) == "x" * (SHOWN_CHARS - 3) + "..." and len(cut(long)) == SHOWN_CHARS


def test_shown_value_quotes_json_strings_but_not_flat_values() -> None:
    assert shown_value("10", from_strings=False) == ('`"10"`', '`"10"`')
    assert shown_value("10", from_strings=True) == ("`10`", "`10`")
    assert shown_value(True, from_strings=False) == ("`true`", "`true`")
    assert shown_value({"a": 1}, from_strings=False) == ("an Object", "对象")
    assert shown_value([1], from_strings=False) == ("an Array", "数组")
    assert shown_value(None, from_strings=False) == ("null", "null")
    assert shown_value("é" * 100, from_strings=True)[0].endswith("...`")
