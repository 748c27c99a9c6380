"""The machine lifecycle, cell by cell, and the order in which racks are tried for power work (pure, no I/O).

The expected table is written out here by hand from the issue, not derived from the code's table: a change to
``lifecycle.TRANSITIONS`` that the issue does not allow fails a cell below.
"""

import random
from collections import Counter
from itertools import count

import pytest

from metalbus.contracts.errors import InvalidTransition
from metalbus.contracts.machines import MachineAction, MachineStatus
from metalbus_region.lifecycle import next_status
from metalbus_region.power_racks import RackRotation, order_candidates

S = MachineStatus
A = MachineAction
REFUSED = "refused"
PREVIOUS = "previous"
Expected = MachineStatus | str

ACTIONS = (A.COMMISSION, A.ABORT, A.MARK_BROKEN, A.MARK_FIXED, A.COMMISSIONING_SUCCEEDED, A.COMMISSIONING_FAILED)
X, P = REFUSED, PREVIOUS
# fmt: off
EXPECTED: dict[MachineStatus, tuple[Expected, ...]] = {
    #                        commission        abort  mark_broken  mark_fixed  succeeded  failed
    S.NEW:                  (S.COMMISSIONING,  X,     S.BROKEN,    X,          X,         X),
    S.COMMISSIONING:        (X,                P,     S.BROKEN,    X,          S.READY,   S.FAILED_COMMISSIONING),
    S.READY:                (S.COMMISSIONING,  X,     S.BROKEN,    X,          X,         X),
    S.FAILED_COMMISSIONING: (S.COMMISSIONING,  X,     S.BROKEN,    X,          X,         X),
    S.BROKEN:               (X,                X,     X,           P,          X,         X),
    S.ALLOCATED:            (X,                X,     S.BROKEN,    X,          X,         X),
    S.DEPLOYING:            (X,                X,     S.BROKEN,    X,          X,         X),
    S.DEPLOYED:             (X,                X,     S.BROKEN,    X,          X,         X),
    S.RELEASING:            (X,                X,     S.BROKEN,    X,          X,         X),
}
# Where "back to the previous status" (abort, mark_fixed) leads, for every previous status a machine may have:
# a resting status is returned to; anything else (or no history) means NEW.
PREVIOUS_RESOLVES_TO: dict[MachineStatus | None, MachineStatus] = {
    None: S.NEW,
    S.NEW: S.NEW,
    S.COMMISSIONING: S.NEW,
    S.READY: S.READY,
    S.FAILED_COMMISSIONING: S.FAILED_COMMISSIONING,
    S.BROKEN: S.NEW,
    S.ALLOCATED: S.NEW,
    S.DEPLOYING: S.NEW,
    S.DEPLOYED: S.NEW,
    S.RELEASING: S.NEW,
}
# fmt: on
CELLS = [(status, action, EXPECTED[status][i]) for status in EXPECTED for i, action in enumerate(ACTIONS)]


def test_the_expected_table_covers_every_status_and_every_action() -> None:
    assert set(EXPECTED) == set(MachineStatus)
    assert sorted(ACTIONS) == sorted(MachineAction)
    assert all(len(row) == len(ACTIONS) for row in EXPECTED.values())
    assert set(PREVIOUS_RESOLVES_TO) == {*MachineStatus, None}
    assert len(CELLS) == len(MachineStatus) * len(MachineAction)


@pytest.mark.parametrize(
    ("current", "action", "expected"),
    [cell for cell in CELLS if isinstance(cell[2], MachineStatus)],
    ids=lambda value: str(value),
)
def test_allowed_action_leads_to_its_fixed_target_whatever_the_history(
    current: MachineStatus, action: MachineAction, expected: MachineStatus
) -> None:
    for previous in PREVIOUS_RESOLVES_TO:
        assert next_status(current, action, previous) is expected


@pytest.mark.parametrize(
    ("current", "action"),
    [(status, action) for status, action, expected in CELLS if expected == REFUSED],
    ids=lambda value: str(value),
)
def test_action_the_status_does_not_allow_is_an_invalid_transition_naming_both(
    current: MachineStatus, action: MachineAction
) -> None:
    for previous in PREVIOUS_RESOLVES_TO:
        with pytest.raises(InvalidTransition) as caught:
            next_status(current, action, previous)
        assert caught.value.message == f"cannot {action.value} a machine that is {current.value}"


@pytest.mark.parametrize(("previous", "resolved"), PREVIOUS_RESOLVES_TO.items(), ids=lambda value: str(value))
@pytest.mark.parametrize(
    ("current", "action"), [(S.COMMISSIONING, A.ABORT), (S.BROKEN, A.MARK_FIXED)], ids=lambda value: str(value)
)
def test_abort_and_mark_fixed_return_to_the_previous_resting_status(
    current: MachineStatus, action: MachineAction, previous: MachineStatus | None, resolved: MachineStatus
) -> None:
    assert EXPECTED[current][ACTIONS.index(action)] == PREVIOUS
    assert next_status(current, action, previous) is resolved


# -- the order racks are tried in for power work ------------------------------------------------------


def test_racks_never_used_come_first_then_the_least_recently_used() -> None:
    last_used = {"rack-a": 30.0, "rack-b": 10.0, "rack-c": 20.0}
    ordered = order_candidates(["rack-a", "rack-b", "rack-c", "rack-d"], last_used, random.Random(1))
    assert ordered == ["rack-d", "rack-b", "rack-c", "rack-a"]


def test_racks_never_used_are_tried_first_in_a_spread_of_orders() -> None:
    firsts = Counter(order_candidates(["rack-a", "rack-b", "rack-c"], {}, random.Random(seed))[0] for seed in range(90))
    assert set(firsts) == {"rack-a", "rack-b", "rack-c"}
    assert min(firsts.values()) >= 15


def test_a_rack_listed_twice_is_tried_once() -> None:
    assert sorted(order_candidates(["rack-a", "rack-a", "rack-b"], {}, random.Random(0))) == ["rack-a", "rack-b"]
    assert order_candidates([], {}, random.Random(0)) == []


def test_rotation_moves_each_used_rack_to_the_back() -> None:
    ticks = count()
    rotation = RackRotation(random.Random(7), lambda: float(next(ticks)))
    candidates = ["rack-a", "rack-b", "rack-c"]
    first = rotation.order(candidates)[0]
    rotation.used(first)
    second = rotation.order(candidates)[0]
    rotation.used(second)
    third = rotation.order(candidates)[0]
    assert sorted([first, second, third]) == candidates
    rotation.used(third)
    assert rotation.order(candidates) == [first, second, third]
