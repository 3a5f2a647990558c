"""Per-workflow key/value state and the workflow state machine (after Toil's WES state store).

Values are small strings kept as objects ``state/<workflow_id>/<key>`` on any backend. Workflow states move
through a fixed transition table; terminal states (COMPLETE, EXECUTOR_ERROR, SYSTEM_ERROR, CANCELED) are sticky.
Transitions are compare-and-set writes, so two processes racing on one workflow cannot both win.
"""

from __future__ import annotations

import enum
import re
from typing import Any

from .backends.base import Backend
from .errors import ConcurrentModificationError, InvalidKeyError, JobStoreError, NoSuchFileError
from .jobstore import JobStore
from .locator import open_backend

_NAME = re.compile(r"^[-a-zA-Z0-9_]+$")


def _check_name(what: str, value: str) -> str:
    if not isinstance(value, str) or not _NAME.match(value):
        raise InvalidKeyError(f"invalid {what} {value!r}: use only letters, digits, '-' and '_'")
    return value


class StateStore:
    """String values per ``(workflow_id, key)`` on any backend; setting ``None`` clears a key."""

    def __init__(self, where: Backend | JobStore | str, prefix: str = "state", **options: Any) -> None:
        if isinstance(where, JobStore):
            where = where.backend
        self.backend = where if isinstance(where, Backend) else open_backend(where, **options)
        self.prefix = prefix.strip("/")

    def _key(self, workflow_id: str, key: str) -> str:
        return f"{self.prefix}/{_check_name('workflow ID', workflow_id)}/{_check_name('state key', key)}"

    async def get(self, workflow_id: str, key: str) -> str | None:
        """The value, or ``None`` when it was never set (or was cleared)."""
        try:
            return (await self.backend.get_bytes(self._key(workflow_id, key))).decode()
        except NoSuchFileError:
            return None

    async def set(self, workflow_id: str, key: str, value: str | None) -> None:
        """Set a value atomically; ``None`` deletes it."""
        object_key = self._key(workflow_id, key)
        if value is None:
            await self.backend.delete(object_key)
        else:
            await self.backend.put_bytes(object_key, str(value).encode())

    async def compare_and_set(self, workflow_id: str, key: str, expected: str | None, value: str) -> bool:
        """Set ``value`` only if the current value is ``expected``; returns whether it was set."""
        object_key = self._key(workflow_id, key)

        def edit(current: bytes) -> bytes:
            if current.decode() != expected:
                raise _NotExpected
            return value.encode()

        try:
            if expected is None:
                await self.backend.put_bytes(object_key, value.encode(), if_absent=True)
            else:
                await self.backend.update_object(object_key, edit)
        except (_NotExpected, NoSuchFileError, ConcurrentModificationError):
            return False
        return True

    async def close(self) -> None:
        await self.backend.close()


class _NotExpected(Exception):
    """The stored value is not the one a compare-and-set expected."""


class WorkflowState(str, enum.Enum):
    """The states of a WES workflow run."""

    UNKNOWN = "UNKNOWN"
    QUEUED = "QUEUED"
    INITIALIZING = "INITIALIZING"
    RUNNING = "RUNNING"
    PAUSED = "PAUSED"
    COMPLETE = "COMPLETE"
    EXECUTOR_ERROR = "EXECUTOR_ERROR"
    SYSTEM_ERROR = "SYSTEM_ERROR"
    CANCELED = "CANCELED"
    CANCELING = "CANCELING"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATES


TERMINAL_STATES = frozenset(
    {WorkflowState.COMPLETE, WorkflowState.EXECUTOR_ERROR, WorkflowState.SYSTEM_ERROR, WorkflowState.CANCELED}
)
_ACTIVE = frozenset(WorkflowState) - TERMINAL_STATES
S = WorkflowState
#: target state -> the states it may be entered from (terminal states are never left)
TRANSITIONS: dict[WorkflowState, frozenset[WorkflowState]] = {
    S.QUEUED: frozenset({S.UNKNOWN}),
    S.INITIALIZING: frozenset({S.UNKNOWN, S.QUEUED}),
    S.RUNNING: frozenset({S.UNKNOWN, S.QUEUED, S.INITIALIZING, S.PAUSED}),
    S.PAUSED: frozenset({S.RUNNING}),
    S.COMPLETE: frozenset({S.INITIALIZING, S.RUNNING}),
    S.CANCELING: _ACTIVE - {S.CANCELING},
    S.CANCELED: _ACTIVE,
    S.EXECUTOR_ERROR: _ACTIVE,
    S.SYSTEM_ERROR: _ACTIVE,
}


class InvalidStateTransitionError(JobStoreError):
    """A workflow was asked to move to a state it cannot reach from its current one."""


class WorkflowStateMachine:
    """Moves one workflow through :class:`WorkflowState`; state is kept in a :class:`StateStore`."""

    KEY = "state"

    def __init__(self, store: StateStore, workflow_id: str) -> None:
        self.store = store
        self.workflow_id = _check_name("workflow ID", workflow_id)

    async def get_current_state(self) -> WorkflowState:
        """The current state (UNKNOWN when none was ever recorded)."""
        value = await self.store.get(self.workflow_id, self.KEY)
        return WorkflowState.UNKNOWN if value is None else WorkflowState(value)

    async def transition(self, target: WorkflowState) -> WorkflowState:
        """Move to ``target`` atomically and return the state now recorded. From a terminal state nothing
        changes (it is returned as it is); any other illegal move raises :class:`InvalidStateTransitionError`."""
        target = WorkflowState(target)
        while True:
            current = await self.get_current_state()
            if current.terminal or current == target:
                return current
            if current not in TRANSITIONS.get(target, frozenset()):
                raise InvalidStateTransitionError(
                    f"workflow {self.workflow_id!r} cannot go from {current.value} to {target.value}"
                )
            expected = None if current == WorkflowState.UNKNOWN else current.value
            if await self.store.compare_and_set(self.workflow_id, self.KEY, expected, target.value):
                return target

    async def send_enqueue(self) -> WorkflowState:
        return await self.transition(S.QUEUED)

    async def send_initialize(self) -> WorkflowState:
        return await self.transition(S.INITIALIZING)

    async def send_run(self) -> WorkflowState:
        return await self.transition(S.RUNNING)

    async def send_pause(self) -> WorkflowState:
        return await self.transition(S.PAUSED)

    async def send_cancel(self) -> WorkflowState:
        return await self.transition(S.CANCELING)

    async def send_canceled(self) -> WorkflowState:
        return await self.transition(S.CANCELED)

    async def send_complete(self) -> WorkflowState:
        return await self.transition(S.COMPLETE)

    async def send_executor_error(self) -> WorkflowState:
        return await self.transition(S.EXECUTOR_ERROR)

    async def send_system_error(self) -> WorkflowState:
        return await self.transition(S.SYSTEM_ERROR)
