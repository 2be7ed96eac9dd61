"""Kontent.ai Management API v2: binary upload, then upsert of the asset by external id.

Contract (vendor-docs/kontent-management-api-assets.txt and vendor-notes.md section 3):
- ``Authorization: Bearer <Management API key>``; 401/403 stop the run.
- ``POST /projects/{env}/files/{url-encoded file_name}`` with the raw bytes, ``Content-Type``
  matching the extension and ``Content-Length``; 100 MB cap (read as 100 MiB = 104,857,600
  bytes); answers a file reference ``{"id": ..., "type": "internal"}``. Each binary file can be
  referenced by one asset only.
- ``PUT /projects/{env}/assets/external-id/{id}`` upserts: creates (needs ``file_reference``) or
  updates. Idempotent, so a resumed run can resend safely.
- The environment's definitions, read once per run before the first binary is sent (the
  shapes the official JS management SDK parses): ``GET /languages`` ``{languages, pagination}``,
  ``GET /folders`` ``{folders, last_modified}`` (a tree), ``GET /collections`` ``{collections}``
  and, with ``tags_element``, ``GET /taxonomies`` ``{taxonomies, pagination}``. Folders are
  added with ``PATCH /folders`` (``addInto``; at most 1,000 per environment), terms with
  ``PATCH /taxonomies/{id}``.
- Errors: ``{"request_id", "error_code", "message", "validation_errors": [{"message"}]}``.
  409 Conflict (a concurrent modification) is retried like a 5xx.
- Limits: 10 requests/s and 400 requests/min per environment (shared by all keys) -> 429 with
  ``Retry-After``. The client-side limiter is sized from these, so a healthy run sees no 429;
  requests are also spaced 1/10 s apart, in case the vendor counts seconds as a token bucket.
- Listing: ``GET /projects/{env}/assets`` pages with the ``x-continuation`` header.

References are checked before any upload: a row whose language, folder, collection or tags do
not exist in the environment is rejected with the missing part named, and its binary is never
sent. Everything is then sent by id: the default language as
``00000000-0000-0000-0000-000000000000`` (its codename can be renamed, e.g. to ``en-US``; the
setting ``language: default`` always means the default language), other languages, folders,
collections and terms by the ids the environment listed.

External ids: Kontent refuses ``/``, ``.`` and ``;`` in external ids used as references (its
data-ops and migration tools say so); the asset docs say nothing about the upsert itself, and a
``/`` cannot travel in the ``external-id/{id}`` path segment anyway (servers decode ``%2F``).
So a record id containing ``/ . ; ~`` is sent as an escaped external id: each of those
characters becomes ``~`` + its two hex digits (``img/a.png`` -> ``img~2Fa~2Epng``; ``~`` is
escaped too, so two record ids never share an external id and the mapping is reversible, see
``external_id_for``). Ids without them are sent unchanged. The ledger keeps the external id used
(``extra.external_id``); an asset loaded earlier under another external id is updated by its
asset id.

Choices where the docs are silent (change them here):
- A row with no title sends no ``title`` key (an update keeps the old title; a new asset shows
  its file name).
- ``descriptions: merge`` (default): an update reads the asset first and rewrites only the
  row's language, so alt texts editors wrote in other languages survive a rerun; a row without
  a description leaves every description as it is. ``replace``: the manifest is the whole truth
  (a row without description clears them all).
- A metadata-only change sends no ``file_reference`` (the asset keeps its file). Only an error
  about the file reference (refused, unknown, required to create) uploads the file again, once;
  any other 4xx rejects the row.
- ``external_id`` is sent in the upsert body too (the doc lists it among the upsert fields).
- Folder values are paths of names or codenames (``brand/2024/spring``); a UUID is a folder id;
  a single segment may also be a folder's codename or external id anywhere in the tree. Missing
  folders are created when ``create_folders`` is true, else the row is rejected.
- Tags match a term of the taxonomy group by codename, by their codename form (lowercase
  letters, digits and ``_``, at most 60 characters, ``n`` before a leading digit) or by name
  (case-insensitive). Unknown terms are created when ``create_terms`` is true (name = the tag,
  codename = its codename form), else the row is rejected.
- ``check_environment: false`` (a key that may not read the environment's definitions): nothing
  is checked or created before sending, references go as written (the default language by id),
  and ``merge`` keeps other languages' descriptions only for rows in the default language.
- The definitions are read lazily, when the first row of a run is about to be sent (so a rerun
  where nothing changed sends nothing), and shared by every batch of the run in this process.
  ``assetferry validate --check-vendor`` reads them too (``preflight``).
- A file whose size the source cannot tell is rejected (Kontent needs ``Content-Length``).
- Drift (``assetferry verify``): the ledger keeps a digest of what a load set, as Kontent answered
  it (title, descriptions, folder, collection, elements, file: ``extra.remote``); the listing's
  digest differs when an editor changed one of them.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal
from urllib.parse import quote

import httpx
import numpy as np
import pandas as pd
from pydantic import Field

from assetferry.connectors.core.errors import ConfigError, RejectedError, TransientError
from assetferry.connectors.core.files import FileInfo
from assetferry.connectors.core.http import Action, HeaderAuth, VendorAuth, VendorHTTP, Verdict
from assetferry.connectors.core.records import RowProblems, rejects_frame
from assetferry.connectors.vendors.base import (
    BaseConnector,
    Checkpoint,
    Plan,
    RateSettings,
    Result,
    Row,
    Unit,
    VendorSpec,
    EMPTY_REJECT,
    text_checks,
)

_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
# Language codenames: letters, digits, '_' and '-' (e.g. "default", "en-US", "es_ES").
_LANGUAGE = r"[A-Za-z0-9][A-Za-z0-9_-]{0,59}"
MB = 1024 * 1024  # "100 MB" in Kontent's docs is read as 100 MiB
ZERO_ID = "00000000-0000-0000-0000-000000000000"  # the default language (and the root folder)
MAX_FOLDERS = 1000
_EXTERNAL_UNSAFE = re.compile(r"[/.;~]")
_FILE_REFERENCE = re.compile(r"file[ _]reference|binary file", re.IGNORECASE)


class KontentSettings(RateSettings):
    """``destination.settings`` for ``vendor: kontent``."""

    environment_id: str = Field(pattern=_UUID.pattern, description="the environment (project) id")
    language: str = Field(default="default", pattern=f"^{_LANGUAGE}$",
                          description="language codename for rows without a language (default = the default language)")
    languages: list[str] | None = Field(
        default=None, description="the environment's language codenames; other rows are rejected before sending"
    )
    folder: str | dict[str, str] | None = Field(default=None, description="folder path, codename or id for every asset")
    collection: str | dict[str, str] | None = Field(default=None, description="collection for every asset")
    tags_element: str | None = Field(default=None, description="asset taxonomy element codename that receives tags")
    tags_taxonomy: str | None = Field(default=None, description="its taxonomy group codename (default: tags_element)")
    create_folders: bool = Field(default=False, description="create missing folders of a path instead of rejecting")
    create_terms: bool = Field(default=False, description="create unknown taxonomy terms instead of rejecting")
    check_environment: bool = Field(
        default=True, description="read the environment's definitions before the first upload (false: for a key "
                                  "that may not read them; references are then sent as written)")
    descriptions: Literal["merge", "replace"] = Field(
        default="merge", description="merge: keep other languages' descriptions; replace: the manifest is the truth")
    requests_per_second: float | None = Field(default=10, gt=0)
    requests_per_minute: int | None = Field(default=400, ge=1)
    max_file_mb: float = Field(default=100, gt=0, le=100, description="MiB")


def external_id_for(record_id: str) -> str:
    """The external id for a record id: unchanged unless it holds ``/ . ; ~``, each of which
    becomes ``~`` + two hex digits (reversible, so collision-free)."""
    return _EXTERNAL_UNSAFE.sub(lambda m: f"~{ord(m.group()):02X}", record_id)


def term_codename(text: str) -> str:
    """A tag in codename form: lowercase letters, digits and ``_``, at most 60 characters."""
    name = re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_") or "term"
    return ("n" + name if name[0].isdigit() else name)[:60]


def _reference(value: Any) -> dict[str, str] | None:
    if not _present(value):
        return None
    if isinstance(value, dict):
        return value
    text = str(value).strip()
    return {"id": text} if _UUID.match(text) else {"codename": text}


def parse_error(response: httpx.Response) -> str:
    """``Kontent 400 (error_code 5): message; validation: ...`` from a Kontent error body."""
    try:
        body = response.json()
    except ValueError:
        return f"Kontent {response.status_code}: {response.text[:200]}"
    if not isinstance(body, dict):
        return f"Kontent {response.status_code}: {str(body)[:200]}"
    text = f"Kontent {response.status_code} (error_code {body.get('error_code')}): {body.get('message', '')}"
    details = [v.get("message", "") for v in body.get("validation_errors") or [] if isinstance(v, dict)]
    if details:
        text += "; " + "; ".join(details)
    if body.get("request_id"):
        text += f" (request_id {body['request_id']})"
    return text


class ContinuationPaginator:
    """Follows ``pagination.continuation_token`` via the ``x-continuation`` header; refuses a
    token it has already seen (a server bug would otherwise loop forever)."""

    def __init__(self) -> None:
        self.token: str | None = None
        self._seen: set[str] = set()
        self.done = False

    def advance(self, body: dict[str, Any]) -> None:
        token = (body.get("pagination") or {}).get("continuation_token")
        if not token:
            self.done = True
            return
        if token in self._seen:
            raise TransientError("Kontent returned a continuation token twice; stopping the listing")
        self._seen.add(token)
        self.token = token


class _Refused(Exception):
    def __init__(self, field: str, reason: str) -> None:
        super().__init__(reason)
        self.field, self.reason = field, reason


@dataclass
class Catalogue:
    """What the environment defines: languages, folders, collections, the tags' terms."""

    languages: dict[str, str]  # codename -> id
    folders: list[dict[str, Any]]  # flat: id, name, codename, external_id, parent
    collections: dict[str, str]  # codename -> id
    taxonomy_id: str | None = None
    terms: list[dict[str, Any]] = field(default_factory=list)  # flat: id, name, codename, external_id

    @staticmethod
    def flatten(tree: list[dict[str, Any]], key: str, parent: str | None = None) -> list[dict[str, Any]]:
        out = []
        for node in tree or []:
            out.append({"id": node.get("id"), "name": node.get("name"), "codename": node.get("codename"),
                        "external_id": node.get("external_id"), "parent": parent})
            out += Catalogue.flatten(node.get(key) or [], key, node.get("id"))
        return out


# One catalogue per run and environment in this process (batches run in threads of the flow).
_CATALOGUES: dict[tuple[str, str, str], Catalogue] = {}
_LOCK = threading.RLock()


class KontentConnector(BaseConnector):
    """Loads canonical asset rows into one Kontent.ai environment (see the module docstring)."""

    spec: ClassVar[VendorSpec]
    settings: KontentSettings

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.prefix = f"/projects/{self.settings.environment_id}"
        self.max_bytes = int(self.settings.max_file_mb * MB)
        self.catalogue: Catalogue | None = None  # set by preflight (validate) or on first send

    def destination_key(self) -> str:
        return self.settings.environment_id

    def auth(self) -> VendorAuth:
        return HeaderAuth({"Authorization": f"Bearer {self.secret('api_key')}"})

    def error_message(self, response: httpx.Response) -> str:
        return parse_error(response)

    def classify(self, response: httpx.Response) -> Verdict | None:
        if response.status_code == 409:  # a concurrent modification: try again
            return Verdict(Action.RETRY, message=parse_error(response))
        return None

    # -- the environment's definitions --------------------------------------------------------
    def preflight(self, http: VendorHTTP) -> None:
        """Read languages, folders, collections (and the tags' taxonomy group) once."""
        self.catalogue = self._read_catalogue(http)

    def _read_catalogue(self, http: VendorHTTP) -> Catalogue:
        languages: dict[str, str] = {}
        for lang in self._pages(http, "/languages", "languages"):
            languages[str(lang.get("codename"))] = str(lang.get("id"))
        folders = http.request("GET", f"{self.prefix}/folders").json()
        collections = http.request("GET", f"{self.prefix}/collections").json()
        cat = Catalogue(languages, Catalogue.flatten(folders.get("folders") or [], "folders"),
                        {str(c.get("codename")): str(c.get("id")) for c in collections.get("collections") or []})
        s = self.settings
        if s.tags_element:
            group_name = s.tags_taxonomy or s.tags_element
            group = next((t for t in self._pages(http, "/taxonomies", "taxonomies")
                          if group_name in (t.get("codename"), t.get("id"))), None)
            if group is None:
                raise ConfigError(f"kontent: settings.tags_taxonomy: taxonomy group '{group_name}' does not exist "
                                  "in the environment")
            cat.taxonomy_id = str(group["id"])
            cat.terms = Catalogue.flatten(group.get("terms") or [], "terms")
        return cat

    def _pages(self, http: VendorHTTP, path: str, key: str) -> Iterator[dict[str, Any]]:
        pager = ContinuationPaginator()
        while not pager.done:
            headers = {"x-continuation": pager.token} if pager.token else None
            body = http.request("GET", f"{self.prefix}{path}", headers=headers).json()
            yield from body.get(key) or []
            pager.advance(body)

    def _catalogue_for(self, http: VendorHTTP, run_id: str | None) -> Catalogue:
        """This run's catalogue: read on the first send of the run, then shared (under _LOCK)."""
        if self.catalogue is not None:
            return self.catalogue
        if run_id is None:
            self.catalogue = self._read_catalogue(http)
            return self.catalogue
        key = (self.base_url, self.settings.environment_id, str(run_id))
        with _LOCK:
            if key not in _CATALOGUES:
                while len(_CATALOGUES) >= 16:
                    _CATALOGUES.pop(next(iter(_CATALOGUES)))
                _CATALOGUES[key] = self._read_catalogue(http)
            self.catalogue = _CATALOGUES[key]
        return self.catalogue

    # -- resolving a row's references -------------------------------------------------------
    def _resolve(self, cat: Catalogue, data: dict[str, Any], http: VendorHTTP | None) -> dict[str, Any]:
        """The row's references as ids. ``http`` None = a preview: what would be created is shown
        as a placeholder. Raises _Refused (field, reason) for a reference that does not exist."""
        s = self.settings
        refs: dict[str, Any] = {}
        lang = str(data["_language"])
        if lang == "default":
            refs["language"] = {"id": ZERO_ID}
        elif lang in cat.languages:
            refs["language"] = {"id": cat.languages[lang]}
        else:
            raise _Refused("language", f"language '{lang}' does not exist in the environment (languages: "
                                       + ", ".join(sorted(cat.languages)) + ")")
        folder = data.get("folder") if _present(data.get("folder")) else s.folder
        if _present(folder):
            refs["folder"] = self._folder(cat, folder, http)
        coll = data.get("collection") if _present(data.get("collection")) else s.collection
        if _present(coll):
            refs["collection"] = self._collection(cat, coll)
        if s.tags_element:
            refs["terms"] = self._terms(cat, _tags(data.get("tags")), http)
        return refs

    @staticmethod
    def _collection(cat: Catalogue, value: Any) -> dict[str, str]:
        if isinstance(value, dict):
            return value
        text = str(value).strip()
        if _UUID.match(text) and text.lower() in {i.lower() for i in cat.collections.values()}:
            return {"id": text}
        if text in cat.collections:
            return {"id": cat.collections[text]}
        raise _Refused("collection", f"collection '{text}' does not exist in the environment (collections: "
                                     + ", ".join(sorted(cat.collections)) + ")")

    def _folder(self, cat: Catalogue, value: Any, http: VendorHTTP | None) -> dict[str, str]:
        if isinstance(value, dict):
            return value
        text = str(value).strip()
        if _UUID.match(text):
            if text.lower() == ZERO_ID or any(str(f["id"]).lower() == text.lower() for f in cat.folders):
                return {"id": text}
            raise _Refused("folder", f"folder id '{text}' does not exist in the environment")
        parts = [p.strip() for p in text.split("/") if p.strip()]
        if len(parts) == 1:  # a codename or external id anywhere in the tree
            hit = next((f for f in cat.folders if parts[0] in (f["codename"], f["external_id"])), None)
            if hit is not None:
                return {"id": str(hit["id"])}
        parent: str | None = None
        for depth, part in enumerate(parts):
            children = [f for f in cat.folders if f["parent"] == parent]
            hit = (next((f for f in children if part in (f["codename"], f["name"])), None)
                   or next((f for f in children if str(f["name"]).casefold() == part.casefold()), None))
            if hit is None:
                missing = "/".join(parts[: depth + 1])
                if not self.settings.create_folders:
                    under = f" under '{'/'.join(parts[:depth])}'" if depth else ""
                    raise _Refused("folder", f"folder '{text}': '{part}'{under} does not exist in the environment "
                                             f"(create_folders: true creates it)")
                if len(cat.folders) + len(parts) - depth > MAX_FOLDERS:
                    raise _Refused("folder", f"folder '{text}': the environment cannot hold more than "
                                             f"{MAX_FOLDERS} folders")
                if http is None:
                    return {"id": f"<created: {'/'.join(parts)}>"}
                return {"id": self._create_folders(http, cat, parent, parts[depth:], missing)}
            parent = str(hit["id"])
        return {"id": str(parent)}

    def _create_folders(self, http: VendorHTTP, cat: Catalogue, parent: str | None, names: list[str],
                        path: str) -> str:
        """PATCH /folders addInto the missing tail of a path; returns the deepest folder's id."""
        value: dict[str, Any] = {"name": names[-1], "folders": []}
        for name in reversed(names[:-1]):
            value = {"name": name, "folders": [value]}
        op: dict[str, Any] = {"op": "addInto", "value": value}
        if parent is not None:
            op["reference"] = {"id": parent}
        body = http.request("PATCH", f"{self.prefix}/folders", json=[op]).json()
        cat.folders = Catalogue.flatten(body.get("folders") or [], "folders")
        node, at = None, parent
        for name in names:
            node = next(f for f in cat.folders if f["parent"] == at and f["name"] == name)
            at = str(node["id"])
        return str(at)

    def _terms(self, cat: Catalogue, tags: list[str], http: VendorHTTP | None) -> list[dict[str, str]]:
        found: list[dict[str, str]] = []
        unknown: list[str] = []
        for tag in tags:
            term = self._term(cat, tag)
            if term is None:
                unknown.append(tag)
            elif {"id": term} not in found:
                found.append({"id": term})
        if not unknown:
            return found
        if not self.settings.create_terms:
            raise _Refused("tags", "unknown taxonomy terms: " + ", ".join(f"'{t}'" for t in unknown)
                           + f" (not in taxonomy group '{self.settings.tags_taxonomy or self.settings.tags_element}';"
                             " create_terms: true creates them)")
        if http is None:
            return found + [{"id": f"<created: {term_codename(t)}>"} for t in unknown]
        ops, seen = [], set()
        for tag in unknown:
            if term_codename(tag) not in seen:
                seen.add(term_codename(tag))
                ops.append({"op": "addInto", "value": {"name": tag, "codename": term_codename(tag), "terms": []}})
        group = http.request("PATCH", f"{self.prefix}/taxonomies/{cat.taxonomy_id}", json=ops).json()
        cat.terms = Catalogue.flatten(group.get("terms") or [], "terms")
        ordered: list[dict[str, str]] = []  # in the row's order of tags
        for tag in tags:
            term = self._term(cat, tag)
            if term is not None and {"id": term} not in ordered:
                ordered.append({"id": term})
        return ordered

    @staticmethod
    def _term(cat: Catalogue, tag: str) -> str | None:
        code = term_codename(tag)
        for term in cat.terms:
            if tag in (term["codename"], term["external_id"]) or term["codename"] == code:
                return str(term["id"])
        return next((str(t["id"]) for t in cat.terms if str(t["name"]).casefold() == tag.casefold()), None)

    # -- transform (vectorised) ---------------------------------------------------------------
    def prepare(self, frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Vendor checks and payload columns. Rejects: malformed or unknown language; with the
        environment read (``preflight``), every reference that does not exist there."""
        s = self.settings
        out = frame.copy()
        lang = out["language"].astype("string").fillna(s.language)
        out["_language"] = lang
        bad_format = ~lang.str.fullmatch(_LANGUAGE).fillna(False).astype(bool)
        allowed = set(s.languages) if s.languages else None
        unknown = ~lang.isin(allowed).astype(bool) if allowed else pd.Series(False, index=out.index)
        rejects = []
        if bad_format.any():
            rejects.append(rejects_frame(out[bad_format], field="language",
                                         reason="invalid language codename '" + lang[bad_format] + "'"))
        unknown &= ~bad_format
        if unknown.any():
            rejects.append(rejects_frame(
                out[unknown], field="language",
                reason="language '" + lang[unknown] + "' is not one of the environment's languages ("
                + ", ".join(sorted(allowed or [])) + ")"))
        text = RowProblems(out.index)  # lengths and characters (base.text_checks)
        text_checks(out, s, "Kontent.ai", text)
        wrong_text = text.bad & ~bad_format & ~unknown
        if wrong_text.any():
            rejects.append(rejects_frame(out[wrong_text], field=text.field[wrong_text], reason=text.reason[wrong_text]))
        good = out[~(bad_format | unknown | text.bad)].reset_index(drop=True)
        if self.catalogue is not None and len(good):
            fields, reasons = [], []
            for data in good.to_dict("records"):
                try:
                    self._resolve(self.catalogue, data, None)
                    fields.append(None)
                    reasons.append(None)
                except _Refused as exc:
                    fields.append(exc.field)
                    reasons.append(exc.reason)
            bad = pd.Series([r is not None for r in reasons], index=good.index)
            if bad.any():
                rejects.append(rejects_frame(good[bad], field=pd.Series(fields, index=good.index)[bad],
                                             reason=pd.Series(reasons, index=good.index)[bad]))
                good = good[~bad].reset_index(drop=True)
        rej = pd.concat(rejects, ignore_index=True) if rejects else rejects_frame(out.iloc[0:0], field="", reason="")
        return good, rej

    def check(self, row: dict[str, Any], info: FileInfo) -> tuple[str | None, str] | None:
        if info.size is None:
            return "file", "the file's size is unknown (the source does not tell it); Kontent needs Content-Length"
        if info.size > self.max_bytes:
            return "file", (f"file is {info.size / MB:.1f} MB; Kontent accepts at most "
                            f"{self.settings.max_file_mb:g} MB (MiB)")
        return self.empty_file(info, row)

    def content(self, row: dict[str, Any]) -> Any:
        """What defines "changed": the metadata as written in the manifest (not the ids it
        resolves to) and the file's name and type."""
        s = self.settings
        data = {"external_id": external_id_for(str(row["id"])), "title": _text(row.get("title")),
                "description": _text(row.get("description")), "language": row["_language"],
                "folder": _text(row.get("folder")) or s.folder, "collection": _text(row.get("collection")) or s.collection,
                "descriptions": s.descriptions, "file_name": row["file_name"], "content_type": row["content_type"]}
        if s.tags_element:
            data["tags"] = _tags(row.get("tags"))
        return data

    # -- vectorised twins of check / content / plan's action (``connectors.core.decide``) ----------
    def check_frame(self, frame: pd.DataFrame, size: pd.Series) -> tuple[pd.Series, pd.Series]:
        """``check`` over a frame: (field, reason) per row, NA where the row is fine."""
        reason = pd.Series(pd.NA, index=frame.index, dtype=object)
        unknown = size.isna().to_numpy(dtype=bool)
        reason[unknown] = "the file's size is unknown (the source does not tell it); Kontent needs Content-Length"
        big = (size > self.max_bytes).fillna(False).to_numpy(dtype=bool)
        if big.any():
            reason[big] = [f"file is {b / MB:.1f} MB; Kontent accepts at most {self.settings.max_file_mb:g} MB (MiB)"
                           for b in size[big].tolist()]
        reason[self.empty_files(size, frame["id"])] = EMPTY_REJECT  # rejected or counted, as ``empty_file``
        return pd.Series(np.where(reason.notna(), "file", None), index=frame.index, dtype=object), reason

    def content_frame(self, frame: pd.DataFrame) -> pd.DataFrame:
        """``content`` over a frame: one column per key, so the core renders each row's JSON in
        bulk exactly as ``json.dumps(content(row), sort_keys=True, ...)`` (a test compares them)."""
        s = self.settings
        ids = frame["id"].astype(str)
        unsafe = ids.str.contains(_EXTERNAL_UNSAFE.pattern, regex=True).to_numpy(dtype=bool)
        external = ids.to_numpy(dtype=object).copy()
        external[unsafe] = [external_id_for(v) for v in external[unsafe]]
        out = {"external_id": pd.Series(external, index=frame.index, dtype=object),
               "title": _text_column(frame.get("title"), frame.index),
               "description": _text_column(frame.get("description"), frame.index),
               "language": _raw_column(frame["_language"]),
               "folder": _text_column(frame.get("folder"), frame.index, s.folder),
               "collection": _text_column(frame.get("collection"), frame.index, s.collection),
               "descriptions": pd.Series(s.descriptions, index=frame.index, dtype=object),
               "file_name": _raw_column(frame["file_name"]), "content_type": _raw_column(frame["content_type"])}
        if s.tags_element:
            out["tags"] = (frame["tags"].map(_tags) if "tags" in frame.columns
                           else pd.Series([[] for _ in range(len(frame))], index=frame.index, dtype=object))
        return pd.DataFrame(out, index=frame.index)

    def plan_actions(self, frame: pd.DataFrame, priors: list[Any], file_hash: np.ndarray) -> list[str]:
        """The action ``plan`` names per row: ``upsert`` when this very file was uploaded before."""
        return ["upsert" if p is not None and p.file_ref and p.file_hash == h else "upload+upsert"
                for p, h in zip(priors, file_hash.tolist())]

    def _body(self, row: dict[str, Any], refs: dict[str, Any] | None) -> dict[str, Any]:
        """The upsert body without ``file_reference``. ``refs`` None (the environment not read:
        a dry run, or ``check_environment: false``): references as written in the manifest (the
        default language by id when the environment is never read)."""
        s = self.settings
        if refs is None:
            by_id = not s.check_environment and row["_language"] == "default"
            refs = {"language": {"id": ZERO_ID} if by_id else {"codename": row["_language"]}}
            folder = row.get("folder") if _present(row.get("folder")) else s.folder
            coll = row.get("collection") if _present(row.get("collection")) else s.collection
            if _present(folder):
                refs["folder"] = _reference(folder)
            if _present(coll):
                refs["collection"] = _reference(coll)
            if s.tags_element:
                refs["terms"] = [{"codename": t} for t in _tags(row.get("tags"))]
        body: dict[str, Any] = {"external_id": external_id_for(str(row["id"]))}
        if _present(row.get("title")):
            body["title"] = str(row["title"])
        desc = row.get("description")
        if _present(desc):
            body["descriptions"] = [{"language": refs["language"], "description": str(desc)}]
        elif s.descriptions == "replace":
            body["descriptions"] = []
        if refs.get("folder"):
            body["folder"] = refs["folder"]
        if refs.get("collection"):
            body["collection"] = {"reference": refs["collection"]}
        if s.tags_element:
            body["elements"] = [{"element": {"codename": s.tags_element}, "value": refs.get("terms") or []}]
        return body

    def _upload_request(self, row: dict[str, Any], size: int) -> dict[str, Any]:
        return {
            "method": "POST",
            "url": f"{self.prefix}/files/{quote(str(row['file_name']), safe='')}",
            "headers": {"Content-Type": str(row["content_type"]), "Content-Length": str(size)},
        }

    def _asset_url(self, row: Row) -> str:
        """By external id; by asset id for an asset loaded earlier under another external id."""
        ext = external_id_for(row.id)
        p = row.prior
        if ext != row.id and p and p.vendor_id and (p.extra or {}).get("external_id") != ext:
            return f"{self.prefix}/assets/{quote(p.vendor_id, safe='')}"
        return f"{self.prefix}/assets/external-id/{quote(ext, safe='')}"

    def _at_vendor(self, row: Row) -> bool:
        p = row.prior
        return bool(p and p.vendor_id and p.status in self.spec.done_statuses)

    def _same_file(self, row: Row) -> str | None:
        """A file reference uploaded earlier for this very file (same fingerprint), if any."""
        p = row.prior
        return p.file_ref if p and p.file_ref and p.file_hash == row.file_hash else None

    # -- plan / send ----------------------------------------------------------------------
    def plan(self, unit: Unit) -> Plan:
        """The requests ``send`` would send (auth header masked). Without the environment read,
        references show as written (the load sends the ids they resolve to)."""
        row = unit.rows[0]
        size = row.info.size if row.info else 0
        refs = None
        if self.catalogue is not None:
            try:
                refs = self._resolve(self.catalogue, row.data, None)
            except _Refused:
                pass  # prepare rejected it already
        body = self._body(row.data, refs)
        auth = {"Authorization": "Bearer ***"}
        requests: list[dict[str, Any]] = []
        merge = self._at_vendor(row) and "descriptions" in body and self.settings.descriptions == "merge"
        if merge:
            requests.append({"method": "GET", "url": self.base_url + self._asset_url(row), "headers": auth,
                             "note": "descriptions in other languages are kept"})
        reuse = self._same_file(row)
        if reuse is None:
            up = self._upload_request(row.data, size or 0)
            up["url"] = self.base_url + up["url"]
            up["headers"].update(auth)
            up["body"] = f"<{size} bytes streamed from {row.data['file']}>"
            requests.append(up)
        payload = dict(body)
        if reuse is None or not self._at_vendor(row):
            payload = {"file_reference": {"id": reuse or "<id returned by the upload>", "type": "internal"}, **body}
        requests.append({"method": "PUT", "url": self.base_url + self._asset_url(row),
                         "headers": {**auth, "Content-Type": "application/json"}, "json": payload})
        return Plan("upsert" if reuse else "upload+upsert", requests)

    def send(self, http: VendorHTTP, unit: Unit, checkpoint: Checkpoint) -> list[Result]:
        """Resolve the row's references (rejecting it before any upload if one does not exist),
        upload the binary unless the asset already has this very file, then upsert."""
        row = unit.rows[0]
        refs = None
        if self.settings.check_environment:
            cat = self._catalogue_for(http, unit.run_id)
            try:
                with _LOCK:  # creating folders/terms: one thread at a time
                    refs = self._resolve(cat, row.data, http)
            except _Refused as exc:
                return [Result(row.id, status="rejected", field=exc.field, reason=exc.reason)]
        body = self._body(row.data, refs)
        url = self._asset_url(row)
        at_vendor = self._at_vendor(row)
        if at_vendor and "descriptions" in body and self.settings.descriptions == "merge":
            existing = self._get(http, url)
            if existing is None:
                at_vendor = False  # deleted in the UI: create it again (with a file)
            else:
                ours = {str(d["language"].get("id", "")).lower() for d in body["descriptions"]}
                if "" not in ours:  # (a language by codename, check_environment: false: its id is
                    # unknown, so the row's description replaces them all; see the docstring)
                    kept = [d for d in existing.get("descriptions") or []
                            if str((d.get("language") or {}).get("id", "")).lower() not in ours
                            and d.get("description")]
                    body["descriptions"] = kept + body["descriptions"]
        size = (row.info.size if row.info else 0) or 0
        file_ref = self._same_file(row)
        sent, uploaded = 0, False
        if file_ref is None:
            file_ref = self._upload(http, row, checkpoint)
            sent, uploaded = size, True
        payload = (dict(body) if at_vendor and not uploaded
                   else {"file_reference": {"id": file_ref, "type": "internal"}, **body})
        try:
            response = http.request("PUT", url, json=payload)
        except RejectedError as exc:
            if uploaded or not _FILE_REFERENCE.search(f"{exc.reason} {exc.body}"):
                raise  # a validation error: uploading again cannot help
            # The remembered file is gone, or the asset was deleted and needs one to be created.
            file_ref = self._upload(http, row, checkpoint)
            sent = size
            payload = {"file_reference": {"id": file_ref, "type": "internal"}, **body}
            response = http.request("PUT", url, json=payload)
        ext = external_id_for(row.id)
        asset = response.json()
        extra = {"remote": remote_digest(asset), **({"external_id": ext} if ext != row.id else {})}
        return [Result(row.id, vendor_id=asset.get("id"), file_ref=file_ref, bytes_sent=sent, extra=extra)]

    def _get(self, http: VendorHTTP, url: str) -> dict[str, Any] | None:
        try:
            return dict(http.request("GET", url).json())
        except RejectedError as exc:
            if exc.status != 404:
                raise
            return None

    def _upload(self, http: VendorHTTP, row: Row, checkpoint: Checkpoint) -> str:
        req = self._upload_request(row.data, (row.info.size if row.info else 0) or 0)
        response = http.request("POST", req["url"], content=self.files.opener(row.data["file"]),
                                headers=req["headers"])
        file_ref = str(response.json()["id"])
        ext = external_id_for(row.id)
        checkpoint(row, "uploaded", {"file_ref": file_ref, **({"external_id": ext} if ext != row.id else {})})
        return file_ref

    # -- read back ----------------------------------------------------------------------
    def lookup(self, http: VendorHTTP, rows: list[Row]) -> dict[str, dict[str, Any]]:
        """The vendor's asset for each row that exists there (by external id)."""
        found: dict[str, dict[str, Any]] = {}
        for row in rows:
            asset = self._get(http, self._asset_url(row))
            if asset is not None:
                found[row.id] = {"vendor_id": asset.get("id"), "asset": asset}
        return found

    def record_key(self, record_id: str, entry: Any) -> str:
        """The external id a record was loaded under (``verify``)."""
        return str((getattr(entry, "extra", None) or {}).get("external_id") or external_id_for(record_id))

    def remote_records(self, http: VendorHTTP) -> Iterator[dict[str, Any]]:
        """Every asset, for ``verify``: its external id, id and the digest of what a load sets."""
        for asset in self._pages(http, "/assets", "assets"):
            yield {"key": asset.get("external_id"), "vendor_id": asset.get("id"), "digest": remote_digest(asset)}

    def find(self, ids: list[str]) -> dict[str, dict[str, Any]]:
        """The vendor's asset (as Kontent returns it) for each record id that exists there."""
        with self.session() as http:
            rows = [Row(id=i, data={"id": i}, index=n) for n, i in enumerate(ids)]
            return {k: v["asset"] for k, v in self.lookup(http, rows).items()}

    def iter_assets(self) -> Iterator[dict[str, Any]]:
        """Every asset in the environment, following ``x-continuation``."""
        with self.session() as http:
            yield from self._pages(http, "/assets", "assets")


SPEC = VendorSpec(
    name="kontent",
    connector="assetferry.connectors.vendors.kontent:KontentConnector",
    default_url="https://manage.kontent.ai/v2",
    credential_keys=("api_key",),
    settings=KontentSettings,
    required_columns=("id", "file"),
    idempotent=True,  # upsert by external id; a re-upload only leaves an unreferenced binary
    summary="binary upload, then upsert by external id",
)
KontentConnector.spec = SPEC


def remote_digest(asset: dict[str, Any]) -> str:
    """A digest of what a load sets on an asset, as Kontent shows it (title, descriptions,
    folder, collection, elements, file): a change made in the UI changes it."""
    view = {k: asset.get(k) for k in ("title", "folder", "collection", "elements")}
    view["file"] = (asset.get("file_reference") or {}).get("id")
    view["descriptions"] = sorted(
        ((str((d.get("language") or {}).get("id")), d.get("description")) for d in asset.get("descriptions") or []),
        key=str)
    text = json.dumps(view, sort_keys=True, default=str)
    return hashlib.blake2b(text.encode("utf-8"), digest_size=8).hexdigest()


def _text_column(values: pd.Series | None, index: pd.Index, default: Any = None) -> pd.Series:
    """``_text(v) or default`` per value (object Series: str or ``default``)."""
    if values is None:
        return pd.Series([default] * len(index), index=index, dtype=object)
    if pd.api.types.is_string_dtype(values.dtype) and values.dtype != object:
        text = values.astype(object)
        blank = ~values.str.strip().str.len().fillna(0).gt(0).to_numpy(dtype=bool)
    else:
        text = values.map(_text).astype(object)
        blank = text.isna().to_numpy(dtype=bool)
    out = text.to_numpy(dtype=object).copy()
    out[blank] = default
    return pd.Series(out, index=index, dtype=object)


def _raw_column(values: pd.Series) -> pd.Series:
    """Values as ``to_dict`` gives them to ``content``: a missing one is ``pd.NA``, which
    ``json.dumps(default=str)`` writes as ``"<NA>"``."""
    out = values.astype(object)
    if pd.api.types.is_string_dtype(values.dtype) and values.dtype != object and values.isna().any():
        return out.where(values.notna(), "<NA>")
    return out


def _present(value: Any) -> bool:
    if value is None or value is pd.NA:
        return False
    if isinstance(value, float) and pd.isna(value):
        return False
    return not (isinstance(value, str) and not value.strip())


def _text(value: Any) -> str | None:
    return str(value) if _present(value) else None


def _tags(value: Any) -> list[str]:
    if value is None or value is pd.NA or (isinstance(value, float) and pd.isna(value)):
        return []
    if isinstance(value, str):
        return [value] if value.strip() else []
    return [str(t) for t in list(value) if _present(t)]
