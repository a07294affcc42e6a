"""Fixtures of the node tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import zmq

from tests.nodes.node_support import zmq_context


@pytest.fixture
def ctx() -> Iterator[zmq.Context]:
    """A zmq context every socket of the test must close (see `zmq_context`)."""
    with zmq_context() as c:
        yield c
