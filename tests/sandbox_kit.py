"""Shared scaffolding for the simulators' own tests: a fake clock and a handle on a running
simulator with its control routes (every simulator has the same /_sandbox/ routes)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import httpx
import pytest


class FakeClock:
    """An injectable clock that only moves when told to (``start``: monotonic-like or epoch)."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class SandboxBox:
    """A simulator on a real socket: ``api`` (a client for the vendor API), ``root`` (its root
    URL), ``clock`` (its fake clock), and its control routes."""

    api: httpx.Client
    root: str
    clock: FakeClock

    def control(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.request(method, f"{self.root}/_sandbox/{path}", **kwargs)

    def stats(self) -> dict[str, Any]:
        return dict(self.control("GET", "stats").json())

    def records(self) -> Any:
        return self.control("GET", "records").json()["records"]


def simulator_fixtures(launch: Callable[..., Any], *, after_reset: Callable[[Any], None] | None = None) -> tuple:
    """The three fixtures every simulator test file uses, from its ``launch(stack, **config)``:
    ``start`` (a factory of simulators with their own configuration), ``shared`` (one per module)
    and ``box`` (the shared one, reset before each test; ``after_reset`` may rewind its clock).
    Assign them at module level: ``start, shared, box = simulator_fixtures(launch)``."""

    @pytest.fixture
    def start() -> Iterator[Callable[..., Any]]:
        with ExitStack() as stack:
            yield lambda **kwargs: launch(stack, **kwargs)

    @pytest.fixture(scope="module")
    def shared() -> Iterator[Any]:
        with ExitStack() as stack:
            yield launch(stack)

    @pytest.fixture
    def box(shared: Any) -> Any:
        assert shared.control("POST", "reset").status_code == 200
        if after_reset is not None:
            after_reset(shared)
        return shared

    return start, shared, box
