"""Shared fixtures: a private Prefect home, the Kontent simulator on a real socket, moto S3."""

from __future__ import annotations

import logging
import os
import socket
import tempfile
from collections.abc import Iterator

import pytest

# Before anything imports prefect: offline settings and a Prefect home of the suite's own.
_HOME = tempfile.mkdtemp(prefix="assetferry-prefect-home-")
os.environ.update({
    "PREFECT_HOME": _HOME,
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
    "PREFECT_LOGGING_LEVEL": "WARNING",
    "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore",
    # Each test's `run` keeps Prefect's ephemeral mode (nothing left running; the local-server
    # tests opt in with their own PREFECT_HOME: tests/test_local_server.py, tests/test_dask.py).
    "ASSETFERRY_PREFECT_SERVER": "ephemeral",
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_DEFAULT_REGION": "us-east-1",
})
os.environ.pop("PREFECT_API_URL", None)
# Recognisable fake secrets, new each session: the suite's credentials where the code under test
# reads them (moto's S3 key, the secrets scan's vendor key, password and URL signature). The scan in
# tests/test_trust.py looks for every ASSETFERRY_TEST_SECRET_* value in everything a run produces.
import uuid  # noqa: E402

for _name in ("KONTENT_KEY", "AWS_SECRET", "URL_PASSWORD", "URL_SIGNATURE"):
    os.environ.setdefault(f"ASSETFERRY_TEST_SECRET_{_name}", f"FAKEKEY-{uuid.uuid4()}")
os.environ["AWS_SECRET_ACCESS_KEY"] = os.environ["ASSETFERRY_TEST_SECRET_AWS_SECRET"]
# Every simulator's API key too (read by sandbox/<vendor>.py at import), so the whole suite runs
# under recognisable fake keys; pytest_runtest_makereport below scans every test's output for them.
for _vendor in ("KONTENT", "ESPLORO", "MEDIAPOCKET", "ACTIONHUB", "WORDBEE"):
    os.environ.setdefault(f"ASSETFERRY_SANDBOX_KEY_{_vendor}", f"FAKEKEY-{_vendor.lower()}-{uuid.uuid4()}")
_FAKE_SECRETS = {name: value for name, value in os.environ.items()
                 if name.startswith(("ASSETFERRY_TEST_SECRET_", "ASSETFERRY_SANDBOX_KEY_"))}

import httpx  # noqa: E402

from assetferry.sandbox import kontent as kontent_sim  # noqa: E402
from assetferry.sandbox.server import running  # noqa: E402

KONTENT_KEY = kontent_sim.DEMO_API_KEY
KONTENT_ENV = kontent_sim.DEMO_ENVIRONMENT_ID


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """A real (temporary) Prefect server for every test that runs a flow in this process."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield


@pytest.fixture(scope="session")
def kontent_server() -> Iterator[str]:
    """The Kontent.ai simulator over a real socket; yields its root URL (vendor base: root + /v2)."""
    with running(kontent_sim.create_app()) as root:
        yield root


@pytest.fixture
def kontent(kontent_server: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A clean simulator (state and limits reset) and the API key in the environment."""
    httpx.post(f"{kontent_server}/_sandbox/reset").raise_for_status()
    httpx.post(f"{kontent_server}/_sandbox/limits", json={"per_second": 10, "per_minute": 400}).raise_for_status()
    monkeypatch.setenv("KONTENT_API_KEY", KONTENT_KEY)
    yield kontent_server


@pytest.fixture(scope="session")
def toy_server() -> Iterator[str]:
    """The toy vendor's simulator (tests/toyvendor.py, batches of at most 10)."""
    from tests import toyvendor

    with running(toyvendor.create_app(max_batch=10)) as root:
        yield root


@pytest.fixture
def toy(toy_server: str) -> str:
    """A clean toy simulator; yields its root URL."""
    httpx.post(f"{toy_server}/_sandbox/reset").raise_for_status()
    return toy_server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """moto in server mode over HTTP (driven through s3fs by the code under test)."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """The suite-wide secrets scan: whatever a passing test printed or logged (captured stdout,
    stderr and log records of its setup, call and teardown) must hold none of the fake keys."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.when != "teardown" or not report.passed:
        return  # teardown's report holds the sections of all three phases; a failure's own message
        # may quote a value, and it fails anyway
    leaked = sorted(name for name, value in _FAKE_SECRETS.items()
                    if any(value in text for _, text in report.sections))
    if leaked:
        report.outcome = "failed"
        report.longrepr = (f"secrets scan: {', '.join(leaked)} appeared in this test's captured output or logs "
                           "(the value is not repeated here)")
