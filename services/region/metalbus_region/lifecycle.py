"""The machine lifecycle: one transition table, and the pure function that walks it.

``PREVIOUS`` means "back to the status the machine had before" (abort, mark_fixed). Anything not in the table is
an InvalidTransition naming the status and the action.
"""

from typing import Final

from metalbus.contracts.errors import InvalidTransition
from metalbus.contracts.machines import MachineAction, MachineStatus

S = MachineStatus
A = MachineAction


class _Previous:
    def __repr__(self) -> str:
        return "PREVIOUS"


PREVIOUS: Final = _Previous()
Target = MachineStatus | _Previous

# Statuses a machine may rest in before commissioning starts or after mark_fixed returns it.
RESTING: Final = frozenset({S.NEW, S.READY, S.FAILED_COMMISSIONING})

TRANSITIONS: Final[dict[tuple[MachineStatus, MachineAction], Target]] = {
    (S.NEW, A.COMMISSION): S.COMMISSIONING,
    (S.READY, A.COMMISSION): S.COMMISSIONING,
    (S.FAILED_COMMISSIONING, A.COMMISSION): S.COMMISSIONING,
    (S.COMMISSIONING, A.COMMISSIONING_SUCCEEDED): S.READY,
    (S.COMMISSIONING, A.COMMISSIONING_FAILED): S.FAILED_COMMISSIONING,
    (S.COMMISSIONING, A.ABORT): PREVIOUS,
    (S.BROKEN, A.MARK_FIXED): PREVIOUS,
    **{(status, A.MARK_BROKEN): S.BROKEN for status in MachineStatus if status is not S.BROKEN},
}


def next_status(current: MachineStatus, action: MachineAction, previous: MachineStatus | None) -> MachineStatus:
    """Where ``action`` takes a machine in ``current``; ``previous`` resolves PREVIOUS."""
    target = TRANSITIONS.get((current, action))
    if target is None:
        raise InvalidTransition(f"cannot {action.value} a machine that is {current.value}")
    if isinstance(target, MachineStatus):
        return target
    # Back where it was; a machine broken while commissioning (or with no history) returns to NEW.
    if previous in RESTING:
        return previous
    return S.NEW
