"""A toy second vendor, to show the loader core works for a vendor unlike Kontent without touching it:
batches of N in one request, a NON-idempotent create, per-index 422s, a 422 that names no row, a
daily quota. The connector is a few lines; the simulator is a small Starlette app."""

from __future__ import annotations

from collections import Counter
from typing import Any, ClassVar

import httpx
import pandas as pd
from pydantic import Field
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from assetferry.connectors.core.errors import RejectedError
from assetferry.connectors.core.http import Action, HeaderAuth, Verdict, VendorAuth, VendorHTTP, json_body
from assetferry.connectors.core.records import rejects_frame
from assetferry.connectors.vendors.base import (
    BaseConnector, Checkpoint, Plan, RateSettings, Result, Row, Unit, UnitRule, VendorSpec,
)

TOY_KEY = "toy-secret-key"


# -- the connector: everything a vendor has to write -------------------------------------------
class ToySettings(RateSettings):
    batch: int = Field(default=10, ge=1)
    requests_per_second: float | None = Field(default=50, gt=0)


class ToyConnector(BaseConnector):
    spec: ClassVar[VendorSpec]

    def auth(self) -> VendorAuth:
        return HeaderAuth({"X-Key": self.secret("api_key")})

    def prepare(self, frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
        return frame, rejects_frame(frame.iloc[0:0], field="", reason="")

    def content(self, row: dict[str, Any]) -> Any:
        return {"name": row["title"]}

    def classify(self, response: httpx.Response) -> Verdict | None:
        body = json_body(response) or {}
        if response.status_code == 429 and body.get("code") == "DAILY_LIMIT":
            return Verdict(Action.QUOTA, "daily limit reached", resets_at=body.get("resets_at"))
        if response.status_code == 422:
            errors = body.get("errors") or []
            rows = {e["index"]: (e.get("field"), e["message"]) for e in errors if "index" in e}
            return Verdict(Action.REJECT, "; ".join(e["message"] for e in errors), rows=rows or None)
        return None

    def send(self, http: VendorHTTP, unit: Unit, checkpoint: Checkpoint) -> list[Result]:
        results = []
        for row in unit.rows:
            if row.vendor_id:  # known to the vendor: update in place
                http.request("PUT", f"/items/{row.vendor_id}", json={"name": row.data["title"]})
                results.append(Result(row.id, vendor_id=row.vendor_id))
        new = [i for i, row in enumerate(unit.rows) if not row.vendor_id]
        if new:
            body = {"items": [{"key": unit.rows[i].id, "name": unit.rows[i].data["title"]} for i in new]}
            try:
                ids = http.request("POST", "/items", json=body, idempotent=False).json()["ids"]
            except RejectedError as exc:  # the vendor's indexes are positions in *this* body
                exc.rows = {new[i]: v for i, v in exc.rows.items() if i < len(new)}
                raise
            results += [Result(unit.rows[i].id, vendor_id=vid) for i, vid in zip(new, ids)]
        return results

    def plan(self, unit: Unit) -> Plan:
        new = [r for r in unit.rows if not r.vendor_id]
        requests = [{"method": "PUT", "url": f"{self.base_url}/items/{r.vendor_id}", "json": {"name": r.data["title"]}}
                    for r in unit.rows if r.vendor_id]
        if new:
            requests.append({"method": "POST", "url": f"{self.base_url}/items",
                             "json": {"items": [{"key": r.id, "name": r.data["title"]} for r in new]}})
        return Plan("create" if new else "update", requests)

    def lookup(self, http: VendorHTTP, rows: list[Row]) -> dict[str, dict[str, Any]]:
        found = {}
        for row in rows:
            items = http.request("GET", "/items", params={"key": row.id}).json()["items"]
            if items:
                found[row.id] = {"vendor_id": items[0]["id"]}
        return found


SPEC = VendorSpec(
    name="toy", connector="tests.toyvendor:ToyConnector", default_url="http://toy.invalid",
    credential_keys=("api_key",), settings=ToySettings, required_columns=("id", "title"),
    unit=UnitRule("chunk", size_setting="batch"), idempotent=False,
)
ToyConnector.spec = SPEC


# -- the simulator -------------------------------------------------------------------------
def create_app(*, daily: int = 10_000, max_batch: int = 50) -> Starlette:
    """POST /items {"items": [{key, name}]} creates one item per entry (a new id every time:
    not idempotent); a name starting with "bad" -> 422 naming its index; a name "poison" -> 422
    naming nothing; more than ``daily`` items a day -> 429 {"code": "DAILY_LIMIT"}. PUT
    /items/{id}, GET /items?key=. Header X-Key. Control routes under /_sandbox/."""
    state: dict[str, Any] = {}

    def reset() -> None:
        state.update(items={}, next=1, used=0, faults=[], requests=0, by_route=Counter(), daily=daily)

    reset()

    def fault(route: str, when: str) -> dict[str, Any] | None:
        for f in state["faults"]:
            if f["count"] > 0 and f.get("route") in (None, route) and f.get("when", "before") == when:
                f["count"] -= 1
                return f
        return None

    def refuse(f: dict[str, Any]) -> JSONResponse:
        return JSONResponse({"error": "injected"}, status_code=f["status"])

    def admit(request: Request, route: str) -> JSONResponse | None:
        state["requests"] += 1
        state["by_route"][route] += 1
        if request.headers.get("x-key") != TOY_KEY:
            return JSONResponse({"error": "bad key"}, status_code=401)
        f = fault(route, "before")
        return refuse(f) if f else None

    async def create(request: Request) -> JSONResponse:
        if (refused := admit(request, "create")) is not None:
            return refused
        items = (await request.json())["items"]
        if len(items) > max_batch:
            return JSONResponse({"errors": [{"message": f"at most {max_batch} items"}]}, status_code=422)
        if state["used"] + len(items) > state["daily"]:
            return JSONResponse({"code": "DAILY_LIMIT", "resets_at": "2030-01-01T00:00:00+00:00"}, status_code=429)
        bad = [{"index": i, "field": "name", "message": f"name {it['name']!r} is not allowed"}
               for i, it in enumerate(items) if str(it["name"]).startswith("bad")]
        if bad:
            return JSONResponse({"errors": bad}, status_code=422)
        if any(it["name"] == "poison" for it in items):
            return JSONResponse({"errors": [{"message": "the batch could not be processed"}]}, status_code=422)
        ids = []
        for it in items:
            vid = f"T{state['next']}"
            state["next"] += 1
            state["items"][vid] = {"id": vid, "key": it["key"], "name": it["name"]}
            ids.append(vid)
        state["used"] += len(items)
        f = fault("create", "after")
        return refuse(f) if f else JSONResponse({"ids": ids})

    async def update(request: Request) -> JSONResponse:
        if (refused := admit(request, "update")) is not None:
            return refused
        item = state["items"].get(request.path_params["id"])
        if item is None:
            return JSONResponse({"error": "not found"}, status_code=404)
        item["name"] = (await request.json())["name"]
        return JSONResponse(item)

    async def find(request: Request) -> JSONResponse:
        if (refused := admit(request, "find")) is not None:
            return refused
        key = request.query_params.get("key")
        return JSONResponse({"items": [i for i in state["items"].values() if i["key"] == key]})

    async def records(_: Request) -> JSONResponse:
        return JSONResponse({"records": list(state["items"].values())})

    async def stats(_: Request) -> JSONResponse:
        return JSONResponse({"requests": state["requests"], "by_route": dict(state["by_route"]),
                             "used": state["used"]})

    async def do_reset(_: Request) -> JSONResponse:
        reset()
        return JSONResponse({})

    async def faults(request: Request) -> JSONResponse:
        state["faults"].append(await request.json())
        return JSONResponse({"faults": state["faults"]})

    async def limits(request: Request) -> JSONResponse:
        state["daily"] = (await request.json()).get("daily", state["daily"])
        return JSONResponse({"daily": state["daily"]})

    return Starlette(routes=[
        Route("/items", create, methods=["POST"]), Route("/items", find, methods=["GET"]),
        Route("/items/{id}", update, methods=["PUT"]),
        Route("/_sandbox/records", records), Route("/_sandbox/stats", stats),
        Route("/_sandbox/reset", do_reset, methods=["POST"]), Route("/_sandbox/faults", faults, methods=["POST"]),
        Route("/_sandbox/limits", limits, methods=["POST"]),
    ])
