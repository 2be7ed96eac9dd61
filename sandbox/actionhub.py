"""ActionHub (Data Baller) asset-metadata simulator (batch upsert, search), written from its public docs only."""

import json
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from http import HTTPStatus
from typing import Annotated, Any, Literal

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse, Response
from pydantic import (
    BaseModel,
    Field,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    create_model,
    field_validator,
    model_validator,
)

#: The sandbox's API key; ASSETFERRY_SANDBOX_KEY_ACTIONHUB replaces it (the test suite runs with
#: recognisable fake keys and scans every output for them).
DEMO_API_KEY = os.environ.get("ASSETFERRY_SANDBOX_KEY_ACTIONHUB", "sandbox-actionhub-key")
DEMO_PROGRAM_ID = "sandbox-program"
DEMO_OTHER_PROGRAM_ID = "sandbox-program-2"  # the demo key spans two programs, as real keys may
BASE_PATH = ""  # clients use http://host:port like https://api.actionhub.ai
ROUTES = ("upsert", "list")

AUTH_ERROR = {"detail": "Could not validate API KEY"}  # vendor notes: invalid/unauthorised key -> 403
RESULT_TEXT = "success"  # doc silent on the text of `result`; clients must not parse it
POISON_MESSAGE = "Batch could not be processed"
REFUSE_MESSAGE = "asset_id is not accepted"  # sandbox-only field error (see /_sandbox/refuse)
PERMISSIONS = ("read", "write", "admin")  # hierarchical here (doc silent): write implies read
MAX_PAGE_SIZE = 100  # doc silent; fastapi-pagination's default Page caps size at 100 (le=100)


@dataclass(frozen=True)
class ApiKey:
    """An `actionhub-key`: the programs it may use and its permission (read < write < admin)."""

    programs: tuple[str, ...]
    permission: Literal["read", "write", "admin"] = "write"


class Asset(BaseModel):
    """The doc's Asset schema. Extra fields are ignored (pydantic default). Doc types are not
    nullable, so null asset_name/labels are refused (string_type / list_type) rather than guessed."""

    asset_id: str = Field(max_length=64)
    asset_name: str = Field(None, max_length=124)  # optional, default None (not re-validated)
    labels: list[Any] = Field(default_factory=list)  # "items: {}" = any JSON value

    @field_validator("asset_id")
    @classmethod
    def _not_refused(cls, value: str, info: ValidationInfo) -> str:
        """Sandbox-only: an asset_id listed by /_sandbox/refuse fails like a vendor-side field
        validator would: a value_error whose loc names its index, e.g. ["body", "assets", 3, "asset_id"]."""
        if value in (info.context or {}).get("refuse", ()):
            raise ValueError(REFUSE_MESSAGE)
        return value


class _AssetListBase(BaseModel):
    """The doc's AssetList; `_asset_list_model` re-declares `assets` with the batch cap."""

    assets: list[Asset]

    @model_validator(mode="after")
    def _not_poisoned(self, info: ValidationInfo) -> "_AssetListBase":
        """Sandbox-only: a batch holding a poisoned asset_id fails as a whole, with loc ["body"]
        (no index), like a model-level validator would. Runs only when every field is valid."""
        poison = (info.context or {}).get("poison", ())
        if any(a.asset_id in poison for a in self.assets):
            raise ValueError(POISON_MESSAGE)
        return self


@lru_cache(maxsize=8)
def _asset_list_model(max_assets: int) -> type[_AssetListBase]:
    """AssetList with `assets` capped at max_assets. Doc silent on a batch limit (its schema shows no
    maxItems): the sandbox caps it so that an oversize batch answers pydantic's indexless
    422 too_long at ["body", "assets"], checked before any item is validated."""
    assets = (Annotated[list[Asset], Field(max_length=max_assets)], ...)
    model = create_model("AssetList", __base__=_AssetListBase, assets=assets)  # type: ignore[call-overload]
    return model  # type: ignore[no-any-return]


_PAGE = TypeAdapter(Annotated[int, Field(ge=1)])
_SIZE = TypeAdapter(Annotated[int, Field(ge=1, le=MAX_PAGE_SIZE)])
_VERSION = TypeAdapter(Literal["1.0"])  # optional `api-version` header: 1.0 is the only live version


class _Answer(Exception):
    """Ends a request with this status and JSON body (FastAPI's {"detail": ...} shapes)."""

    def __init__(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        super().__init__(status)
        self.status, self.body, self.headers = status, body, headers


def _errors(exc: ValidationError, *prefix: str | int) -> list[dict[str, Any]]:
    """Pydantic v2 errors as FastAPI renders them: loc prefixed, no url, ctx JSON-encoded.
    The vendor's pydantic version is unknown (open question); v2 wording is our pick."""
    out = [{**e, "loc": (*prefix, *e["loc"])} for e in exc.errors(include_url=False)]
    return list(jsonable_encoder(out))


def _check(adapter: TypeAdapter[Any], value: Any, *loc: str) -> tuple[Any, list[dict[str, Any]]]:
    try:
        return adapter.validate_python(value), []
    except ValidationError as exc:
        return None, _errors(exc, *loc)


def _header_errors(request: Request) -> list[dict[str, Any]]:
    """`program-id` is required (FastAPI loc ["header", "program-id"]); `api-version` optional, "1.0"."""
    errors: list[dict[str, Any]] = []
    if request.headers.get("program-id") is None:
        errors.append({"type": "missing", "loc": ["header", "program-id"], "msg": "Field required", "input": None})
    version = request.headers.get("api-version")
    if version is not None:
        errors += _check(_VERSION, version, "header", "api-version")[1]
    return errors


async def _json_body(request: Request) -> Any:
    """FastAPI's body reading: JSON is parsed for application/json, */*+json, or no Content-Type
    (doc silent; FastAPI before strict_content_type did so); other types stay raw text. Malformed
    JSON ends the request at once with FastAPI's json_invalid 422 (no other error reported)."""
    raw = await request.body()
    if not raw:
        return None
    media = request.headers.get("content-type", "application/json").split(";", 1)[0].strip().lower()
    if not (media == "application/json" or (media.startswith("application/") and media.endswith("+json"))):
        return raw.decode("utf-8", "replace")
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        error = {"type": "json_invalid", "loc": ["body", exc.pos], "msg": "JSON decode error", "input": {}}
        raise _Answer(422, {"detail": [{**error, "ctx": {"error": exc.msg}}]}) from None
    except UnicodeDecodeError:
        raise _Answer(400, {"detail": "There was an error parsing the body"}) from None


@dataclass
class _Stored:
    asset_id: str
    asset_name: str | None
    labels: list[Any]
    writes: int  # API writes (upserts) of this asset; seeded assets start at 0

    def render(self) -> dict[str, Any]:
        return {"asset_id": self.asset_id, "asset_name": self.asset_name, "labels": self.labels}


@dataclass
class _Limits:
    per_second: int | None  # None = unlimited
    max_assets: int


class _Simulator:
    """All mutable state. Handlers are async on the server's single event loop and never await
    between reading and changing state, so no lock is needed."""

    def __init__(self, keys: dict[str, ApiKey], limits: _Limits, clock: Callable[[], float]) -> None:
        self.keys, self.initial_limits, self.clock = keys, limits, clock
        self.reset()

    def reset(self) -> None:
        self.limits = _Limits(self.initial_limits.per_second, self.initial_limits.max_assets)
        self.programs: dict[str, dict[str, _Stored]] = {}  # program -> asset_id -> asset, insertion order
        self.poison: frozenset[str] = frozenset()
        self.refuse: frozenset[str] = frozenset()
        self.faults: list[dict[str, Any]] = []
        self.hits: dict[str, deque[float]] = {}  # per key: times of admitted requests
        self.stats: dict[str, int] = {"requests": 0, "accepted": 0, "throttled": 0, "rejected": 0, "asset_writes": 0}
        self.by_route = dict.fromkeys(ROUTES, 0)

    def snapshot(self) -> dict[str, Any]:
        assets = sum(len(p) for p in self.programs.values())
        return {**self.stats, "assets": assets, "by_route": dict(self.by_route)}

    def admit(self, request: Request, route: str) -> ApiKey:
        """Key check (403), then rate limit (429), then injected "before" faults."""
        self.stats["requests"] += 1
        self.by_route[route] += 1
        presented = request.headers.get("actionhub-key")
        # Doc silent on a missing key: the usual FastAPI APIKeyHeader(auto_error=False) + check
        # answers the same 403 body for a missing key as for a wrong one.
        key = self.keys.get(presented) if presented else None
        if presented is None or key is None:
            raise _Answer(403, AUTH_ERROR)
        self._throttle(presented)
        self._fault(route, "before")
        self.stats["accepted"] += 1
        return key

    def _throttle(self, presented: str) -> None:
        """Doc silent on rate limits: a sliding 1 s window per key, `per_second` admitted requests.
        The 429 body is slowapi's text in FastAPI's {"detail"} shape; no Retry-After (the vendor
        documents none, so a client must back off on its own)."""
        limit = self.limits.per_second
        if limit is None:
            return
        now, hits = self.clock(), self.hits.setdefault(presented, deque())
        while hits and hits[0] <= now - 1:
            hits.popleft()
        if len(hits) >= limit:
            self.stats["throttled"] += 1
            raise _Answer(429, {"detail": f"Rate limit exceeded: {limit} per 1 second"})
        hits.append(now)

    def _fault(self, route: str, when: str) -> None:
        for fault in self.faults:
            if fault["route"] in (None, route) and fault["when"] == when:
                fault["count"] -= 1
                self.faults = [f for f in self.faults if f["count"] > 0]
                status = fault["status"]
                self.stats["throttled"] += status == 429
                headers = {"Retry-After": str(fault["retry_after"])} if fault["retry_after"] is not None else None
                body = fault["body"] if fault["body"] is not None else {"detail": _phrase(status)}
                raise _Answer(status, body, headers)

    def finish(self, route: str, body: dict[str, Any]) -> JSONResponse:
        """The action is done; an "after" fault now replaces the 200 (the reply was lost)."""
        self._fault(route, "after")
        return JSONResponse(body)

    @staticmethod
    def authorize(key: ApiKey, program_id: str, needed: str) -> None:
        """A valid key used for a program it does not span, or without the permission -> the same 403."""
        if program_id not in key.programs or PERMISSIONS.index(key.permission) < PERMISSIONS.index(needed):
            raise _Answer(403, AUTH_ERROR)

    def reject(self, errors: list[dict[str, Any]]) -> _Answer:
        self.stats["rejected"] += 1
        return _Answer(422, {"detail": errors})

    def upsert(self, program_id: str, assets: list[Asset], writes: int = 1) -> None:
        """In request order: a new asset_id is added, an existing one replaced as sent. Doc silent:
        omitted fields reset to their defaults (null name, [] labels) and labels replace, not merge;
        a repeated asset_id in one batch is not an error (the last one wins, each counts a write)."""
        stored = self.programs.setdefault(program_id, {})
        for asset in assets:
            old = stored.get(asset.asset_id)
            count = (old.writes if old else 0) + writes
            stored[asset.asset_id] = _Stored(asset.asset_id, asset.asset_name, list(asset.labels), count)
            self.stats["asset_writes"] += writes

    def records(self) -> list[dict[str, Any]]:
        return [
            {"program_id": program, **a.render(), "writes": a.writes}
            for program, assets in self.programs.items()
            for a in assets.values()
        ]


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Sandbox fault"


def _matches(asset: _Stored, term: str) -> bool:
    """Doc: the search term is matched in any field. Case-insensitive substring (doc silent)."""
    labels = [v if isinstance(v, str) else json.dumps(v) for v in asset.labels]
    return any(term in text.lower() for text in (asset.asset_id, asset.asset_name or "", *labels))


def demo_job(root: str, demo_dir: Any, stack: Any) -> tuple[dict[str, Any], dict[str, str]]:
    """For ``assetferry demo actionhub``: the job's source and destination against this simulator at
    ``root`` (``demo/actionhub.csv``: 36 metadata-only rows, six of them in the second demo program
    through their ``parent``, one title over 124 characters that the demo truncates), and the
    environment variables it reads. Needs no vendor-side set-up and no helper server."""
    job = {
        "source": {"url": str(demo_dir / "actionhub.csv")},
        "destination": {"vendor": "actionhub", "url": f"{root}{BASE_PATH}",
                        "credentials": {"api_key": "env:ASSETFERRY_DEMO_ACTIONHUB_KEY"},
                        "settings": {"program_id": DEMO_PROGRAM_ID, "truncate_names": True}},
        "batch_size": 500,
    }
    return job, {"ASSETFERRY_DEMO_ACTIONHUB_KEY": DEMO_API_KEY}


def create_app(
    *,
    keys: dict[str, ApiKey] | None = None,
    per_second: int | None = 10,
    max_assets: int = 1000,
    clock: Callable[[], float] = time.monotonic,
) -> FastAPI:
    """Build the simulator: vendor routes POST/GET /assets; sandbox control routes (no auth, no
    rate limit, not counted) under /_sandbox/. Defaults: the demo key spans both demo programs."""
    if keys is None:
        keys = {DEMO_API_KEY: ApiKey((DEMO_PROGRAM_ID, DEMO_OTHER_PROGRAM_ID), "admin")}
    sim = _Simulator(keys, _Limits(per_second, max_assets), clock)
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    app.state.simulator = sim

    async def answer(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, _Answer)
        return JSONResponse(exc.body, status_code=exc.status, headers=exc.headers)

    app.add_exception_handler(_Answer, answer)
    _add_vendor_routes(app, sim)
    _add_control_routes(app, sim)
    return app


def _add_vendor_routes(app: FastAPI, sim: _Simulator) -> None:
    @app.post("/assets")
    async def post_assets(request: Request) -> Response:
        """Batch upsert keyed by asset_id within the `program-id` program. 200 {"result": str}.
        One invalid field refuses the whole batch (422, nothing stored); header errors and body
        errors are listed together, each loc naming the failing index, e.g.
        ["body", "assets", 3, "asset_name"]. Order: key 403, 429, validation 422, program 403."""
        key = sim.admit(request, "upsert")
        try:
            body = await _json_body(request)
        except _Answer:
            sim.stats["rejected"] += 1
            raise
        errors = _header_errors(request)
        model = _asset_list_model(sim.limits.max_assets)
        batch = None
        if body is None:  # FastAPI: a required body that is absent is "missing", not validated
            errors.append({"type": "missing", "loc": ["body"], "msg": "Field required", "input": None})
        else:
            try:  # FastAPI validates bodies with from_attributes=True (it changes the error types)
                batch = model.model_validate(body, from_attributes=True, context={"poison": sim.poison, "refuse": sim.refuse})
            except ValidationError as exc:
                errors += _errors(exc, "body")
        if errors or batch is None:
            raise sim.reject(errors)
        program_id = request.headers["program-id"]
        sim.authorize(key, program_id, "write")
        sim.upsert(program_id, batch.assets)
        return sim.finish("upsert", {"result": RESULT_TEXT})

    @app.get("/assets")
    async def get_assets(request: Request) -> Response:
        """?search=&page=1&size=50 -> {"items": [Asset], "total", "page", "size"} (fastapi-pagination
        style). Insertion order (doc silent); a page past the end is empty; size <= 100."""
        key = sim.admit(request, "list")
        query = request.query_params
        page, page_errors = _check(_PAGE, query.get("page", 1), "query", "page")
        size, size_errors = _check(_SIZE, query.get("size", 50), "query", "size")
        errors = page_errors + size_errors + _header_errors(request)  # FastAPI order: query, then header
        if errors:
            raise sim.reject(errors)
        program_id = request.headers["program-id"]
        sim.authorize(key, program_id, "read")
        term = query.get("search")
        assets = list(sim.programs.get(program_id, {}).values())
        if term:
            assets = [a for a in assets if _matches(a, term.lower())]
        items = [a.render() for a in assets[(page - 1) * size : page * size]]
        return sim.finish("list", {"items": items, "total": len(assets), "page": page, "size": size})


async def _control_body(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.body() or b"{}")
    except ValueError:
        raise _Answer(400, {"detail": "The body must be JSON."}) from None
    if not isinstance(body, dict):
        raise _Answer(400, {"detail": "The body must be a JSON object."})
    return body


def _is_int(value: Any, low: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _add_control_routes(app: FastAPI, sim: _Simulator) -> None:
    """Sandbox-only routes (not part of the vendor API): no auth, no rate limit, not counted."""

    @app.get("/_sandbox/stats")
    async def stats() -> Response:
        """{"requests", "accepted" (past key/limit/"before" faults), "throttled" (429s, injected too),
        "rejected" (admitted but refused as a bad request: 422/400), "asset_writes" (asset upserts
        through the API), "assets" (stored now, all programs), "by_route": {"upsert": n, "list": n}}."""
        return JSONResponse(sim.snapshot())

    @app.post("/_sandbox/reset")
    async def reset() -> Response:
        sim.reset()
        return JSONResponse(sim.snapshot())

    @app.get("/_sandbox/records")
    async def records() -> Response:
        """{"records": [{"program_id", "asset_id", "asset_name", "labels", "writes"}]}."""
        return JSONResponse({"records": sim.records()})

    @app.post("/_sandbox/faults")
    async def faults(request: Request) -> Response:
        """Body {"status": 400-599, "count": n>=1, "retry_after": int|null, "route": null|"upsert"|"list",
        "when": "before"|"after", "body": JSON|null}: the next n matching admitted requests answer
        `status` (body default {"detail": <reason phrase>}). "before": refused, nothing stored;
        "after": taken only by a request that succeeded, after it was fully stored."""
        body = await _control_body(request)
        fault = {
            "status": body.get("status"),
            "count": body.get("count", 1),
            "retry_after": body.get("retry_after"),
            "route": body.get("route"),
            "when": body.get("when", "before"),
            "body": body.get("body"),
        }
        valid = (
            _is_int(fault["status"], 400)
            and fault["status"] <= 599
            and _is_int(fault["count"], 1)
            and (fault["retry_after"] is None or _is_int(fault["retry_after"], 0))
            and fault["route"] in (None, *ROUTES)
            and fault["when"] in ("before", "after")
        )
        if not valid:
            raise _Answer(400, {"detail": f"Bad fault; route must be null or one of {list(ROUTES)}."})
        sim.faults.append(fault)
        return JSONResponse({"faults": sim.faults})

    @app.post("/_sandbox/limits")
    async def limits(request: Request) -> Response:
        """Body {"per_second": int>=1|null (null = unlimited), "max_assets": int>=1}; keys left out
        keep their value. Answers the new values."""
        body = await _control_body(request)
        per_second = body.get("per_second", sim.limits.per_second)
        max_assets = body.get("max_assets", sim.limits.max_assets)
        if not ((per_second is None or _is_int(per_second, 1)) and _is_int(max_assets, 1)):
            raise _Answer(400, {"detail": "'per_second' must be an int >= 1 or null, 'max_assets' an int >= 1."})
        sim.limits = _Limits(per_second, max_assets)
        return JSONResponse({"per_second": per_second, "max_assets": max_assets})

    @app.post("/_sandbox/poison")
    async def poison(request: Request) -> Response:
        """Body {"asset_ids": [str]} replaces the poisoned set ([] clears it). A POST /assets whose
        batch holds one of them (and is otherwise valid) answers 422
        {"detail": [{"type": "value_error", "loc": ["body"], "msg": "Value error, Batch could not be
        processed", ...}]} with no index, and stores nothing."""
        ids = (await _control_body(request)).get("asset_ids")
        if not (isinstance(ids, list) and all(isinstance(i, str) for i in ids)):
            raise _Answer(400, {"detail": "'asset_ids' must be a list of strings."})
        sim.poison = frozenset(ids)
        return JSONResponse({"asset_ids": sorted(sim.poison)})

    @app.post("/_sandbox/refuse")
    async def refuse(request: Request) -> Response:
        """Body {"asset_ids": [str]} replaces the refused set ([] clears it). A POST /assets holding
        one of them answers 422 with one error per such asset, naming its index:
        {"type": "value_error", "loc": ["body", "assets", i, "asset_id"], "msg": "Value error,
        asset_id is not accepted", ...}, and stores nothing (like any field error)."""
        ids = (await _control_body(request)).get("asset_ids")
        if not (isinstance(ids, list) and all(isinstance(i, str) for i in ids)):
            raise _Answer(400, {"detail": "'asset_ids' must be a list of strings."})
        sim.refuse = frozenset(ids)
        return JSONResponse({"asset_ids": sorted(sim.refuse)})

    @app.post("/_sandbox/assets")
    async def seed(request: Request) -> Response:
        """Body {"program_id": str, "assets": [Asset]}: store assets as if they already existed
        at the vendor (writes = 0, not counted in stats). Answers {"seeded": n}."""
        body = await _control_body(request)
        program_id = body.get("program_id")
        try:
            batch = _asset_list_model(10**9).model_validate(body, from_attributes=True)
        except ValidationError as exc:
            raise _Answer(400, {"detail": _errors(exc, "body")}) from None
        if not isinstance(program_id, str):
            raise _Answer(400, {"detail": "'program_id' must be a string."})
        sim.upsert(program_id, batch.assets, writes=0)
        return JSONResponse({"seeded": len(batch.assets)})
