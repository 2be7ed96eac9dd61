"""Unit tests of the plumbing: job file, credentials, limiter, ledger."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import yaml

from assetferry.connectors.core.credentials import resolve_credentials
from assetferry.connectors.core.errors import ConfigError
from assetferry.connectors.core.job import load_job
from assetferry.connectors.core.ledger import RejectsWriter
from assetferry.connectors.core.ratelimit import SlidingWindowLimiter, Window

ENV = "8d20758c-d74c-4f59-ae04-ee928c0816b7"


def write_job(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def good_job() -> dict:
    return {
        "name": "product-images",
        "source": {"url": "manifest.csv"},
        "destination": {"vendor": "kontent", "credentials": {"api_key": "env:KONTENT_API_KEY"},
                        "settings": {"environment_id": ENV}},
    }


def test_job_file_relative_paths_resolve_against_the_job_folder(tmp_path: Path) -> None:
    job = load_job(write_job(tmp_path, good_job()))
    assert job.source.url == str(tmp_path / "manifest.csv")
    assert job.state == str(tmp_path / ".assetferry")
    assert job.batch_size is None  # the vendor's default (VendorSpec.batch_size) applies


def test_job_file_reports_every_error_with_file_and_key(tmp_path: Path) -> None:
    data = good_job()
    data["batch_size"] = 0
    data["destination"]["settings"] = {"environment_id": "not-a-uuid", "colour": "red"}
    data["destination"]["credentials"] = {}
    data["surprise"] = 1
    path = write_job(tmp_path, data)
    with pytest.raises(ConfigError) as info:
        load_job(path)
    text = str(info.value)
    for needle in ("batch_size", "surprise", "destination.settings.environment_id",
                   "destination.settings.colour", "destination.credentials.api_key"):
        assert f"{path}: {needle}" in text, needle


def test_literal_secret_in_job_file_is_refused_without_echoing_it(tmp_path: Path) -> None:
    data = good_job()
    data["destination"]["credentials"] = {"api_key": "sk-live-very-secret"}
    with pytest.raises(ConfigError) as info:
        load_job(write_job(tmp_path, data))
    assert "credentials" in str(info.value)
    assert "sk-live-very-secret" not in str(info.value)


def test_storage_option_secrets_must_be_references_and_resolve_at_the_edge(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from assetferry.connectors.core.credentials import resolve_options

    data = good_job()
    data["source"]["options"] = {"key": "AKIA-literal", "secret": "s3cr3t-literal",
                                 "client_kwargs": {"endpoint_url": "http://x", "token": "t0k"}}
    with pytest.raises(ConfigError) as info:
        load_job(write_job(tmp_path, data))
    text = str(info.value)
    assert "source.options: client_kwargs.token, key, secret must be a reference like env:NAME" in text
    assert "s3cr3t-literal" not in text and "AKIA-literal" not in text
    data["source"]["options"] = {"key": "env:MY_AK", "secret": "env:MY_SK", "anon": False}
    job = load_job(write_job(tmp_path, data))
    assert job.source.options["secret"] == "env:MY_SK"  # the job (a flow parameter) keeps references
    monkeypatch.setenv("MY_AK", "ak")
    monkeypatch.setenv("MY_SK", "sk")
    assert resolve_options(job.source.options) == {"key": "ak", "secret": "sk", "anon": False}
    monkeypatch.delenv("MY_SK")
    with pytest.raises(ConfigError, match="source.options.secret"):
        resolve_options(job.source.options)


def test_unbuilt_vendor_and_bad_yaml_are_config_errors(tmp_path: Path) -> None:
    data = good_job()
    data["destination"]["vendor"] = "nosuchvendor"
    with pytest.raises(ConfigError, match="not available in this version"):
        load_job(write_job(tmp_path, data))
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_job(bad)


def test_credentials_resolve_from_env_and_never_show(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_KEY", "s3cr3t")
    creds = resolve_credentials({"api_key": "env:MY_KEY"})
    assert creds["api_key"].get_secret_value() == "s3cr3t"
    assert "s3cr3t" not in repr(creds)
    monkeypatch.delenv("MY_KEY")
    with pytest.raises(ConfigError, match="MY_KEY is not set"):
        resolve_credentials({"api_key": "env:MY_KEY"})


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_sliding_window_never_exceeds_any_window() -> None:
    clock = FakeClock()
    limiter = SlidingWindowLimiter([Window(10, 1.0), Window(40, 60.0)], margin=0.0, epsilon=0.0, clock=clock,
                                   sleep=clock.sleep)
    sent = []
    for _ in range(100):
        limiter.release(limiter.acquire())
        sent.append(clock.now)
    for i, t in enumerate(sent):
        in_second = sum(1 for u in sent[i:] if u < t + 1.0)
        in_minute = sum(1 for u in sent[i:] if u < t + 60.0)
        assert in_second <= 10 and in_minute <= 40
    # and it is not wastefully slow: 100 requests at 40/min need just over two minutes
    assert 120.0 <= sent[-1] <= 121.0


def test_penalise_holds_every_caller() -> None:
    clock = FakeClock()
    limiter = SlidingWindowLimiter([Window(100, 1.0)], clock=clock, sleep=clock.sleep)
    limiter.release(limiter.acquire())
    limiter.penalise(5.0)
    limiter.acquire()
    assert clock.now >= 5.0


def test_a_request_counts_from_its_send_and_a_late_one_by_its_lateness() -> None:
    # issue 19: vendors count at arrival, somewhere between our send and the answer. A request
    # counts from its send; one whose round trip was longer than the fastest recent one counts
    # that much longer (it may have arrived that late); a slow round trip in itself costs nothing
    clock = FakeClock()
    limiter = SlidingWindowLimiter([Window(2, 1.0)], margin=0.0, epsilon=0.0, clock=clock, sleep=clock.sleep)
    a = limiter.acquire()
    clock.now += 0.1
    limiter.release(a)  # round trip 0.1 s: the reference
    b = limiter.acquire()  # sent at 0.1
    clock.now += 0.4
    limiter.release(b)  # round trip 0.4 s: 0.3 s late
    limiter.acquire()
    assert clock.now == pytest.approx(1.0)  # a left the window at 0 + 1 s
    limiter.acquire()
    assert clock.now == pytest.approx(1.4)  # b at 0.1 + 1 s + 0.3 s late


def test_limiter_is_thread_safe() -> None:
    limiter = SlidingWindowLimiter([Window(1000, 1.0)])
    count = 0
    lock = threading.Lock()

    def work() -> None:
        nonlocal count
        for _ in range(200):
            limiter.release(limiter.acquire())
            with lock:
                count += 1

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert count == 800
    assert all(len(slots) <= 1000 for slots in limiter._slots)


def test_rejects_writer_appends_and_clears_previous_file(tmp_path: Path) -> None:
    import pandas as pd

    path = tmp_path / "rejects.csv"
    path.write_text("old\n")
    w = RejectsWriter(str(path), ["id", "reason"])
    assert path.read_text() == "old\n"  # kept until close replaces it: a refused run never loses it
    w.write(pd.DataFrame({"id": ["a"], "reason": ["bad, really"]}))
    w.write(pd.DataFrame({"id": ["b"], "reason": ["worse"]}))
    w.close()
    back = pd.read_csv(path)
    assert back["id"].tolist() == ["a", "b"] and back["reason"][0] == "bad, really"


def test_min_interval_spaces_sends_evenly() -> None:
    clock = FakeClock()
    limiter = SlidingWindowLimiter([Window(10, 1.0)], min_interval=0.1, margin=0.0, clock=clock, sleep=clock.sleep)
    sent = []
    for _ in range(5):
        limiter.release(limiter.acquire())
        sent.append(clock.now)
    gaps = [b - a for a, b in zip(sent, sent[1:])]
    assert all(g >= 0.1 - 1e-9 for g in gaps) and sent[-1] < 0.41
