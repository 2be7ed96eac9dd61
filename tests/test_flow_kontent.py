"""End to end: the real sync_assets flow (ephemeral Prefect) into the Kontent.ai simulator over a
real socket, with files on local disk and on S3 (moto server mode over HTTP, through s3fs)."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import s3fs

from assetferry.connectors.core.job import parse_job
from assetferry.sandbox import kontent as sim
from assetferry.sandbox.server import running
from tests import kit

pytestmark = pytest.mark.usefixtures("prefect_harness")

S3_OPTIONS_KEYS = ("key", "secret")


def s3_options(endpoint: str, *, literal: bool = False) -> dict:
    if literal:  # for s3fs in the test itself
        return {"key": "testing", "secret": "testing",
                "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"}}
    return {"key": "env:AWS_ACCESS_KEY_ID", "secret": "env:AWS_SECRET_ACCESS_KEY",
            "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"}}


FAST = {"requests_per_second": 100, "requests_per_minute": 6000}


def fast_job(root: str, tmp_path: Path, n: int, **overrides: object) -> tuple[list[dict], dict]:
    """n rows on disk and a job whose limits (both sides) are raised so tests run quickly."""
    kit.set_limits(root, 200, 12000)
    rows = kit.make_rows(tmp_path / "files", n)
    job = kit.job_dict(str(kit.write_csv(tmp_path / "m.csv", rows)), root, tmp_path / "state",
                       settings=dict(FAST, **overrides.pop("settings", {})), **overrides)
    return rows, job


def run(job_data: dict) -> dict:
    from assetferry.flows.sync import sync_assets

    return sync_assets(parse_job(job_data, where="test"))


def test_200_records_local_and_s3_then_rerun_and_title_change(kontent: str, s3_endpoint: str, tmp_path: Path) -> None:
    kit.set_limits(kontent, 200, 12000)
    fs = s3fs.S3FileSystem(skip_instance_cache=True, **s3_options(s3_endpoint, literal=True))
    fs.call_s3("create_bucket", Bucket="assets-e2e")  # mkdir sends a LocationConstraint moto refuses
    local_rows = kit.make_rows(tmp_path / "local", 100, prefix="L")
    s3_rows = kit.make_rows(tmp_path / "to-s3", 100, prefix="S")
    md5 = {r["id"]: kit.md5_file(r["file"]) for r in local_rows + s3_rows}
    for r in s3_rows:
        key = f"assets-e2e/files/{Path(r['file']).name}"
        fs.put_file(r["file"], key)
        r["file"] = f"s3://{key}"
    rows = local_rows + s3_rows
    manifest = kit.write_csv(tmp_path / "manifest.csv", rows)
    fs.put_file(str(manifest), "assets-e2e/manifests/manifest.csv")
    from assetferry.connectors.core.job import SourceSpec

    source: dict = {"options": s3_options(s3_endpoint)}
    if "allowed_roots" in SourceSpec.model_fields:  # an S3 manifest naming local files too
        source["allowed_roots"] = [str(tmp_path / "local"), "s3://assets-e2e/"]
    job = kit.job_dict("s3://assets-e2e/manifests/*.csv", kontent, tmp_path / "state",
                       source=source, batch_size=25, concurrency=3, settings=FAST)

    first = run(job)
    assert (first["loaded"], first["rejected"], first["failed"], first["exit_code"]) == (200, 0, 0, 0)
    assets = kit.list_assets(kontent)
    assert sorted(a["external_id"] for a in assets) == sorted(md5)
    by_id = {a["external_id"]: a for a in assets}
    for r in rows:
        asset = by_id[r["id"]]
        assert asset["title"] == r["title"]
        assert asset["descriptions"][0]["description"] == r["description"]
        assert kit.md5_url(asset["url"]) == md5[r["id"]], r["id"]
    after_first = kit.stats(kontent)
    assert after_first["uploads"] == 200

    second = run(job)
    assert (second["loaded"], second["unchanged"], second["exit_code"]) == (0, 200, 0)
    assert kit.stats(kontent)["by_route"] == after_first["by_route"]  # nothing sent at all

    rows[7]["title"] = "A better title"
    kit.write_csv(manifest, rows)
    fs.put_file(str(manifest), "assets-e2e/manifests/manifest.csv")
    third = run(job)
    assert (third["loaded"], third["unchanged"]) == (1, 199)
    s = kit.stats(kontent)
    assert s["uploads"] == 200  # the file was not sent again
    assert s["by_route"]["upsert"] == after_first["by_route"]["upsert"] + 1
    assert {a["external_id"]: a for a in kit.list_assets(kontent)}[rows[7]["id"]]["title"] == "A better title"
    assert s["assets"] == 200


def test_changed_file_is_uploaded_again_and_replaces_the_asset_file(kontent: str, tmp_path: Path) -> None:
    rows, job = fast_job(kontent, tmp_path, 3)
    assert run(job)["loaded"] == 3
    Path(rows[1]["file"]).write_bytes(b"new content, longer than before" * 7)
    again = run(job)
    assert (again["loaded"], again["unchanged"]) == (1, 2)
    asset = {a["external_id"]: a for a in kit.list_assets(kontent)}[rows[1]["id"]]
    assert kit.md5_url(asset["url"]) == kit.md5_file(rows[1]["file"])
    assert kit.stats(kontent)["assets"] == 3


def test_bad_rows_are_rejected_with_reasons_and_the_rest_loads(kontent: str, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from assetferry.flows.cli import app

    kit.set_limits(kontent, 200, 12000)
    good = kit.make_rows(tmp_path / "files", 4)
    big = tmp_path / "files" / "huge.bin"
    with big.open("wb") as f:
        f.truncate(101 * 1024 * 1024)  # sparse: 101 MB on paper, nothing on disk
    rows = good + [
        {"id": "", "title": "no id", "file": good[0]["file"]},
        {"id": "NOFILE", "title": "no file", "file": ""},
        {"id": "GONE", "title": "missing file", "file": str(tmp_path / "files" / "nope.png")},
        {"id": good[1]["id"], "title": "duplicate", "file": good[1]["file"]},
        {"id": "BIG", "title": "too big", "file": str(big)},
        {"id": "BADLANG", "title": "bad language", "file": good[2]["file"], "language": "en US!"},
        {"id": "OTHERLANG", "title": "unknown language", "file": good[3]["file"], "language": "fr-FR"},
    ]
    manifest = kit.write_csv(tmp_path / "m.csv", rows)
    job = kit.write_job(tmp_path / "job.yaml", kit.job_dict(
        str(manifest), kontent, tmp_path / "state",
        settings={"languages": ["default", "en-US"], **FAST}))

    result = CliRunner().invoke(app, ["run", str(job)])
    assert result.exit_code == 1, result.output
    assert sorted(a["external_id"] for a in kit.list_assets(kontent)) == sorted(r["id"] for r in good)

    rejects_file = tmp_path / "state" / "e2e" / f"kontent-{kit.ENV}" / "rejects.csv"
    with rejects_file.open() as f:
        rejects = list(csv.DictReader(f))
    got = {(r["row"], r["id"], r["field"]): r["reason"] for r in rejects}
    assert got[("5", "", "id")] == "missing id"
    assert got[("6", "NOFILE", "file")] == "missing file"
    assert got[("7", "GONE", "file")].startswith("file not found")
    assert got[("8", good[1]["id"], "id")].startswith(f"duplicate id '{good[1]['id']}' (first seen at")
    assert "101.0 MB" in got[("9", "BIG", "file")] and "at most 100 MB" in got[("9", "BIG", "file")]
    assert "invalid language" in got[("10", "BADLANG", "language")]
    assert "not one of the environment's languages" in got[("11", "OTHERLANG", "language")]
    assert len(rejects) == 7
    assert all(r["source"] == str(manifest) for r in rejects)
    assert '"title": "too big"' in next(r["record"] for r in rejects if r["id"] == "BIG").replace('":"', '": "')
    assert kit.stats(kontent)["bytes_uploaded"] < 1024 * 1024  # the 101 MB file was never sent


def test_429_with_retry_after_is_honoured(kontent: str, tmp_path: Path) -> None:
    # The vendor is stricter than the client believes: 429s happen and are waited out.
    kit.set_limits(kontent, 3, 1000)
    rows = kit.make_rows(tmp_path / "files", 8)
    job = kit.job_dict(str(kit.write_csv(tmp_path / "m.csv", rows)), kontent, tmp_path / "state",
                       settings={"requests_per_second": 50, "requests_per_minute": 3000})
    summary = run(job)
    assert (summary["loaded"], summary["failed"]) == (8, 0)
    s = kit.stats(kontent)
    assert s["throttled"] > 0
    assert s["assets"] == 8 and s["uploads"] == 8


def test_transient_5xx_is_retried_and_auth_failure_stops_with_exit_2(kontent: str, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import httpx
    from typer.testing import CliRunner

    from assetferry.flows.cli import app

    httpx.post(f"{kontent}/_sandbox/faults", json={"status": 503, "count": 2, "route": "upsert"}).raise_for_status()
    rows, data = fast_job(kontent, tmp_path, 3)
    summary = run(data)
    assert (summary["loaded"], summary["failed"]) == (3, 0)
    assert kit.stats(kontent)["assets"] == 3

    monkeypatch.setenv("KONTENT_API_KEY", "wrong-key-4242")
    data["name"] = "e2e-auth"
    job = kit.write_job(tmp_path / "job.yaml", data)
    result = CliRunner().invoke(app, ["run", str(job)])
    assert result.exit_code == 2
    assert "refused (401)" in " ".join(result.output.split())  # rich wraps long lines
    assert "wrong-key-4242" not in result.output


def test_default_limiter_300_assets_see_no_429(kontent: str, tmp_path: Path) -> None:
    """The documented limits (10/s, 400/min) on both sides: 600 requests, zero 429."""
    rows = kit.make_rows(tmp_path / "files", 300)
    job = kit.job_dict(str(kit.write_csv(tmp_path / "m.csv", rows)), kontent, tmp_path / "state",
                       concurrency=3)
    summary = run(job)
    assert summary["loaded"] == 300
    s = kit.stats(kontent)
    assert s["throttled"] == 0
    assert s["accepted"] == 3 + 600  # the environment's languages, folders, collections, then 2 per asset


def test_credentials_from_a_prefect_secret_block(kontent: str, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect.blocks.system import Secret

    Secret(value=kit.KEY).save("kontent-e2e-key", overwrite=True)
    monkeypatch.delenv("KONTENT_API_KEY")
    rows, job = fast_job(kontent, tmp_path, 2)
    job["destination"]["credentials"] = {"api_key": "secret:kontent-e2e-key"}
    assert run(job)["loaded"] == 2
    job["destination"]["credentials"] = {"api_key": "secret:no-such-block"}
    from assetferry.connectors.core.errors import ConfigError

    with pytest.raises(ConfigError, match="no-such-block"):
        run(job)


def test_a_batch_that_keeps_failing_is_retried_by_prefect_and_then_loads(kontent: str, tmp_path: Path) -> None:
    """Tier 2 of the retry policy: the HTTP layer gives up (5 attempts per request, 3 rows in a
    row), the batch task raises TransientError, Prefect retries the batch, and it loads."""
    import httpx

    httpx.post(f"{kontent}/_sandbox/faults",
               json={"status": 503, "count": 15, "retry_after": 0, "route": "upload"}).raise_for_status()
    rows, job = fast_job(kontent, tmp_path, 4, retries=1)
    summary = run(job)
    assert (summary["loaded"], summary["failed"]) == (4, 0)
    s = kit.stats(kontent)
    assert s["by_route"]["upload"] == 15 + 4  # 3 rows x 5 attempts, then one upload per row
    assert s["assets"] == 4


def test_a_4xx_is_not_retried_and_rejects_only_that_row(kontent: str, tmp_path: Path) -> None:
    import httpx

    httpx.post(f"{kontent}/_sandbox/faults", json={"status": 400, "count": 1, "route": "upsert"}).raise_for_status()
    rows, job = fast_job(kontent, tmp_path, 3)
    summary = run(job)
    assert (summary["loaded"], summary["rejected"], summary["exit_code"]) == (2, 1, 1)
    assert kit.stats(kontent)["by_route"]["upsert"] == 3  # the refused one was not resent
    rejects = (tmp_path / "state" / "e2e" / f"kontent-{kit.ENV}" / "rejects.csv").read_text()
    # the units go out together, so which row the fault hits depends on arrival order: exactly one
    assert rejects.count("Kontent 400") == 1 and sum(r["id"] in rejects for r in rows) == 1


def test_a_vendor_that_stays_down_stops_the_run_and_leaves_the_rest_pending(kontent: str, tmp_path: Path) -> None:
    import httpx

    httpx.post(f"{kontent}/_sandbox/faults",
               json={"status": 503, "count": 1000, "retry_after": 0, "route": "upload"}).raise_for_status()
    rows, job = fast_job(kontent, tmp_path, 9, batch_size=3, concurrency=1, retries=0)
    summary = run(job)
    assert (summary["loaded"], summary["failed"], summary["pending"], summary["exit_code"]) == (0, 3, 6, 1)
    assert "looks unavailable" in summary["stopped"]
    assert kit.stats(kontent)["by_route"]["upload"] == 3 * 5  # one batch tried, then the run stopped

    httpx.post(f"{kontent}/_sandbox/reset").raise_for_status()  # the vendor is back
    kit.set_limits(kontent, 200, 12000)
    again = run(job)
    assert (again["loaded"], again["pending"], again["exit_code"]) == (9, 0, 0)


# ---- issue 16: behave like a real environment (the stricter simulator) ----------------------




ZERO = "00000000-0000-0000-0000-000000000000"


def strict_config() -> dict:
    """An environment like a real one: the default language renamed to en-US, nested folders,
    two collections, an asset taxonomy element ``colour`` on the group ``colours``."""
    return {kit.ENV: sim.EnvConfig(kit.KEY, ["en-US", "de-DE"], collections=["default", "web"],
                                   folders=["images", "brand/2024/spring"],
                                   taxonomies={"colours": ["Red", "Dark green"]},
                                   asset_elements={"colour": "colours"})}


@pytest.fixture(scope="module")
def strict_server() -> Iterator[str]:
    with running(sim.create_app(environments=strict_config())) as root:
        yield root


@pytest.fixture
def strict(strict_server: str, monkeypatch: pytest.MonkeyPatch) -> str:
    httpx.post(f"{strict_server}/_sandbox/reset").raise_for_status()
    kit.set_limits(strict_server, 200, 12000)
    monkeypatch.setenv("KONTENT_API_KEY", kit.KEY)
    return strict_server


def api(root: str) -> httpx.Client:
    return httpx.Client(base_url=f"{root}/v2/projects/{kit.ENV}", headers={"Authorization": f"Bearer {kit.KEY}"},
                        timeout=10)


def strict_job(root: str, tmp_path: Path, rows: list[dict], **settings: object) -> dict:
    return kit.job_dict(str(kit.write_csv(tmp_path / "m.csv", rows)), root, tmp_path / "state", batch_size=2,
                        concurrency=2, settings={**FAST, "tags_element": "colour", "tags_taxonomy": "colours",
                                                 **settings})


def rejects_of(tmp_path: Path) -> dict[str, tuple[str, str]]:
    with (tmp_path / "state" / "e2e" / f"kontent-{kit.ENV}" / "rejects.csv").open() as f:
        return {r["id"]: (r["field"], r["reason"]) for r in csv.DictReader(f)}


def test_references_are_checked_once_before_any_upload_and_sent_by_id(strict: str, tmp_path: Path) -> None:
    base = kit.make_rows(tmp_path / "files", 8)
    for r in base:
        r["tags"] = ""
    rows = [
        {**base[0], "folder": "brand/2024/spring", "tags": "Red|dark green"},  # by names; terms by name/codename
        {**base[1], "language": "de-DE", "folder": "images", "collection": "web"},
        {**base[2], "folder": "brand/2025"},
        {**base[3], "collection": "print"},
        {**base[4], "language": "fr-FR"},
        {**base[5], "tags": "Red|Purple"},
        {**base[6], "id": "img/a.png"},
        {**base[7], "id": "img~2Fa~2Epng"},  # what "img/a.png" maps to, escaped again: no collision
    ]
    job = strict_job(strict, tmp_path, rows)
    summary = run(job)
    assert (summary["loaded"], summary["rejected"]) == (4, 4), summary
    rejects = rejects_of(tmp_path)
    assert rejects[base[2]["id"]][0] == "folder" and "'2025' under 'brand'" in rejects[base[2]["id"]][1]
    assert rejects[base[3]["id"]][0] == "collection" and "'print'" in rejects[base[3]["id"]][1]
    assert rejects[base[4]["id"]][0] == "language" and "'fr-FR'" in rejects[base[4]["id"]][1]
    assert rejects[base[5]["id"]][0] == "tags" and "'Purple'" in rejects[base[5]["id"]][1]
    s = kit.stats(strict)
    assert s["uploads"] == 4  # no binary of a rejected row was sent
    by_route = s["by_route"]
    assert [by_route[k] for k in ("languages", "folders", "collections", "taxonomies")] == [1, 1, 1, 1]  # once per run

    with api(strict) as c:
        folders = c.get("folders").json()["folders"]
        terms = {t["codename"]: t["id"] for t in c.get("taxonomies").json()["taxonomies"][0]["terms"]}
        assets = {a["external_id"]: a for a in kit.list_assets(strict)}
    spring = next(f for f in folders if f["name"] == "brand")["folders"][0]["folders"][0]
    first = assets[base[0]["id"]]
    assert first["folder"] == {"id": spring["id"]}
    assert first["descriptions"] == [{"language": {"id": ZERO}, "description": base[0]["description"]}]
    assert first["elements"][0]["value"] == [{"id": terms["red"]}, {"id": terms["dark_green"]}]
    assert assets[base[1]["id"]]["collection"] == {"reference": {"id": sim.reference_id("collection", "web")}}
    assert set(assets) == {base[0]["id"], base[1]["id"], "img~2Fa~2Epng", "img~7E2Fa~7E2Epng"}
    from assetferry.connectors.core.ledger import Ledger

    ledger = Ledger(str(tmp_path / "state" / "e2e" / f"kontent-{kit.ENV}")).load()
    assert ledger.get("img/a.png").extra["external_id"] == "img~2Fa~2Epng"  # the mapping, in the ledger

    before = kit.stats(strict)["requests"]
    rows = [r for r in rows if r["id"] not in {base[i]["id"] for i in (2, 3, 4, 5)}]
    kit.write_csv(tmp_path / "m.csv", rows)
    again = run(job)
    assert (again["unchanged"], again["loaded"]) == (4, 0)
    assert kit.stats(strict)["requests"] == before  # a rerun with nothing to send reads nothing either


def test_missing_folders_and_terms_are_created_when_the_settings_allow(strict: str, tmp_path: Path) -> None:
    rows = kit.make_rows(tmp_path / "files", 3)
    for r in rows:
        r.update(folder="brand/2025/autumn", tags="Purple|red")
    summary = run(strict_job(strict, tmp_path, rows, create_folders=True, create_terms=True))
    assert summary["loaded"] == 3, summary
    with api(strict) as c:
        brand = next(f for f in c.get("folders").json()["folders"] if f["name"] == "brand")
        terms = {t["codename"]: t["id"] for t in c.get("taxonomies").json()["taxonomies"][0]["terms"]}
    autumn = next(f for f in brand["folders"] if f["name"] == "2025")["folders"][0]
    assert autumn["name"] == "autumn" and "purple" in terms
    for asset in kit.list_assets(strict):
        assert asset["folder"] == {"id": autumn["id"]}
        assert asset["elements"][0]["value"] == [{"id": terms["purple"]}, {"id": terms["red"]}]
    by_route = kit.stats(strict)["by_route"]
    assert (by_route["modify_folders"], by_route["modify_taxonomy"]) == (1, 1)  # created once, then found


def test_descriptions_in_other_languages_survive_a_rerun_unless_replace(strict: str, tmp_path: Path) -> None:
    rows = kit.make_rows(tmp_path / "files", 1)
    rows[0]["tags"] = ""
    job = strict_job(strict, tmp_path, rows)
    assert run(job)["loaded"] == 1
    ext = rows[0]["id"]
    with api(strict) as c:  # an editor writes the German alt text in the UI
        asset = c.get(f"assets/external-id/{ext}").json()
        c.put(f"assets/external-id/{ext}", json={"descriptions": asset["descriptions"] + [
            {"language": {"codename": "de-DE"}, "description": "Alternativtext"}]}).raise_for_status()
    rows[0].update(title="New title", description="New alt text")
    kit.write_csv(tmp_path / "m.csv", rows)
    assert run(job)["loaded"] == 1
    with api(strict) as c:
        texts = sorted(d["description"] for d in c.get(f"assets/external-id/{ext}").json()["descriptions"])
    assert texts == ["Alternativtext", "New alt text"]
    assert kit.stats(strict)["uploads"] == 1  # a metadata change never uploads the file again

    job["destination"]["settings"]["descriptions"] = "replace"
    assert run(job)["loaded"] == 1
    with api(strict) as c:
        texts = [d["description"] for d in c.get(f"assets/external-id/{ext}").json()["descriptions"]]
    assert texts == ["New alt text"]


def test_only_a_refused_file_reference_uploads_again_and_409_is_retried(strict: str, tmp_path: Path) -> None:
    rows = kit.make_rows(tmp_path / "files", 2)
    for r in rows:
        r["tags"] = ""
    job = strict_job(strict, tmp_path, rows)
    job.update(batch_size=1, concurrency=1)
    assert run(job)["loaded"] == 2
    # A validation error on the upsert: the row is rejected, its file is not uploaded again.
    for r in rows:
        r["title"] += " v2"
    kit.write_csv(tmp_path / "m.csv", rows)
    httpx.post(f"{strict}/_sandbox/faults", json={"status": 400, "count": 1, "route": "upsert"}).raise_for_status()
    second = run(job)
    assert (second["loaded"], second["rejected"]) == (1, 1), second
    assert kit.stats(strict)["uploads"] == 2
    # The asset was deleted in the UI; a 409 (concurrent change) answers first: retried, then the
    # upsert without a file is refused for its missing file reference, so the file goes again.
    with api(strict) as c:
        c.delete(f"assets/external-id/{rows[1]['id']}").raise_for_status()
    rows[1].update(title=rows[1]["title"] + " v3", description="")  # no description: no read first
    kit.write_csv(tmp_path / "m.csv", rows)
    httpx.post(f"{strict}/_sandbox/faults", json={"status": 409, "count": 1, "route": "upsert"}).raise_for_status()
    third = run(job)
    assert (third["loaded"], third["rejected"], third["failed"]) == (2, 0, 0), third
    s = kit.stats(strict)
    assert s["uploads"] == 3 and s["assets"] == 2


def test_verify_finds_missing_changed_and_extra_and_reconcile_resends_the_missing(
        strict: str, tmp_path: Path) -> None:
    import json

    from typer.testing import CliRunner

    from assetferry.flows.cli import app

    rows = kit.make_rows(tmp_path / "files", 4)
    for r in rows:
        r["tags"] = ""
    job_data = strict_job(strict, tmp_path, rows)
    assert run(job_data)["loaded"] == 4
    job = kit.write_job(tmp_path / "job.yaml", job_data)
    clean = CliRunner().invoke(app, ["verify", str(job), "--output", "json"])
    assert clean.exit_code == 0, clean.output
    assert json.loads(clean.output)["in_sync"] == 4
    with api(strict) as c:  # in the UI: one asset deleted, one edited, one added
        c.delete(f"assets/external-id/{rows[0]['id']}").raise_for_status()
        c.put(f"assets/external-id/{rows[1]['id']}", json={"title": "edited in the UI"}).raise_for_status()
        ref = c.post("files/other.txt", content=b"other", headers={"Content-Type": "text/plain"}).json()
        c.put("assets/external-id/not-ours", json={"file_reference": ref}).raise_for_status()
    result = CliRunner().invoke(app, ["verify", str(job), "--reconcile", "--output", "json"])
    assert result.exit_code == 1, result.output
    report = json.loads(result.output)
    assert (report["missing"], report["changed"], report["extra"]) == ([rows[0]["id"]], [rows[1]["id"]], ["not-ours"])
    again = run(job_data)  # --reconcile marked the missing one: the next run sends it again
    assert (again["loaded"], again["unchanged"]) == (1, 3), again
    assert rows[0]["id"] in {a["external_id"] for a in kit.list_assets(strict)}

    # run --reconcile does both at once: read back, then send what is missing
    with api(strict) as c:
        c.delete(f"assets/external-id/{rows[2]['id']}").raise_for_status()
    result = CliRunner().invoke(app, ["run", str(job), "--reconcile", "--output", "json"])
    assert result.exit_code in (0, 1), result.output
    summary = json.loads(result.output[result.output.index("{"):])
    assert summary["loaded"] == 1, summary
    assert rows[2]["id"] in {a["external_id"] for a in kit.list_assets(strict)}


def test_check_environment_false_reads_nothing_and_still_sends_the_default_language_by_id(
        strict: str, tmp_path: Path) -> None:
    rows = kit.make_rows(tmp_path / "files", 2)
    for r in rows:
        r["tags"] = ""
    job = strict_job(strict, tmp_path, rows, check_environment=False)
    del job["destination"]["settings"]["tags_element"]
    assert run(job)["loaded"] == 2
    by_route = kit.stats(strict)["by_route"]
    assert by_route["languages"] == by_route["folders"] == 0
    for asset in kit.list_assets(strict):
        assert asset["descriptions"][0]["language"] == {"id": ZERO}  # the default is named en-US here
