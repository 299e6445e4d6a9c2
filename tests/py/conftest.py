"""Shared fixtures.  With PYEPOLL_REQUIRE_INSTALLED=1 (the CI wheel run) the
suite refuses to test a pyepoll imported from the source tree."""
from __future__ import annotations

import os
import pathlib
import socket

import pytest

import pyepoll

SOURCE_TREE = pathlib.Path(__file__).resolve().parents[2]

if os.environ.get("PYEPOLL_REQUIRE_INSTALLED") == "1":
    imported = pathlib.Path(pyepoll.__file__).resolve()
    if SOURCE_TREE in imported.parents:
        raise RuntimeError(f"pyepoll imported from the source tree: {imported}")

BACKENDS = pyepoll.available_backends()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def poller(backend: str):
    with pyepoll.Poller(backend) as p:
        yield p


@pytest.fixture
def sockpair():
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    yield a, b
    a.close()
    b.close()


def features_of(backend: str) -> frozenset:
    """What the backend honours, as pyepoll reports it."""
    with pyepoll.Poller(backend) as p:
        return p.features


def split_at(data: bytes, cuts) -> list:
    """`data` cut at the sorted offsets `cuts` (empty pieces kept): how a
    stream may arrive in reads."""
    pieces, last = [], 0
    for c in cuts:
        pieces.append(data[last:c])
        last = c
    pieces.append(data[last:])
    return pieces
