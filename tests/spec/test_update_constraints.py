from __future__ import annotations

from typing import Any

from terrace.spec.schema_checks import UpdateConstraint
from terrace.spec.update_constraints import update_violations

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "SITE_NAME": {"type": "string"},
        "MAX_USERS": {"type": "integer", "x-update-constraint": "increase-only"},
        "EMAIL_PREFIX": {"type": "string", "x-update-constraint": "immutable"},
        "storage": {
            "type": "object",
            "properties": {"gb": {"type": "number", "x-update-constraint": "increase-only"}},
        },
    },
}


def messages(current: dict[str, Any], proposed: dict[str, Any]) -> list[str]:
    return [v.message for v in update_violations(SCHEMA, current, proposed)]


def test_decreasing_an_increase_only_value_is_refused_with_both_values() -> None:
    (violation,) = update_violations(SCHEMA, {"MAX_USERS": 100}, {"MAX_USERS": 50})
    assert violation.message == "MAX_USERS may only increase: 100 -> 50"
    assert violation.constraint is UpdateConstraint.INCREASE_ONLY
    assert (violation.path, violation.current, violation.proposed) == ("MAX_USERS", 100, 50)


def test_increasing_or_keeping_is_allowed() -> None:
    assert messages({"MAX_USERS": 100}, {"MAX_USERS": 100}) == []
    assert messages({"MAX_USERS": 100}, {"MAX_USERS": 150}) == []


def test_immutable_values_cannot_change_once_set() -> None:
    assert messages({"EMAIL_PREFIX": "alice"}, {"EMAIL_PREFIX": "bob"}) == [
        'EMAIL_PREFIX is immutable: "alice" -> "bob"'
    ]
    assert messages({"EMAIL_PREFIX": "alice"}, {"EMAIL_PREFIX": "alice"}) == []


def test_setting_a_value_that_was_never_set_is_allowed() -> None:
    assert messages({}, {"EMAIL_PREFIX": "alice", "MAX_USERS": 1}) == []


def test_removing_a_constrained_value_is_a_change() -> None:
    assert messages({"EMAIL_PREFIX": "a", "MAX_USERS": 5}, {}) == [
        "MAX_USERS may only increase and cannot be removed (it is 5)",
        'EMAIL_PREFIX is immutable and cannot be removed (it is "a")',
    ]


def test_every_violation_is_returned_including_nested_ones() -> None:
    current = {"MAX_USERS": 10, "EMAIL_PREFIX": "a", "storage": {"gb": 20}, "SITE_NAME": "x"}
    proposed = {"MAX_USERS": 9, "EMAIL_PREFIX": "b", "storage": {"gb": 10.5}, "SITE_NAME": "y"}
    assert messages(current, proposed) == [
        "MAX_USERS may only increase: 10 -> 9",
        'EMAIL_PREFIX is immutable: "a" -> "b"',
        "storage.gb may only increase: 20 -> 10.5",
    ]


def test_numbers_compare_as_numbers_and_wrong_types_are_left_to_the_schema() -> None:
    assert messages({"MAX_USERS": 10}, {"MAX_USERS": 10.0}) == []
    assert messages({"MAX_USERS": 10}, {"MAX_USERS": "9"}) == []
    assert messages({"EMAIL_PREFIX": 1}, {"EMAIL_PREFIX": True}) == [
        "EMAIL_PREFIX is immutable: 1 -> true"
    ]


def test_null_counts_as_removal_and_as_no_value_yet() -> None:
    assert messages({"MAX_USERS": 100}, {"MAX_USERS": None}) == [
        "MAX_USERS may only increase and cannot be removed (it is 100)"
    ]
    assert messages({"EMAIL_PREFIX": None}, {"EMAIL_PREFIX": "x"}) == []


def test_removing_the_parent_object_removes_its_constrained_children() -> None:
    assert messages({"storage": {"gb": 10}}, {}) == [
        "storage.gb may only increase and cannot be removed (it is 10)"
    ]
    assert messages({"storage": {"gb": 10}}, {"storage": None}) == [
        "storage.gb may only increase and cannot be removed (it is 10)"
    ]
