"""The job file: a YAML contract validated by pydantic, every error reported at once."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_serializer, field_validator

from assetferry.connectors.core.credentials import REFERENCE, literal_secrets
from assetferry.connectors.core.errors import ConfigError



class SourceSpec(BaseModel):
    """Where the asset records come from (a manifest now; SQL and listings later)."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(description="fsspec URL or local path of the manifest(s); globs allowed")
    format: Literal["csv", "json", "jsonl", "parquet"] | None = Field(
        default=None, description="default: from the file extension"
    )
    options: dict[str, Any] = Field(
        default_factory=dict, description="fsspec storage options (e.g. endpoint_url)"
    )
    columns: dict[str, str] = Field(
        default_factory=dict, description="rename source columns to canonical names"
    )
    encoding: str | None = Field(
        default=None, description="text encoding of CSV/JSON/JSONL manifests (utf-8, latin-1, cp1252...); "
                                  "default UTF-8, a byte order mark dropped")
    delimiter: str | None = Field(
        default=None, min_length=1, max_length=1, description="CSV field delimiter; default ','")
    on_bad_lines: Literal["reject", "fail"] = Field(
        default="reject", description="a manifest line that cannot be parsed (ragged CSV row, broken JSONL "
                                      "line, undecodable byte): reject that row and go on, or fail the run")
    allowed_roots: list[str] | None = Field(
        default=None,
        description="folders (local, relative = to the job file) and object-store prefixes "
                    "(s3://bucket/prefix/) asset files may be read from; default: the manifest's own "
                    "folder. A file elsewhere (symlinks resolved) is rejected, never read")
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="hosts (cdn.example.com, host:port, *.example.com, an IP or CIDR) or URL prefixes "
                    "(https://cdn.example.com/assets/) http(s) asset files may be fetched from; default: "
                    "none, no http(s) file is fetched. Names resolving to loopback, link-local or private "
                    "addresses are refused unless listed exactly")

    @field_serializer("url", "allowed_hosts", when_used="json")
    def _masked(self, value: Any) -> Any:
        # The job is a flow parameter: Prefect stores its JSON form (and shows it in the UI).
        # A presigned manifest URL's signature or a user:password@ never goes there.
        return _mask(value)

    @field_validator("options")
    @classmethod
    def _no_literal_secrets(cls, value: dict[str, Any]) -> dict[str, Any]:
        bad = literal_secrets(value)
        if bad:
            # Options are flow parameters (stored and shown by Prefect): keep secrets out of them.
            raise ValueError(f"{', '.join(bad)} must be a reference like env:NAME or secret:BLOCK_NAME, "
                             "not a literal value")
        return value


class DestinationSpec(BaseModel):
    """The vendor, its base URL and credential *references* (never the secret values)."""

    model_config = ConfigDict(extra="forbid")

    vendor: str = Field(pattern=r"^[a-z][a-z0-9_-]{0,39}$", description="a vendor of the registry")
    url: str | None = Field(default=None, description="base URL; default: the vendor's public one")
    credentials: dict[str, str] = Field(
        default_factory=dict, description="env:NAME or secret:BLOCK_NAME references"
    )
    settings: dict[str, Any] = Field(default_factory=dict, description="vendor-specific settings")

    @field_serializer("url", when_used="json")
    def _masked(self, value: Any) -> Any:
        return _mask(value)  # a token-like query parameter never reaches Prefect's database

    @field_validator("url")
    @classmethod
    def _no_password_in_url(cls, value: str | None) -> str | None:
        from urllib.parse import urlsplit

        try:
            parts = urlsplit(value) if value else None
            has_password = bool(parts and parts.password)
        except ValueError:
            raise ValueError("not a valid URL") from None
        if has_password:
            # The job is a flow parameter (stored and shown by Prefect): never a password in it.
            # Never echo the value either.
            raise ValueError("must not contain user:password@; give the vendor's credentials as "
                             "env:NAME or secret:BLOCK_NAME references under destination.credentials")
        return value

    @field_validator("credentials")
    @classmethod
    def _references_only(cls, value: dict[str, str]) -> dict[str, str]:
        bad = sorted(k for k, v in value.items() if not REFERENCE.match(str(v)))
        if bad:
            # Never echo the value: it may be a pasted secret.
            raise ValueError(
                f"credentials {', '.join(bad)} must be a reference like env:NAME or "
                "secret:BLOCK_NAME, not a literal value"
            )
        return value


class JobSpec(BaseModel):
    """One migration job. Shown as a form in the Prefect UI; contains no secret values."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
    source: SourceSpec
    destination: DestinationSpec
    batch_size: int | None = Field(
        default=None, ge=1, le=5000,
        description="rows per Prefect task run; default: the vendor's (50, or its request size for batch APIs)")
    concurrency: int = Field(default=2, ge=1, le=32, description="batches loaded at once")
    state: str = Field(default=".assetferry/", description="where the ledger and rejects live")
    retries: int = Field(default=2, ge=0, le=10, description="Prefect retries of a failed batch")
    retry_delay_seconds: float = Field(default=30.0, ge=0)
    lock_wait_seconds: float = Field(
        default=0.0, ge=0, description="how long a run waits for another run of this job to finish")
    runner: str = Field(
        default="threads", pattern=r"^(threads|dask(://[A-Za-z0-9._:\[\]-]+)?)$",
        description="where batches run: threads (this process), dask (a local Dask cluster of `concurrency` "
                    "workers) or dask://host:port (a Dask scheduler); Dask needs a Prefect server")
    shared_budget: bool | None = Field(
        default=None,
        description="share the vendor's rate budget across every process and machine through a Prefect "
                    "global concurrency limit (needs a Prefect server); default: on with the Dask runner")

    @field_validator("state")
    @classmethod
    def _not_a_system_path(cls, value: str) -> str:
        if value.startswith(("/", "file://")):
            _refuse_system_state(value)
        return value


def _mask(value: Any) -> Any:
    from assetferry.connectors.core.redact import mask_secrets

    if isinstance(value, str):
        return mask_secrets(value)
    if isinstance(value, list):
        return [mask_secrets(v) if isinstance(v, str) else v for v in value]
    return value


def _refuse_system_state(path: str) -> None:
    from assetferry.connectors.core.files import is_system_path

    if is_system_path(path):
        raise ValueError(f"state {path} is a system folder (/, /etc, /usr, /proc, ...): choose a folder "
                         "of your own")


def format_errors(exc: ValidationError, *, where: str, prefix: str = "") -> list[str]:
    """One line per pydantic error: ``<file>: <dotted.key>: <message>`` (values never echoed)."""
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        lines.append(f"{where}: {prefix}{key}: {msg}")
    return lines


def parse_job(data: Any, *, where: str = "<job>") -> JobSpec:
    """Validate a job mapping, including the vendor's own settings; raise one ConfigError listing
    every problem found."""
    from assetferry.connectors.vendors import vendor_spec  # local: the registry imports vendor modules

    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping at the top level")
    errors: list[str] = []
    job: JobSpec | None = None
    try:
        job = JobSpec.model_validate(data)
    except ValidationError as exc:
        errors += format_errors(exc, where=where)

    dest = data.get("destination") if isinstance(data.get("destination"), dict) else {}
    vendor = dest.get("vendor")
    if isinstance(vendor, str):
        try:
            spec = vendor_spec(vendor)
        except ConfigError as exc:
            errors.append(f"{where}: destination.vendor: {exc}")
        else:
            try:
                spec.settings.model_validate(dest.get("settings") or {})
            except ValidationError as exc:
                errors += format_errors(exc, where=where, prefix="destination.settings.")
            missing = sorted(set(spec.credential_keys) - set(dest.get("credentials") or {}))
            errors += [f"{where}: destination.credentials.{k}: required" for k in missing]
    if errors:
        raise ConfigError("invalid job file:\n  " + "\n  ".join(errors))
    assert job is not None
    return job


def load_job(path: str | Path) -> JobSpec:
    """Read and validate a YAML job file. Raises ConfigError naming the file and every bad key."""
    text_path = str(path)
    if "://" in text_path and not text_path.startswith("file://"):
        import fsspec  # a job file on S3 or HTTP (deployments); relative paths stay as written

        try:
            with fsspec.open(text_path, "rt", encoding="utf-8") as f:
                text = f.read()
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{text_path}: cannot read job file ({type(exc).__name__})") from None
        return parse_job(_yaml(text, text_path), where=text_path)
    p = Path(text_path.removeprefix("file://"))
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read job file ({exc.strerror})") from None
    except UnicodeDecodeError as exc:
        line = p.read_bytes()[:exc.start].count(b"\n") + 1
        raise ConfigError(f"{p}: the job file is not UTF-8 text (line {line}, byte {exc.start}: "
                          f"0x{exc.object[exc.start]:02x}); save it as UTF-8") from None
    job = parse_job(_yaml(text, str(p)), where=str(p))
    return relative_to(job, p.resolve().parent)


#: A job file is a few dozen nodes; anchors and aliases may repeat parts of it, but a document
#: whose aliases expand past this many nodes (a "billion laughs" bomb) is refused unbuilt.
MAX_YAML_NODES = 100_000


def _yaml(text: str, where: str) -> Any:
    """Parse a job file: safe types only, a duplicated key refused (YAML would keep the last one
    silently), aliases expanding past ``MAX_YAML_NODES`` refused before anything is built."""
    try:
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            if node is None:
                return None
            _check_nodes(node, where)
            return loader.construct_document(node)
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ConfigError(f"{where}: not valid YAML{at}") from None
    except RecursionError:
        raise ConfigError(f"{where}: not a job file: the YAML is nested too deeply") from None


def _check_nodes(root: yaml.Node, where: str) -> None:
    """Raise ConfigError for a duplicated mapping key or an alias expansion past MAX_YAML_NODES.
    Each distinct node is visited once (memoised), so a bomb costs its size on disk, not its
    expansion."""
    sizes: dict[int, int] = {}

    def size(node: yaml.Node) -> int:
        known = sizes.get(id(node))
        if known is not None:
            return known
        sizes[id(node)] = 1  # a recursive alias counts once
        total = 1
        if isinstance(node, yaml.MappingNode):
            seen: dict[str, int] = {}
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode):
                    if key.value in seen and key.value != "<<":
                        raise ConfigError(f"{where}: key {key.value!r} appears twice (lines {seen[key.value]} and "
                                          f"{key.start_mark.line + 1}); YAML would keep only the last one")
                    seen[key.value] = key.start_mark.line + 1
                total += size(key) + size(value)
        elif isinstance(node, yaml.SequenceNode):
            total += sum(size(child) for child in node.value)
        if total > MAX_YAML_NODES:
            raise ConfigError(f"{where}: not a job file: its YAML aliases expand to more than {MAX_YAML_NODES:,} "
                              "values (an alias bomb?)")
        sizes[id(node)] = total
        return total

    size(root)


def _is_local(url: str) -> bool:
    return "://" not in url and not url.startswith("/")


def relative_to(job: JobSpec, base: Path) -> JobSpec:
    """Resolve relative local paths (manifest, state) against the job file's folder, so a run
    does the same thing whatever the current directory is."""
    updates: dict[str, Any] = {}
    if _is_local(job.source.url):
        updates["source"] = job.source.model_copy(update={"url": str(base / job.source.url)})
    if job.source.allowed_roots:
        roots = [str(base / r) if _is_local(r) else r for r in job.source.allowed_roots]
        source = updates.get("source", job.source)
        updates["source"] = source.model_copy(update={"allowed_roots": roots})
    if _is_local(job.state):
        updates["state"] = str(base / job.state)
        try:
            _refuse_system_state(updates["state"])
        except ValueError as exc:
            raise ConfigError(f"invalid job file:\n  {base}: state: {exc}") from None
    return job.model_copy(update=updates)
