"""scripts/streams_floor.py (issue 14's floor of the streams echo) stays
runnable: its ideal loop really drives asyncio.streams' echo, which the
script's own checks assert (the last write is the message, EOF ends the
Task cleanly), and its glue-only run works."""
from __future__ import annotations

import importlib.util
import pathlib

import pytest

pytestmark = pytest.mark.timeout(60)

SCRIPT = (pathlib.Path(__file__).resolve().parents[2] / "scripts" /
          "streams_floor.py")


def load():
    spec = importlib.util.spec_from_file_location("streams_floor", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_ideal_loop_runs_the_streams_echo():
    floor = load()
    floor.run_fake(200)
    floor.run_glue(200)


def test_a_handler_that_stops_echoing_is_caught(monkeypatch):
    # The script's check would catch an echo that never wrote.
    floor = load()

    async def silent(reader, writer):
        while await reader.read(65536):
            pass
    monkeypatch.setattr(floor, "echo", silent)
    with pytest.raises(AssertionError, match="wrote"):
        floor.run_fake(5)
