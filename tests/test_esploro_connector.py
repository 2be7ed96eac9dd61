"""The Esploro connector without Prefect: error bodies (JSON and XML) -> outcomes, the daily reset
time, link identity across runs, vectorised checks, the dry-run plan, settings validation."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx
import pandas as pd
import pytest
from pydantic import SecretStr, ValidationError

from assetferry.connectors.core.files import FileStore
from assetferry.connectors.core.http import Action
from assetferry.connectors.core.records import DuplicateTracker, canonicalize
from assetferry.connectors.sources.base import RecordChunk
from assetferry.connectors.vendors.base import Row, Unit
from assetferry.connectors.vendors.esploro import (
    ApiKeyAuth, EsploroConnector, EsploroSettings, exl_errors, link_key, parse_error,
)

KEY = "l8xx-sandbox-key-123"


def connector(**settings: object) -> EsploroConnector:
    return EsploroConnector(url="https://api-eu.hosted.exlibrisgroup.com", settings=settings,
                            credentials={"api_key": SecretStr(KEY)})


def exl_json(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> httpx.Response:
    body = {"errorsExist": True, "errorList": {"error": [{"errorCode": code, "errorMessage": message,
                                                          "trackingId": "E01-1234-ABCDE"}]}, "result": None}
    return httpx.Response(status, json=body, headers=headers)


def exl_xml(status: int, code: str, message: str) -> httpx.Response:
    xml = ('<?xml version="1.0" encoding="UTF-8" standalone="yes"?><web_service_result '
           'xmlns="http://com/exlibris/urm/general/xmlbeans"><errorsExist>true</errorsExist><errorList><error>'
           f"<errorCode>{code}</errorCode><errorMessage>{message}</errorMessage></error></errorList>"
           "</web_service_result>")
    return httpx.Response(status, text=xml, headers={"Content-Type": "application/xml"})


@pytest.mark.parametrize("response, action", [
    (exl_json(429, "PER_SECOND_THRESHOLD", "HTTP requests are more than allowed per second"), Action.RETRY),
    (exl_json(429, "DAILY_THRESHOLD", "Daily API Request Threshold has been reached."), Action.QUOTA),
    (exl_xml(429, "DAILY_THRESHOLD", "Daily API Request Threshold has been reached."), Action.QUOTA),
    (exl_json(400, "UNAUTHORIZED", "API-key not defined or not configured to allow this API."), Action.AUTH),
    (exl_xml(400, "UNAUTHORIZED", "API-key not defined or not configured to allow this API."), Action.AUTH),
    (exl_json(403, "INVALID_REQUEST", "Invalid API Key"), Action.AUTH),
    (exl_json(403, "REQUEST_TOO_LARGE", "Request too large"), Action.REJECT),
    (exl_json(400, "402203", "Input parameters assetId 1 is not valid."), Action.REJECT),
    (exl_json(500, "GENERAL_ERROR", "Internal error"), Action.RETRY),
    (exl_json(503, "ROUTING_ERROR", "No route"), Action.RETRY),
    (exl_json(400, "402222", "Execution threshold reached."), Action.REJECT),
    (httpx.Response(429, text="slow down"), Action.RETRY),
])
def test_every_documented_error_has_its_outcome(response: httpx.Response, action: Action) -> None:
    verdict = connector().classify(response)
    assert verdict is not None and verdict.action is action


def test_error_reasons_read_json_and_xml_bodies_and_mask_presigned_urls() -> None:
    unknown = connector().classify(exl_json(400, "402203", "Input parameters assetId 9 is not valid."))
    assert unknown is not None and unknown.field == "parent"
    assert unknown.message == ("no such Esploro asset: Esploro 400: Input parameters assetId 9 is not valid. "
                               "(402203, trackingId E01-1234-ABCDE)")
    assert parse_error(exl_xml(400, "UNAUTHORIZED", "nope")) == "Esploro 400: nope (UNAUTHORIZED)"
    echoed = exl_json(400, "GENERAL_ERROR",
                      "Bad link https://b.s3.amazonaws.com/k.pdf?X-Amz-Signature=abc123&X-Amz-Expires=60 here")
    assert "abc123" not in parse_error(echoed) and "<presigned URL> here" in parse_error(echoed)
    assert exl_errors("<!DOCTYPE x [<!ENTITY a 'b'>]><error/>") == []  # never expand entities
    assert exl_errors("not a body") == []


def test_a_refused_link_is_named_by_its_index() -> None:
    verdict = connector().classify(exl_json(400, "GENERAL_ERROR", "linksToExtract[2]: link.url is mandatory."))
    assert verdict is not None and verdict.rows == {2: (None, "Esploro 400: linksToExtract[2]: link.url is mandatory.")}


def test_per_second_wait_is_the_setting_unless_the_gateway_says_retry_after() -> None:
    c = connector(throttle_wait_seconds=2.5)
    plain = c.classify(exl_json(429, "PER_SECOND_THRESHOLD", "x"))
    hinted = c.classify(exl_json(429, "PER_SECOND_THRESHOLD", "x", headers={"Retry-After": "4"}))
    assert plain is not None and plain.retry_after == 2.5
    assert hinted is not None and hinted.retry_after == 4


def test_daily_threshold_resets_at_the_next_midnight_of_the_configured_zone() -> None:
    now = datetime(2026, 3, 9, 23, 30, tzinfo=ZoneInfo("UTC"))
    assert connector().resets_at(now) == "2026-03-10T00:00:00+00:00"
    assert connector(daily_reset_timezone="Asia/Jerusalem").resets_at(now) == "2026-03-11T00:00:00+02:00"


def test_link_identity_ignores_the_presigning_but_not_the_rest() -> None:
    a = "https://b.s3.amazonaws.com/src/a.pdf?X-Amz-Algorithm=AWS4&X-Amz-Signature=1&X-Amz-Expires=60"
    b = "https://B.s3.amazonaws.com/src/a.pdf?X-Amz-Signature=2&X-Amz-Date=2&X-Amz-Expires=60"
    assert link_key(a) == link_key(b) == link_key("https://b.s3.amazonaws.com/src/a.pdf")
    assert link_key("https://h/dl?id=1") != link_key("https://h/dl?id=2")
    assert link_key("https://h/a.pdf?AWSAccessKeyId=x&Signature=y&Expires=1") == link_key("https://h/a.pdf")


def test_the_key_travels_only_in_the_authorization_header_and_is_redacted() -> None:
    auth = ApiKeyAuth(KEY)
    request = next(auth.auth_flow(httpx.Request("GET", "https://x/esploro/v1/assets/1")))
    assert request.headers["Authorization"] == f"apikey {KEY}" and "apikey" not in str(request.url)
    assert KEY in auth.secrets() and "apikey" not in auth.secrets()


def _canonical(rows: list[dict[str, object]]) -> pd.DataFrame:
    good, rejects = canonicalize(RecordChunk(pd.DataFrame(rows), "m.csv", 2), DuplicateTracker(),
                                 ("id", "file", "parent"))
    assert rejects.empty, rejects
    return good


def test_prepare_rejects_by_field_and_builds_the_link(tmp_path: Path) -> None:
    c = connector(file_type="supplementary")
    frame = _canonical([
        {"id": "a", "parent": "991", "file": "https://h/a.pdf", "title": "A", "supplemental": "YES",
         "file_type": "accepted"},
        {"id": "b", "parent": "991", "file": "https://h/b.pdf", "supplemental": ""},
        {"id": "c", "parent": "9,1", "file": "https://h/c.pdf"},
        {"id": "d", "parent": "991", "file": str(tmp_path / "d.pdf")},
        {"id": "e", "parent": "991", "file": "gs://b/e.pdf"},
        {"id": "f", "parent": "991", "file": "https://h/f.pdf", "supplemental": "perhaps"},
    ])
    good, rejects = c.prepare(frame)
    assert good["id"].tolist() == ["a", "b"]
    assert dict(zip(rejects["id"], rejects["field"])) == {"c": "parent", "d": "file", "e": "file", "f": "supplemental"}
    assert c._meta(good.iloc[0].to_dict()) == {"link.title": "A", "link.type": "accepted", "link.supplemental": "true"}
    assert c._meta(good.iloc[1].to_dict()) == {"link.title": "b.pdf", "link.type": "supplementary",
                                               "link.supplemental": "false"}
    # what defines "changed" carries no URL (a presigned one changes every run)
    assert "https://" not in str(c.content(good.iloc[0].to_dict()))


def test_the_dry_run_plan_describes_urls_and_masks_the_key(tmp_path: Path) -> None:
    c = connector(staging="s3://stage/pre/")
    path = tmp_path / "paper.pdf"
    path.write_bytes(b"%PDF")
    frame, _ = c.prepare(_canonical([
        {"id": "a", "parent": "991", "file": "https://h/a.pdf?token=secret", "title": "A"},
        {"id": "b", "parent": "991", "file": "s3://bucket/b.pdf", "title": "B"},
        {"id": "c", "parent": "991", "file": str(path), "title": "C"},
    ]))
    info = FileStore().stat(str(path))
    rows = [Row(id=r["id"], data=r, index=i, info=info if r["id"] == "c" else None)
            for i, r in enumerate(frame.to_dict("records"))]
    plan = c.plan(Unit(rows, key="991"))
    (request,) = plan.requests
    assert plan.action == "link" and request["method"] == "POST"
    assert request["url"] == "https://api-eu.hosted.exlibrisgroup.com/esploro/v1/assets/991?op=patch&action=add"
    assert request["headers"]["Authorization"] == "apikey ***"
    urls = [link["link.url"] for link in request["json"]["records"][0]["temporary"]["linksToExtract"]]
    assert urls[0] == "<https://h/a.pdf: passed through>"  # query (maybe a token) not shown
    assert urls[1] == "<s3://bucket/b.pdf: presigned s3://bucket/b.pdf (7 days)>"
    assert urls[2].startswith(f"<{path}: staged to s3://stage/pre/") and urls[2].endswith("then presigned (7 days)>")


@pytest.mark.parametrize("settings, message", [
    ({"staging_options": {"key": "AKIA-literal"}}, "must be a reference"),
    ({"daily_reset_timezone": "Mars/Olympus"}, "unknown time zone"),
    ({"staging": "gs://b/x"}, "cannot be presigned"),
    ({"expires_seconds": 604801}, "less than or equal to 604800"),
    ({"on_change": "replace"}, "'add' or 'reject'"),
])
def test_unusable_settings_are_refused(settings: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        EsploroSettings.model_validate(settings)
