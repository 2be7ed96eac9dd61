"""Kontent.ai Management API v2 asset simulator, written from the vendor's public docs only."""

import base64
import json
import math
import mimetypes
import os
import re
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

DEMO_ENVIRONMENT_ID = "8d20758c-d74c-4f59-ae04-ee928c0816b7"
#: The sandbox's API key; ASSETFERRY_SANDBOX_KEY_KONTENT replaces it (the test suite runs with
#: recognisable fake keys and scans every output for them).
DEMO_API_KEY = os.environ.get("ASSETFERRY_SANDBOX_KEY_KONTENT", "sandbox-management-key")
BASE_PATH = "/v2"  # clients use http://host:port/v2 like https://manage.kontent.ai/v2
ZERO_ID = "00000000-0000-0000-0000-000000000000"
ROUTES = ("upload", "create", "upsert", "get", "list", "delete",
          "languages", "folders", "modify_folders", "collections", "taxonomies", "modify_taxonomy")
MAX_FOLDERS = 1000  # folders per environment (Kontent's documented limit)
# Kontent refuses these characters in external ids used as references (data-ops, migration toolkit).
_EXTERNAL_ID_FORBIDDEN = re.compile(r"[/.;]")

# Documented codes: 105 (asset not found, doc example) and 10000 (rate limit, api-limitations page).
# The docs do not list the others; 5 ("invalid request") and 0 (generic) are our picks.
ERR_GENERIC = 0
ERR_INVALID = 5
ERR_ASSET_NOT_FOUND = 105
ERR_RATE_LIMIT = 10000
RATE_LIMIT_MESSAGE = "API rate limit exceeded. Please retry your request later."
INVALID_BODY_MESSAGE = "The provided request body is invalid. See 'validation_errors' for more information."

_MIME = mimetypes.MimeTypes()  # built-in table only, so results do not depend on /etc/mime.types
_UI_UNSAFE = re.compile(r"[/\\:*?\"<>|%#&{}$!'`~^+=\[\];@]")  # doc: replaced by "_", comma and () kept
_CODENAME = re.compile(r"^[a-z_][a-z0-9_]{0,59}$")
_CODENAME_MAX = 60  # Kontent codenames are at most 60 characters (inferred from the UI limit)


@dataclass
class EnvConfig:
    """One environment: its Management API key and the languages/collections/folders it defines.

    The first language is the default one (all-zero id; its codename may be renamed, e.g.
    ``["en-US", "de-DE"]``); the first collection also gets the all-zero id, as Kontent's built-in
    "default" collection does. Other ids are uuid5-derived (see `reference_id`). A folder entry
    is a path (``"brand/2024/spring"``: every level is a folder named after its segment); its
    external id is the whole path and its codename the path in codename form (``brand_2024_spring``;
    a one-level entry keeps its text). `taxonomies`: group codename -> term names (a term's
    codename is its name in codename form). `asset_elements`: the asset type's taxonomy elements,
    element codename -> taxonomy group codename. `expired_keys` answer 401 like an expired key.
    """

    api_key: str
    languages: list[str] = field(default_factory=lambda: ["default"])
    collections: list[str] = field(default_factory=lambda: ["default"])
    folders: list[str] = field(default_factory=list)
    expired_keys: list[str] = field(default_factory=list)
    taxonomies: dict[str, list[str]] = field(default_factory=dict)
    asset_elements: dict[str, str] = field(default_factory=dict)


def reference_id(kind: str, codename: str) -> str:
    """Deterministic id of a non-default language/collection/folder (kind) with this codename."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"sandbox:kontent:{kind}:{codename}"))


class KontentError(Exception):
    """An error answered with Kontent's body shape: request_id, error_code, message[, validation_errors]."""

    def __init__(
        self,
        status: int,
        error_code: int,
        message: str,
        validation_errors: list[str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.error_code, self.message = status, error_code, message
        self.validation_errors, self.headers = validation_errors, headers

    def response(self) -> JSONResponse:
        body: dict[str, Any] = {"request_id": str(uuid.uuid4()), "error_code": self.error_code, "message": self.message}
        if self.validation_errors:
            body["validation_errors"] = [{"message": m} for m in self.validation_errors]
        return JSONResponse(body, status_code=self.status, headers=self.headers)


def _invalid(*messages: str) -> KontentError:
    return KontentError(400, ERR_INVALID, INVALID_BODY_MESSAGE, list(messages))


def _bad_request(message: str) -> KontentError:
    return KontentError(400, ERR_INVALID, message, [message])


def _asset_not_found(identifier: str) -> KontentError:
    return KontentError(404, ERR_ASSET_NOT_FOUND, f"The requested asset '{identifier}' was not found.")


@dataclass(frozen=True)
class _Ref:
    id: str
    codename: str
    external_id: str | None = None
    name: str = ""
    parent: str | None = None  # folders and taxonomy terms: the parent's id (None: top level)


@dataclass
class _File:
    id: str
    file_name: str  # URL-decoded, then UI-sanitised
    content_type: str
    data: bytes
    width: int | None
    height: int | None
    asset_id: str | None = None  # one binary file may back only one asset


@dataclass
class _Asset:
    id: str
    seq: int  # insertion order, used by continuation tokens
    file_id: str
    codename: str
    title: str | None = None
    external_id: str | None = None
    descriptions: list[dict[str, Any]] = field(default_factory=list)
    elements: list[Any] = field(default_factory=list)
    folder_id: str = ZERO_ID
    collection_id: str | None = None
    last_modified: str = ""


def _refs(kind: str, codenames: list[str], *, first_is_zero: bool, external_ids: bool = False) -> list[_Ref]:
    return [
        _Ref(ZERO_ID if first_is_zero and i == 0 else reference_id(kind, c), c, c if external_ids else None, name=c)
        for i, c in enumerate(codenames)
    ]


def _folder_refs(paths: list[str]) -> list[_Ref]:
    """Every folder of the configured paths (parents first), ids uuid5 of the path."""
    out: dict[str, _Ref] = {}
    for path in paths:
        parts = [p for p in path.split("/") if p]
        for depth in range(1, len(parts) + 1):
            sub = "/".join(parts[:depth])
            if sub in out:
                continue
            parent = out["/".join(parts[: depth - 1])].id if depth > 1 else None
            codename = sub if depth == 1 and _CODENAME.match(sub) else _codename_base(sub)
            out[sub] = _Ref(reference_id("folder", sub), codename, sub, name=parts[depth - 1], parent=parent)
    return list(out.values())


@dataclass
class _Taxonomy:
    id: str
    codename: str
    name: str
    terms: list[_Ref]  # flattened; ``parent`` links the tree
    last_modified: str = ""


def _taxonomy(codename: str, names: list[str]) -> _Taxonomy:
    terms = [_Ref(reference_id(f"term:{codename}", _codename_base(n)), _codename_base(n), None, name=n)
             for n in names]
    return _Taxonomy(reference_id("taxonomy", codename), codename, codename, terms, _timestamp())


@dataclass
class _Env:
    id: str
    config: EnvConfig
    languages: list[_Ref]
    collections: list[_Ref]
    folders: list[_Ref]
    taxonomies: list[_Taxonomy] = field(default_factory=list)
    elements: list[tuple[_Ref, str]] = field(default_factory=list)  # asset type element, taxonomy id
    folders_modified: str = ""
    files: dict[str, _File] = field(default_factory=dict)
    assets: dict[str, _Asset] = field(default_factory=dict)
    next_seq: int = 1
    accepted_at: deque[float] = field(default_factory=deque)  # times of requests admitted by the limiter

    @classmethod
    def build(cls, env_id: str, config: EnvConfig) -> "_Env":
        taxonomies = [_taxonomy(c, names) for c, names in config.taxonomies.items()]
        by_codename = {t.codename: t.id for t in taxonomies}
        elements = [(_Ref(reference_id("asset_element", c), c, None, name=c), by_codename.get(g, ""))
                    for c, g in config.asset_elements.items()]
        return cls(
            env_id.lower(),
            config,
            _refs("language", config.languages, first_is_zero=True),
            _refs("collection", config.collections, first_is_zero=True),
            [_Ref(ZERO_ID, "root")] + _folder_refs(config.folders),
            taxonomies,
            elements,
            _timestamp(),
        )

    def find(self, identifier: str) -> _Asset | None:
        """Resolve `<uuid>`, `codename/<codename>` or `external-id/<external_id>` (already URL-decoded)."""
        kind, _, value = identifier.partition("/")
        if kind == "codename" and value:
            return next((a for a in self.assets.values() if a.codename == value), None)
        if kind == "external-id" and value:
            return next((a for a in self.assets.values() if a.external_id == value), None)
        return self.assets.get(identifier.lower())


def _resolve(refs: list[_Ref], ref: object, keys: tuple[str, ...] = ("id", "codename", "external_id")) -> str | None:
    """Id of the item a Kontent reference object ({"id"|"codename"|"external_id": ...}) points to."""
    if not isinstance(ref, dict):
        return None
    for key in keys:
        if key in ref:
            value = ref[key]
            if not isinstance(value, str):
                return None
            if key == "id":
                value = value.lower()
            return next((r.id for r in refs if getattr(r, key) == value), None)
    return None


def _image_size(data: bytes) -> tuple[int | None, int | None]:
    """(width, height) for PNG, GIF and JPEG bytes; (None, None) otherwise, as the doc says for non-images."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR":
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    if data[:6] in (b"GIF87a", b"GIF89a") and len(data) >= 10:
        return int.from_bytes(data[6:8], "little"), int.from_bytes(data[8:10], "little")
    i = 2 if data[:2] == b"\xff\xd8" else len(data)
    while i + 9 < len(data) and data[i] == 0xFF:
        marker = data[i + 1]
        if marker == 0xFF or marker == 0x01 or 0xD0 <= marker <= 0xD8:  # padding / standalone markers
            i += 1 if marker == 0xFF else 2
            continue
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # start-of-frame
            return int.from_bytes(data[i + 7 : i + 9], "big"), int.from_bytes(data[i + 5 : i + 7], "big")
        i += 2 + int.from_bytes(data[i + 2 : i + 4], "big")
    return None, None


def _content_type_matches(file_name: str, content_type: str) -> bool:
    """Doc: Content-type must match the file extension. Unknown extensions accept any type."""
    guessed, _ = _MIME.guess_type(file_name, strict=False)
    if guessed is None:
        return True
    media = content_type.split(";", 1)[0].strip().lower()
    ext = "." + file_name.rsplit(".", 1)[-1].lower()
    return media == guessed or ext in _MIME.guess_all_extensions(media, strict=False)


def _codename_base(text: str) -> str:
    """Lowercase, runs of non-alphanumerics -> "_", trimmed; a leading digit gets an "n" prefix."""
    name = re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_") or "asset"
    return ("n" + name if name[0].isdigit() else name)[:_CODENAME_MAX]


def _timestamp() -> str:
    """UTC ISO-8601 with 7 fractional digits and Z, like the doc's "2019-09-12T08:29:36.1645977Z"."""
    now = datetime.now(timezone.utc)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond:06d}0Z"


class _Simulator:
    """All mutable state. Handlers are async on the server's single event loop and never await
    between reading and changing state, so no lock is needed."""

    def __init__(
        self, environments: dict[str, EnvConfig], per_second: int, per_minute: int, clock: Callable[[], float]
    ) -> None:
        self.configs, self.initial_limits, self.clock = environments, (per_second, per_minute), clock
        self.reset()

    def reset(self) -> None:
        self.envs = {k.lower(): _Env.build(k, c) for k, c in self.configs.items()}
        self.per_second, self.per_minute = self.initial_limits
        self.faults: list[dict[str, Any]] = []
        self.stats: dict[str, Any] = {"requests": 0, "accepted": 0, "throttled": 0, "uploads": 0, "bytes_uploaded": 0}
        self.by_route = dict.fromkeys(ROUTES, 0)

    def snapshot(self) -> dict[str, Any]:
        assets = sum(len(e.assets) for e in self.envs.values())
        return {**self.stats, "assets": assets, "by_route": dict(self.by_route)}

    def admit(self, request: Request, environment_id: str, route: str) -> _Env:
        """Auth, then rate limit, then injected faults. Raises KontentError when refused."""
        self.stats["requests"] += 1
        self.by_route[route] += 1
        env = self._authenticate(request, environment_id)
        self._throttle(env)
        self._inject_fault(route, "before")
        self.stats["accepted"] += 1
        after = self._take_fault(route, "after")
        if after is not None:
            request.scope.setdefault("state", {})["after_fault"] = after
        return env

    def _authenticate(self, request: Request, environment_id: str) -> _Env:
        scheme, _, key = request.headers.get("authorization", "").partition(" ")
        key = key.strip()
        unauthorized = KontentError(
            401,
            ERR_GENERIC,
            "Missing or invalid API key. Provide a valid Management API key in the Authorization "
            "header using the Bearer scheme.",
        )
        if scheme.lower() != "bearer" or not key or " " in key:
            raise unauthorized
        env = self.envs.get(environment_id.lower())
        if env is not None and key == env.config.api_key:
            return env
        if env is not None and key in env.config.expired_keys:
            raise KontentError(401, ERR_GENERIC, "The provided API key has expired.")
        # A key valid for *some* environment is authenticated but not authorised for this one -> 403.
        # Unknown environments answer the same 403 (not 404) so environment ids cannot be probed,
        # which is how a permission check in front of the lookup behaves. Any other key -> 401.
        if any(key == e.config.api_key for e in self.envs.values()):
            message = f"The provided API key does not have permission to access environment '{environment_id}'."
            raise KontentError(403, ERR_GENERIC, message)
        raise unauthorized

    def _throttle(self, env: _Env) -> None:
        """Sliding windows per environment: <= per_second in any 1 s and <= per_minute in any 60 s.
        Only admitted requests count; 429 carries Retry-After = seconds until a slot frees (ceil, >= 1)."""
        now, hits = self.clock(), env.accepted_at
        while hits and hits[0] <= now - 60:
            hits.popleft()
        waits: list[float] = []
        recent = [t for t in hits if t > now - 1]
        if len(recent) >= self.per_second:
            waits.append(recent[len(recent) - self.per_second] + 1 - now)
        if len(hits) >= self.per_minute:
            waits.append(hits[len(hits) - self.per_minute] + 60 - now)
        if waits:
            self.stats["throttled"] += 1
            retry_after = str(max(1, math.ceil(max(waits))))
            raise KontentError(429, ERR_RATE_LIMIT, RATE_LIMIT_MESSAGE, headers={"Retry-After": retry_after})
        hits.append(now)

    def _take_fault(self, route: str, when: str) -> dict[str, Any] | None:
        for fault in self.faults:
            if fault["route"] in (None, route) and fault["count"] > 0 and fault.get("when", "before") == when:
                fault["count"] -= 1
                self.faults = [f for f in self.faults if f["count"] > 0]
                return fault
        return None

    def _inject_fault(self, route: str, when: str) -> None:
        fault = self._take_fault(route, when)
        if fault is not None:
            raise self.fault_error(fault)

    def fault_error(self, fault: dict[str, Any]) -> KontentError:
        status, retry_after = fault["status"], fault["retry_after"]
        headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
        if status == 429:
            self.stats["throttled"] += 1
            return KontentError(429, ERR_RATE_LIMIT, RATE_LIMIT_MESSAGE, headers=headers)
        return KontentError(status, ERR_GENERIC, f"Injected sandbox fault (HTTP {status}).", headers=headers)

    # ---- assets -------------------------------------------------------------------------

    def render(self, env: _Env, asset: _Asset, request: Request) -> dict[str, Any]:
        """The asset model of the doc; `url` points at this simulator's public CDN route."""
        f = env.files[asset.file_id]
        url = f"{request.base_url}assets-cdn/{env.id}/{f.id}/{quote(f.file_name, safe='')}"
        body: dict[str, Any] = {
            "id": asset.id,
            "file_name": f.file_name,
            "title": asset.title,
            "size": len(f.data),
            "type": f.content_type,
            "url": url,
            "image_width": f.width,
            "image_height": f.height,
            "file_reference": {"id": f.id, "type": "internal"},
            "descriptions": asset.descriptions,
            "elements": asset.elements,
            "folder": {"id": asset.folder_id},
            # Doc: an asset outside any collection shows {"reference": null}.
            "collection": {"reference": {"id": asset.collection_id} if asset.collection_id else None},
            "codename": asset.codename,
            "last_modified": asset.last_modified,
        }
        if asset.external_id is not None:  # doc: "the external_id property is not present" when unset
            body["external_id"] = asset.external_id
        return body

    def validate(self, env: _Env, body: dict[str, Any], current: _Asset | None) -> dict[str, Any]:
        """Normalise the fields present in an add/upsert body; all problems go in one 400.
        Unknown properties are ignored (the docs are silent; typical JSON binders ignore them)."""
        errors: list[str] = []
        out: dict[str, Any] = {}
        others = [a for a in env.assets.values() if current is None or a.id != current.id]
        if "title" in body:
            if body["title"] is not None and not isinstance(body["title"], str):
                errors.append("Property 'title' must be a string or null.")
            out["title"] = body["title"] or None  # empty title behaves like no title
        if "codename" in body:
            c = body["codename"]
            if not isinstance(c, str) or not _CODENAME.match(c):
                errors.append("Property 'codename' must match ^[a-z_][a-z0-9_]{0,59}$.")
            elif any(a.codename == c for a in others):
                errors.append(f"The codename '{c}' is already used by another asset.")
            out["codename"] = c
        if "external_id" in body:
            x = body["external_id"]
            if not isinstance(x, str) or not x:
                errors.append("Property 'external_id' must be a non-empty string.")
            elif _EXTERNAL_ID_FORBIDDEN.search(x):
                errors.append(_external_id_message(x))
            elif current is not None and current.external_id is not None and x != current.external_id:
                errors.append("The external_id of an existing asset cannot be changed.")
            elif any(a.external_id == x for a in others):
                # The real error code for a duplicate external id is not documented; 400 is our pick.
                errors.append(f"The external_id '{x}' is already used by another asset.")
            out["external_id"] = x
        if "file_reference" in body:
            errors += self._check_file(env, body["file_reference"], current, out)
        if "descriptions" in body:
            errors += self._check_descriptions(env, body["descriptions"], out)
        if "elements" in body:
            errors += self._check_elements(env, body["elements"], current, out)
        if "folder" in body:
            folder = body["folder"]
            out["folder_id"] = ZERO_ID if folder is None else _resolve(env.folders, folder)
            if out["folder_id"] is None:
                errors.append(f"The folder {json.dumps(folder)} does not exist.")
        if "collection" in body:
            errors += self._check_collection(env, body["collection"], current, out)
        if errors:
            raise _invalid(*errors)
        return out

    @staticmethod
    def _check_file(env: _Env, ref: object, current: _Asset | None, out: dict[str, Any]) -> list[str]:
        if not isinstance(ref, dict) or not isinstance(ref.get("id"), str):
            return ["Property 'file_reference' must be an object with a string 'id'."]
        if ref.get("type", "internal") != "internal":
            return ["Property 'file_reference.type' must be 'internal'."]
        f = env.files.get(ref["id"].lower())
        if f is None:
            return [f"The file reference '{ref['id']}' does not exist. Upload the binary file first."]
        if f.asset_id is not None and (current is None or f.asset_id != current.id):
            return [
                f"The file '{f.id}' is already used by asset '{f.asset_id}'. "
                "Each binary file can be referenced only by a single asset."
            ]
        out["file_id"] = f.id
        return []

    @staticmethod
    def _check_descriptions(env: _Env, items: object, out: dict[str, Any]) -> list[str]:
        if not isinstance(items, list):
            return ["Property 'descriptions' must be an array."]
        errors: list[str] = []
        seen: set[str] = set()
        result: list[dict[str, Any]] = []
        for item in items:
            if not isinstance(item, dict) or not isinstance(item.get("description", ""), str | None):
                errors.append("Each description must be an object with 'language' and a string 'description'.")
                continue
            lang = _resolve(env.languages, item.get("language"))
            if lang is None:
                errors.append(f"The language {json.dumps(item.get('language'))} does not exist in this environment.")
            elif lang in seen:
                errors.append(f"The language '{lang}' has more than one description.")
            else:
                seen.add(lang)
                result.append({"language": {"id": lang}, "description": item.get("description")})
        out["descriptions"] = result
        return errors

    @staticmethod
    def _check_elements(env: _Env, els: object, current: _Asset | None, out: dict[str, Any]) -> list[str]:
        """Elements refer to the asset type's taxonomy elements and their group's terms (by id,
        codename or external id); they are stored and answered by id. Elements not listed keep
        their value (as for language variants)."""
        well_formed = isinstance(els, list) and all(isinstance(e, dict) and "element" in e for e in els)
        if not well_formed:
            return ["Property 'elements' must be an array of objects with an 'element' reference."]
        assert isinstance(els, list)
        errors: list[str] = []
        stored = {e["element"]["id"]: e for e in (current.elements if current else [])}
        for item in els:
            element = _resolve([r for r, _ in env.elements], item["element"])
            if element is None:
                errors.append(f"The asset element {json.dumps(item['element'])} does not exist in the asset type.")
                continue
            group = next(g for r, g in env.elements if r.id == element)
            terms = next((t.terms for t in env.taxonomies if t.id == group), [])
            values = item.get("value")
            if not isinstance(values, list):
                errors.append(f"The value of asset element '{element}' must be an array of term references.")
                continue
            ids: list[str] = []
            for value in values:
                term = _resolve(terms, value)
                if term is None:
                    errors.append(f"The taxonomy term {json.dumps(value)} does not exist in the taxonomy group "
                                  f"of asset element '{element}'.")
                elif term not in ids:
                    ids.append(term)
            stored[element] = {"element": {"id": element}, "value": [{"id": t} for t in ids]}
        out["elements"] = list(stored.values())
        return errors

    @staticmethod
    def _check_collection(env: _Env, value: object, current: _Asset | None, out: dict[str, Any]) -> list[str]:
        """Doc: the collection can be modified but not set to null; on create null means no collection."""
        if value is not None and not (isinstance(value, dict) and "reference" in value):
            return ["Property 'collection' must be an object like {\"reference\": {\"id\": ...}}."]
        ref = None if value is None else value["reference"]
        if ref is None:
            out["collection_id"] = None
            return ["The collection cannot be set to null."] if current is not None else []
        out["collection_id"] = _resolve(env.collections, ref, ("id", "codename"))
        return [] if out["collection_id"] else [f"The collection {json.dumps(ref)} does not exist."]

    def unique_codename(self, env: _Env, text: str) -> str:
        base, n = _codename_base(text), 1
        taken = {a.codename for a in env.assets.values()}
        name = base
        while name in taken:
            n += 1
            name = f"{base[: _CODENAME_MAX - len(str(n)) - 1]}_{n}"
        return name

    def create(self, env: _Env, fields: dict[str, Any]) -> _Asset:
        """Store a new asset from validated fields; `file_id` must be present."""
        f = env.files[fields["file_id"]]
        asset = _Asset(id=str(uuid.uuid4()), seq=env.next_seq, file_id=f.id, codename="")
        env.next_seq += 1
        self.update(env, asset, fields)
        if not asset.codename:  # doc: generated from title, or file_name if the title is empty
            asset.codename = self.unique_codename(env, asset.title or f.file_name)
        env.assets[asset.id] = asset
        return asset

    @staticmethod
    def update(env: _Env, asset: _Asset, fields: dict[str, Any]) -> None:
        """Fields present replace stored ones; a new file_reference frees the old file."""
        if "file_id" in fields and fields["file_id"] != asset.file_id:
            if asset.file_id in env.files:
                env.files[asset.file_id].asset_id = None
            asset.file_id = fields["file_id"]
        env.files[asset.file_id].asset_id = asset.id
        for key, value in fields.items():
            if key != "file_id":
                setattr(asset, key, value)
        asset.last_modified = _timestamp()


async def _json_object(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.body())
    except ValueError:
        raise _bad_request("The request body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise _bad_request("The request body must be a JSON object.")
    return body


async def _read_upload(request: Request, max_file_bytes: int) -> bytes:
    """Content-Length is required and checked against the cap before any byte is read;
    the streamed byte count must then equal it."""
    declared = request.headers.get("content-length")
    if declared is None or not re.fullmatch(r"[0-9]+", declared):
        raise _bad_request("The Content-Length header is required (chunked uploads are not supported).")
    size = int(declared)
    if size > max_file_bytes:
        raise _bad_request(f"The file is too large: {size} bytes exceeds the maximum of {max_file_bytes} bytes.")
    chunks, received = [], 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > size:
            break
        chunks.append(chunk)
    if received != size:
        raise _bad_request(f"The body length does not match Content-Length ({size} bytes declared).")
    return b"".join(chunks)


def demo_job(root: str, demo_dir: Any, stack: Any) -> tuple[dict[str, Any], dict[str, str]]:
    """For ``assetferry demo kontent``: the job's source and destination against this simulator
    at ``root`` (the bundled manifest of 36 images into the folder brand/2024/spring, tags as
    terms of the ``tags`` taxonomy, the missing ones created), and the environment variables it reads."""
    job = {
        "source": {"url": str(demo_dir / "manifest.csv")},
        "destination": {"vendor": "kontent", "url": f"{root}{BASE_PATH}",
                        "credentials": {"api_key": "env:ASSETFERRY_DEMO_KEY"},
                        "settings": {"environment_id": DEMO_ENVIRONMENT_ID, "folder": "brand/2024/spring",
                                     "tags_element": "tags", "create_terms": True}},
    }
    return job, {"ASSETFERRY_DEMO_KEY": DEMO_API_KEY}


def create_app(
    *,
    environments: dict[str, EnvConfig] | None = None,
    per_second: int = 10,
    per_minute: int = 400,
    max_file_bytes: int = 100 * 1024 * 1024,
    page_size: int = 50,
    clock: Callable[[], float] = time.monotonic,
) -> FastAPI:
    """Build the simulator. Vendor routes live under /v2/projects/{environment_id}/; the public CDN
    under /assets-cdn/; sandbox control routes (no auth, no rate limit) under /_sandbox/."""
    if environments is None:
        environments = {DEMO_ENVIRONMENT_ID: EnvConfig(
            DEMO_API_KEY, ["default", "en-US", "es-ES", "de-DE"], folders=["images", "brand/2024/spring"],
            taxonomies={"tags": ["kettle", "mug", "press", "red", "green", "blue", "amber", "catalog"]},
            asset_elements={"tags": "tags"})}
    sim = _Simulator(environments, per_second, per_minute, clock)
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None, redirect_slashes=False)
    app.state.simulator = sim
    _install_error_handlers(app)

    @app.middleware("http")
    async def lost_reply(request: Request, call_next: Callable[..., Any]) -> Response:
        """A fault with ``when: "after"``: the vendor acted (stored), then the reply is lost."""
        response = await call_next(request)
        fault = request.scope.get("state", {}).get("after_fault")
        if fault is not None and response.status_code < 400:
            return sim.fault_error(fault).response()
        return response

    _add_vendor_routes(app, sim, max_file_bytes, page_size)
    _add_control_routes(app, sim)
    return app


def _install_error_handlers(app: FastAPI) -> None:
    """Every error uses the Kontent body; Kontent never answers 422, so validation errors become 400."""

    async def kontent_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, KontentError)
        return exc.response()

    async def http_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        messages = {
            404: "The requested resource was not found.",
            405: "The HTTP method is not allowed for this resource.",
        }
        # Starlette's Allow header is dropped: it lists only the first matching route's methods.
        message = messages.get(exc.status_code, str(exc.detail))
        return KontentError(exc.status_code, ERR_GENERIC, message).response()

    async def validation_error(_: Request, exc: Exception) -> Response:
        return _bad_request(f"The request is invalid: {exc}").response()

    async def server_error(_: Request, exc: Exception) -> Response:
        return KontentError(500, ERR_GENERIC, f"Internal sandbox error: {exc!r}").response()

    app.add_exception_handler(KontentError, kontent_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(Exception, server_error)


def _add_vendor_routes(app: FastAPI, sim: _Simulator, max_file_bytes: int, page_size: int) -> None:
    prefix = BASE_PATH + "/projects/{environment_id}"

    @app.post(prefix + "/files/{file_name:path}")
    async def upload_file(request: Request, environment_id: str, file_name: str) -> Response:
        """200 {"id", "type": "internal"}. The ASGI server already URL-decoded file_name (once);
        the stored name then gets the doc's UI sanitising (listed characters -> "_")."""
        env = sim.admit(request, environment_id, "upload")
        if not file_name:
            raise _bad_request("The file name is required.")
        content_type = request.headers.get("content-type")
        if not content_type:
            raise _bad_request("The Content-Type header is required.")
        if not _content_type_matches(file_name, content_type):
            raise _bad_request(f"The Content-Type '{content_type}' does not match the extension of '{file_name}'.")
        data = await _read_upload(request, max_file_bytes)
        width, height = _image_size(data)
        media = content_type.split(";", 1)[0].strip()
        stored = _File(str(uuid.uuid4()), _UI_UNSAFE.sub("_", file_name), media, data, width, height)
        env.files[stored.id] = stored
        sim.stats["uploads"] += 1
        sim.stats["bytes_uploaded"] += len(data)
        return JSONResponse({"id": stored.id, "type": "internal"})

    @app.post(prefix + "/assets")
    async def add_asset(request: Request, environment_id: str) -> Response:
        """201 + asset. file_reference is required; external_id must be unique."""
        env = sim.admit(request, environment_id, "create")
        body = await _json_object(request)
        if "file_reference" not in body:
            raise _invalid("Property 'file_reference' is required.")
        asset = sim.create(env, sim.validate(env, body, None))
        return JSONResponse(sim.render(env, asset, request), status_code=201)

    @app.get(prefix + "/assets")
    async def list_assets(request: Request, environment_id: str) -> Response:
        """Insertion order, page_size per page; next page via header x-continuation: <token>.
        next_page repeats this endpoint's URL (the doc's example); the last page has both null."""
        env = sim.admit(request, environment_id, "list")
        token = request.headers.get("x-continuation")
        after = _decode_token(token) if token else 0
        remaining = [a for a in env.assets.values() if a.seq > after]
        page, more = remaining[:page_size], len(remaining) > page_size
        pagination = {
            "continuation_token": _encode_token(page[-1].seq) if more else None,
            "next_page": str(request.url) if more else None,
        }
        return JSONResponse({"assets": [sim.render(env, a, request) for a in page], "pagination": pagination})

    @app.get(prefix + "/assets/{asset_identifier:path}")
    async def get_asset(request: Request, environment_id: str, asset_identifier: str) -> Response:
        env = sim.admit(request, environment_id, "get")
        asset = env.find(asset_identifier)
        if asset is None:
            raise _asset_not_found(_bare(asset_identifier))
        return JSONResponse(sim.render(env, asset, request))

    @app.put(prefix + "/assets/{asset_identifier:path}")
    async def upsert_asset(request: Request, environment_id: str, asset_identifier: str) -> Response:
        """Existing asset -> 200 update. Missing: only external-id/<x> creates (201, file_reference
        required); uuid and codename identifiers -> 404 (105). The doc lists only id and
        external-id for upsert; codename is accepted for updates too (sandbox leniency)."""
        env = sim.admit(request, environment_id, "upsert")
        body = await _json_object(request)
        asset = env.find(asset_identifier)
        if asset is not None:
            sim.update(env, asset, sim.validate(env, body, asset))
            return JSONResponse(sim.render(env, asset, request))
        kind, _, external_id = asset_identifier.partition("/")
        if kind != "external-id" or not external_id:
            raise _asset_not_found(_bare(asset_identifier))
        if _EXTERNAL_ID_FORBIDDEN.search(external_id):
            raise _invalid(_external_id_message(external_id))
        if body.get("external_id", external_id) != external_id:
            raise _invalid("Property 'external_id' must equal the external id in the URL.")
        if "file_reference" not in body:
            raise _invalid("Property 'file_reference' is required when creating an asset.")
        fields = sim.validate(env, {**body, "external_id": external_id}, None)
        return JSONResponse(sim.render(env, sim.create(env, fields), request), status_code=201)

    @app.delete(prefix + "/assets/{asset_identifier:path}")
    async def delete_asset(request: Request, environment_id: str, asset_identifier: str) -> Response:
        """204, no body. The binary file is released (it may back a new asset) and stays on the CDN."""
        env = sim.admit(request, environment_id, "delete")
        asset = env.find(asset_identifier)
        if asset is None:
            raise _asset_not_found(_bare(asset_identifier))
        del env.assets[asset.id]
        env.files[asset.file_id].asset_id = None
        return Response(status_code=204)

    @app.get(prefix + "/languages")
    async def list_languages(request: Request, environment_id: str) -> Response:
        """``{languages, pagination}`` (one page); the default language has the all-zero id."""
        env = sim.admit(request, environment_id, "languages")
        languages = [{"id": r.id, "name": r.name, "codename": r.codename, "is_active": True,
                      "is_default": r.id == ZERO_ID, "fallback_language": {"id": ZERO_ID}}
                     for r in env.languages]
        return JSONResponse({"languages": languages, "pagination": {"continuation_token": None, "next_page": None}})

    @app.get(prefix + "/folders")
    async def list_folders(request: Request, environment_id: str) -> Response:
        """``{folders, last_modified}``: the folder tree (the root folder is not listed)."""
        env = sim.admit(request, environment_id, "folders")
        return JSONResponse({"folders": _folder_tree(env.folders, None), "last_modified": env.folders_modified})

    @app.patch(prefix + "/folders")
    async def modify_folders(request: Request, environment_id: str) -> Response:
        """``addInto`` operations (``reference`` = the parent; none = top level); at most 1,000 folders."""
        env = sim.admit(request, environment_id, "modify_folders")
        try:
            ops = json.loads(await request.body())
        except ValueError:
            raise _bad_request("The request body is not valid JSON.") from None
        added = _apply_add_into("folder", ops, env.folders, "folders")
        if len(env.folders) - 1 + len(added) > MAX_FOLDERS:
            raise _invalid(f"An environment can have at most {MAX_FOLDERS} asset folders.")
        env.folders += added
        env.folders_modified = _timestamp()
        return JSONResponse({"folders": _folder_tree(env.folders, None), "last_modified": env.folders_modified})

    @app.get(prefix + "/collections")
    async def list_collections(request: Request, environment_id: str) -> Response:
        env = sim.admit(request, environment_id, "collections")
        return JSONResponse({"collections": [{"id": r.id, "name": r.name, "codename": r.codename}
                                             for r in env.collections]})

    @app.get(prefix + "/taxonomies")
    async def list_taxonomies(request: Request, environment_id: str) -> Response:
        env = sim.admit(request, environment_id, "taxonomies")
        return JSONResponse({"taxonomies": [_render_taxonomy(t) for t in env.taxonomies],
                             "pagination": {"continuation_token": None, "next_page": None}})

    @app.patch(prefix + "/taxonomies/{identifier:path}")
    async def modify_taxonomy(request: Request, environment_id: str, identifier: str) -> Response:
        """``addInto`` operations on one group (``reference`` = the parent term; none = top level)."""
        env = sim.admit(request, environment_id, "modify_taxonomy")
        kind, _, value = identifier.partition("/")
        group = next((t for t in env.taxonomies if (kind == "codename" and t.codename == value)
                      or t.id == identifier.lower()), None)
        if group is None:
            raise KontentError(404, ERR_GENERIC, f"The requested taxonomy group '{_bare(identifier)}' was not found.")
        try:
            ops = json.loads(await request.body())
        except ValueError:
            raise _bad_request("The request body is not valid JSON.") from None
        group.terms += _apply_add_into("taxonomy term", ops, group.terms, "terms")
        group.last_modified = _timestamp()
        return JSONResponse(_render_taxonomy(group))

    @app.get("/assets-cdn/{environment_id}/{file_id}/{file_name:path}")
    async def cdn_file(environment_id: str, file_id: str, file_name: str) -> Response:
        """Public CDN stand-in: no auth, no rate limit, not counted. The name must match the stored one."""
        env = sim.envs.get(environment_id.lower())
        stored = env.files.get(file_id.lower()) if env else None
        if stored is None or stored.file_name != file_name:
            raise StarletteHTTPException(404)
        return Response(stored.data, media_type=stored.content_type)


def _external_id_message(value: str) -> str:
    return (f"The external_id '{value}' is invalid: external ids cannot contain '/', '.' or ';'.")


def _folder_tree(refs: list[_Ref], parent: str | None) -> list[dict[str, Any]]:
    return [{"id": r.id, "name": r.name, "codename": r.codename, "external_id": r.external_id,
             "folders": _folder_tree(refs, r.id)} for r in refs if r.parent == parent and r.id != ZERO_ID]


def _term_tree(terms: list[_Ref], parent: str | None) -> list[dict[str, Any]]:
    out = []
    for t in terms:
        if t.parent == parent:
            item: dict[str, Any] = {"id": t.id, "name": t.name, "codename": t.codename,
                                    "terms": _term_tree(terms, t.id)}
            if t.external_id is not None:
                item["external_id"] = t.external_id
            out.append(item)
    return out


def _render_taxonomy(t: _Taxonomy) -> dict[str, Any]:
    return {"id": t.id, "name": t.name, "codename": t.codename, "last_modified": t.last_modified,
            "terms": _term_tree(t.terms, None)}


def _new_refs(kind: str, value: object, parent: str | None, taken: list[_Ref], sub: str) -> tuple[list[_Ref], list[str]]:
    """A PATCH ``addInto`` value (a folder or a term, with nested children) -> new refs, errors."""
    if not isinstance(value, dict) or not isinstance(value.get("name"), str) or not value["name"].strip():
        return [], [f"Each added {kind} needs a non-empty 'name'."]
    codename = value.get("codename") or _codename_base(value["name"])
    external_id = value.get("external_id")
    errors = []
    if not isinstance(codename, str) or not _CODENAME.match(codename):
        errors.append(f"The codename {json.dumps(codename)} is invalid.")
    if any(r.codename == codename for r in taken):
        errors.append(f"The codename '{codename}' is already used by another {kind}.")
    if external_id is not None and any(r.external_id == external_id for r in taken):
        errors.append(f"The external_id '{external_id}' is already used by another {kind}.")
    if errors:
        return [], errors
    ref = _Ref(str(uuid.uuid4()), codename, external_id, name=value["name"], parent=parent)
    out = [ref]
    for child in value.get(sub) or []:
        more, errs = _new_refs(kind, child, ref.id, taken + out, sub)
        out += more
        errors += errs
    return out, errors


def _apply_add_into(kind: str, ops: object, refs: list[_Ref], sub: str) -> list[_Ref]:
    """Kontent's PATCH operations for folders / taxonomy terms; only ``addInto`` is simulated.
    Raises a 400 listing every problem; nothing is changed then."""
    if not isinstance(ops, list) or not ops:
        raise _bad_request("The request body must be a non-empty array of operations.")
    added: list[_Ref] = []
    errors: list[str] = []
    for op in ops:
        if not isinstance(op, dict) or op.get("op") != "addInto":
            errors.append("Only the 'addInto' operation is supported by the sandbox.")
            continue
        parent = None
        if op.get("reference") is not None:
            parent = _resolve(refs + added, op["reference"])
            if parent is None:
                errors.append(f"The {kind} {json.dumps(op['reference'])} does not exist.")
                continue
        new, errs = _new_refs(kind, op.get("value"), parent, refs + added, sub)
        added += new
        errors += errs
    if errors:
        raise _invalid(*errors)
    return added


def _bare(identifier: str) -> str:
    """The identifier as quoted in 404 messages: the uuid, codename or external id without its prefix."""
    kind, _, value = identifier.partition("/")
    return value if kind in ("codename", "external-id") and value else identifier


def _encode_token(seq: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"after": seq}).encode()).decode()


def _decode_token(token: str) -> int:
    try:
        after = json.loads(base64.urlsafe_b64decode(token.encode()))["after"]
    except (ValueError, KeyError, TypeError):
        after = None
    if not isinstance(after, int) or isinstance(after, bool) or after < 0:
        raise _bad_request("The continuation token in the x-continuation header is invalid.")
    return after


def _add_control_routes(app: FastAPI, sim: _Simulator) -> None:
    """Sandbox-only routes (not part of the vendor API): no auth, no rate limit, not counted."""

    @app.get("/_sandbox/stats")
    async def stats() -> Response:
        return JSONResponse(sim.snapshot())

    @app.get("/_sandbox/records")
    async def records() -> Response:
        """Every stored asset: ids, title, descriptions and its file's name, size and md5."""
        import hashlib

        out = []
        for env in sim.envs.values():
            for asset in sorted(env.assets.values(), key=lambda a: a.seq):
                f = env.files[asset.file_id]
                out.append({"environment_id": env.id, "id": asset.id, "external_id": asset.external_id,
                            "title": asset.title, "descriptions": asset.descriptions,
                            "file_name": f.file_name, "size": len(f.data),
                            "md5": hashlib.md5(f.data).hexdigest()})
        return JSONResponse({"records": out})

    @app.post("/_sandbox/reset")
    async def reset() -> Response:
        sim.reset()
        return JSONResponse(sim.snapshot())

    @app.post("/_sandbox/faults")
    async def faults(request: Request) -> Response:
        """Body {"status": 4xx|5xx, "count": n>=1, "retry_after": int|null, "route": null|<route>,
        "when": "before"|"after"}: the next n matching admitted vendor requests answer that status
        (after auth). "before" (default): refused before anything is stored; "after": the request
        is fully processed and stored, then the status is answered (the reply was lost)."""
        body = await _json_object(request)
        status, count = body.get("status"), body.get("count", 1)
        retry_after, route = body.get("retry_after"), body.get("route")
        when = body.get("when", "before")
        if when not in ("before", "after"):
            raise _bad_request("'when' must be 'before' or 'after'.")
        if not (isinstance(status, int) and 400 <= status <= 599 and isinstance(count, int) and count >= 1):
            raise _bad_request("'status' must be an int 400-599 and 'count' an int >= 1.")
        retry_ok = retry_after is None or (isinstance(retry_after, int) and retry_after >= 0)
        if not retry_ok or route not in (None, *ROUTES):
            raise _bad_request(f"'retry_after' must be null or an int >= 0; 'route' null or one of {list(ROUTES)}.")
        sim.faults.append({"status": status, "count": count, "retry_after": retry_after, "route": route,
                           "when": when})
        return JSONResponse({"faults": sim.faults})

    @app.post("/_sandbox/limits")
    async def limits(request: Request) -> Response:
        body = await _json_object(request)
        values = {k: body.get(k, getattr(sim, k)) for k in ("per_second", "per_minute")}
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in values.values()):
            raise _bad_request("'per_second' and 'per_minute' must be ints >= 1.")
        sim.per_second, sim.per_minute = values["per_second"], values["per_minute"]
        return JSONResponse(values)
