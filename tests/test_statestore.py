"""The workflow state store and state machine."""

from __future__ import annotations

import uuid

import anyio
import pytest

from aiojobstore import InvalidKeyError
from aiojobstore.statestore import InvalidStateTransitionError, StateStore, WorkflowState, WorkflowStateMachine


@pytest.fixture(params=["memory", "local"])
def state(request, tmp_path):
    return StateStore(f"memory:state-{uuid.uuid4().hex}" if request.param == "memory" else f"file:{tmp_path}/s")


async def test_get_set_and_clear(state):
    assert await state.get("wf1", "key") is None
    await state.set("wf1", "key", "value")
    assert await state.get("wf1", "key") == "value"
    assert await state.get("wf2", "key") is None
    await state.set("wf1", "key", None)
    assert await state.get("wf1", "key") is None
    await state.set("wf1", "key", None)  # clearing twice is fine


@pytest.mark.parametrize("bad", ["../x", "a/b", "", "sp ace", "dot.ted"])
async def test_bad_ids_and_keys_are_refused(state, bad):
    with pytest.raises(InvalidKeyError, match="letters, digits"):
        await state.set(bad, "key", "v")
    with pytest.raises(InvalidKeyError, match="letters, digits"):
        await state.get("wf", bad)


async def test_normal_life_of_a_workflow(state):
    machine = WorkflowStateMachine(state, "wf-1")
    assert await machine.get_current_state() is WorkflowState.UNKNOWN
    assert await machine.send_enqueue() is WorkflowState.QUEUED
    assert await machine.send_initialize() is WorkflowState.INITIALIZING
    assert await machine.send_run() is WorkflowState.RUNNING
    assert await machine.send_complete() is WorkflowState.COMPLETE
    # terminal states are sticky
    assert await machine.send_run() is WorkflowState.COMPLETE
    assert await machine.send_system_error() is WorkflowState.COMPLETE
    assert await WorkflowStateMachine(state, "wf-1").get_current_state() is WorkflowState.COMPLETE


async def test_cancel_and_illegal_transitions(state):
    machine = WorkflowStateMachine(state, "wf_2")
    with pytest.raises(InvalidStateTransitionError, match="UNKNOWN to COMPLETE"):
        await machine.send_complete()
    await machine.send_run()
    assert await machine.send_cancel() is WorkflowState.CANCELING
    with pytest.raises(InvalidStateTransitionError):
        await machine.send_run()
    assert await machine.send_canceled() is WorkflowState.CANCELED
    assert await machine.send_enqueue() is WorkflowState.CANCELED


async def test_compare_and_set_has_one_winner(state):
    assert await state.compare_and_set("wf", "k", None, "a")
    assert not await state.compare_and_set("wf", "k", None, "b")
    assert await state.compare_and_set("wf", "k", "a", "c")
    assert await state.get("wf", "k") == "c"


async def test_concurrent_compare_and_sets_from_one_value_have_one_winner(state):
    await state.set("wf", "k", "start")
    winners: list[str] = []

    async def attempt(value: str) -> None:
        if await state.compare_and_set("wf", "k", "start", value):
            winners.append(value)

    async with anyio.create_task_group() as tasks:
        for index in range(10):
            tasks.start_soon(attempt, f"v{index}")
    assert len(winners) == 1
    assert await state.get("wf", "k") == winners[0]
