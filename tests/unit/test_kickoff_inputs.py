"""What a kickoff may carry (crewai-protocol.md C.3), checked before anything is recorded."""

from __future__ import annotations

from typing import Any

import pytest

from crewship.errors import InvalidInputError, UnprocessableInputError
from crewship.service.kickoffrows import check_uuid as _check_uuid
from crewship.service.kickoffrows import checked_inputs as _checked_inputs


@pytest.mark.parametrize("value", ["test 1", "", 7, None, ["a"], "1234"])
def test_a_state_id_that_is_no_uuid_gets_the_documented_422(value: Any) -> None:
    with pytest.raises(UnprocessableInputError) as caught:
        _check_uuid(value, "inputs.id")
    assert str(caught.value) == f"'inputs.id' must be a valid UUID when provided; got {value!r}."
    assert caught.value.http_status == 422


def test_a_uuid_is_a_state_id() -> None:
    _check_uuid("3e9b7f14-2c6d-4a0b-8f5e-1d2c3b4a5f60", "restoreFromStateId")


def test_inputs_must_be_an_object_without_the_runner_channel_key() -> None:
    assert _checked_inputs({"topic": "x"}) == '{"topic": "x"}'
    with pytest.raises(InvalidInputError, match="JSON object"):
        _checked_inputs(["topic"])
    with pytest.raises(InvalidInputError, match="restoreFromStateId"):
        _checked_inputs({"crewship_restore_from_state_id": "x"})
    with pytest.raises(InvalidInputError, match="too large"):
        _checked_inputs({"big": "x" * (1024 * 1024)})
