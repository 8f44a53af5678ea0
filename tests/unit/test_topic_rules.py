"""The rule file of the device ACL: its parser, the shipped rules, and the probe table on the Python side."""

from __future__ import annotations

import re

import pytest

from fleetops.messaging.topic_rules import Access, RuleFileError, load_rules, parse_rules
from fleetops.messaging.topics import DeviceId, may_publish, may_subscribe
from tests.acl_probes import PROBES, Probe

HEADER = """
syntax pid [A-Z0-9]{10}
syntax dn [a-z]{1,8}
limit topic-bytes 64
limit topic-levels 4
"""
ME = DeviceId("ABCDE12345", "lamp01")


@pytest.mark.parametrize("probe", PROBES, ids=lambda probe: probe.id)
def test_the_probe_table_holds_for_the_python_rules(probe: Probe) -> None:
    topic = probe.render(ME.product_id, ME.device_name, "lamp02")
    check = may_subscribe if probe.action == "subscribe" else may_publish
    assert check(ME, topic) is probe.allowed


def test_first_matching_rule_wins() -> None:
    rules = parse_rules(HEADER + "subscribe {pid}/{dn}/control\nboth {pid}/{dn}/{any}\n")
    assert rules.topic_access("ABCDE12345", "lamp", "ABCDE12345/lamp/control") is Access.SUBSCRIBE
    assert rules.topic_access("ABCDE12345", "lamp", "ABCDE12345/lamp/other") is Access.BOTH
    assert rules.topic_access("ABCDE12345", "lamp", "ABCDE12345/lamp2/other") is Access.NONE
    assert rules.topic_access("ABCDE12345", "lamp", "ABCDE12345/lamp/") is Access.NONE  # {any} is non-empty


def test_wildcard_rules_grant_only_the_filter_they_spell() -> None:
    rules = parse_rules(HEADER + "subscribe $r/{pid}/{dn}/{any}\nsubscribe $r/{pid}/{dn}/+\n")
    assert rules.filter_granted("ABCDE12345", "lamp", "$r/ABCDE12345/lamp/+")
    assert not rules.filter_granted("ABCDE12345", "lamp", "$r/ABCDE12345/other/+")
    assert not rules.filter_granted("ABCDE12345", "lamp", "$r/ABCDE12345/+/+")
    assert not rules.filter_granted("ABCDE12345", "lamp", "$r/ABCDE12345/lamp/#")
    # wildcard rules are for filters only, and {any} never takes a wildcard level
    assert rules.topic_access("ABCDE12345", "lamp", "$r/ABCDE12345/lamp/+") is Access.NONE
    assert rules.topic_access("ABCDE12345", "lamp", "$r/ABCDE12345/lamp/7") is Access.SUBSCRIBE


def test_the_shipped_rules_define_the_client_id() -> None:
    rules = load_rules()
    assert (rules.product_id.min_length, rules.product_id.max_length) == (10, 10)
    assert rules.device_name.pattern.fullmatch("a:b_c-D9")
    assert (rules.topic_max_bytes, rules.topic_max_levels) == (255, 10)
    assert all(rule.access is Access.SUBSCRIBE for rule in rules.rules if rule.is_wildcard)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("syntax pid [A-Z]{10}\nlimit topic-bytes 9\nlimit topic-levels 3\n", "no 'syntax dn' line"),
        (HEADER + "allow {pid}/{dn}/x\n", "unknown line 'allow'"),
        (HEADER + "publish {pid}/{dn}/+\n", "only allowed in a subscribe rule"),
        (HEADER + "subscribe {pid}/#/{dn}\n", "'#' must be the last level"),
        (HEADER + "subscribe {pid}/{nope}/{dn}\n", "unknown placeholder '{nope}'"),
        (HEADER + "subscribe {pid}/x\n", "must contain both {pid} and {dn}"),
        (HEADER + 'subscribe {pid}/{dn}/a"b\n', "bad level"),
        (HEADER + "syntax bad [A-Z]\n", "bad syntax"),
        (HEADER + "syntax x [a]{0,3}\n", "bad length range"),
        (HEADER.replace("{10}", "{1,10}"), "fixed length"),
        (HEADER.replace("limit topic-levels 4\n", ""), "no 'limit topic-levels' line"),
    ],
)
def test_rule_file_errors_name_the_problem(text: str, message: str) -> None:
    with pytest.raises(RuleFileError, match=re.escape(message)):
        parse_rules(text, "test.rules")


def test_errors_name_the_line() -> None:
    with pytest.raises(RuleFileError, match=r"^test.rules:7: "):
        parse_rules(HEADER + "# a comment\nwrite {pid}/{dn}\n", "test.rules")
