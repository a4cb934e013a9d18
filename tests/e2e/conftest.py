"""Fixtures every e2e module shares (one of each per module)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.fakellm import FakeLLM
from tests.support.receiver import Receiver


@pytest.fixture(scope="module")
def llm() -> Iterator[FakeLLM]:
    """The fake OpenAI-compatible LLM on 127.0.0.1 that the module's crews talk to."""
    with FakeLLM() as fake:
        yield fake


@pytest.fixture(scope="module")
def rx() -> Iterator[Receiver]:
    """A webhook receiver on 127.0.0.1 (tests/support/receiver.py) for the module's servers."""
    with Receiver() as receiver:
        yield receiver
