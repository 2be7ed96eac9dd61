"""The ``assetferry`` command: run, validate, demo, sandbox. Prefect is imported only by ``run``
(without ``--dry-run``) and ``demo``, so ``validate`` and ``--dry-run`` answer in seconds."""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from assetferry.connectors.core.errors import AssetferryError, ConfigError
from assetferry.connectors.core.redact import RedactingFilter, clean, mask_secrets

app = typer.Typer(no_args_is_help=True, help=__doc__)


class _SafeConsole(Console):
    """A rich Console on which no value can drive the terminal or show a secret: every string it
    renders (messages, table cells, titles, captions) has its control characters escaped
    (``\\x1b``) and URL passwords and signatures masked; JSON output is masked the same way (JSON
    already escapes control characters). Markup in *values* is the caller's to escape (``_cell``)."""

    def render_str(self, text: str, *args: Any, **kwargs: Any) -> Any:
        return super().render_str(clean(text), *args, **kwargs)

    def print_json(self, json: str | None = None, *args: Any, **kwargs: Any) -> None:
        super().print_json(mask_secrets(json) if json is not None else None, *args, **kwargs)


def _cell(value: Any) -> Any:
    """A table cell holding a value from the data: shown literally (no markup), cleaned."""
    from rich.text import Text

    return Text(clean("" if value is None else value, keep_newlines=False))


console = _SafeConsole()
err = _SafeConsole(stderr=True)

# Offline-friendly Prefect defaults (see shared/prefect-notes.md); a user's own settings win.
for _name, _value in {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "60",
    "PREFECT_LOGGING_EXTRA_LOGGERS": "assetferry",
    "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore",  # library logs outside a flow run stay local
}.items():
    os.environ.setdefault(_name, _value)


LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
PROGRESS_EVERY = 10.0  # seconds between progress lines outside a terminal


def _version(value: bool) -> None:
    if value:
        from assetferry import __version__

        print(f"assetferry {__version__}")
        raise typer.Exit(0)


def set_log_level(level: str) -> None:
    """What reaches the terminal: Prefect's console handler (its start-up lines, flow and task
    run INFO lines) and assetferry's own loggers (``assetferry.*``: retries, 429s, vendor notes)
    print at ``level`` and above. What the Prefect UI receives is unchanged: the API handler keeps
    INFO, and the assetferry loggers stay at INFO or lower so their lines still reach the run's
    log there. Set before Prefect is imported (Prefect reads its logging settings at import)."""
    os.environ["PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL"] = level
    os.environ["ASSETFERRY_LOG_LEVEL"] = level
    ours = logging.getLogger("assetferry")
    ours.setLevel(min(logging.getLevelName(level), logging.INFO))
    if not any(getattr(h, "_assetferry_console", False) for h in ours.handlers):
        # Outside a Prefect run (validate, --dry-run, verify) nobody else prints these lines.
        handler = _StderrHandler()
        handler._assetferry_console = True  # type: ignore[attr-defined]
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        handler.addFilter(_OutsideFlowRuns())
        handler.addFilter(RedactingFilter())
        ours.addHandler(handler)
    for handler in ours.handlers:
        if getattr(handler, "_assetferry_console", False):
            handler.setLevel(level)


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at the time of the record (tests swap it)."""

    def __init__(self) -> None:
        logging.Handler.__init__(self)

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr


class _OutsideFlowRuns(logging.Filter):
    """Once Prefect has set up logging, its console handler on the root logger prints assetferry's
    lines (they propagate to it): print here only before that (validate, --dry-run, verify)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not logging.getLogger().handlers


@app.callback()
def _options(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="print the version and exit"),
    verbose: int = typer.Option(0, "--verbose", "-v", count=True,
                                help="more output: -v adds Prefect's run lines and assetferry's INFO "
                                     "lines, -vv DEBUG"),
    log_level: Optional[str] = typer.Option(
        None, "--log-level", envvar="ASSETFERRY_LOG_LEVEL", case_sensitive=False,
        help="DEBUG | INFO | WARNING | ERROR: what Prefect and assetferry print on the terminal "
             "(default WARNING; the Prefect UI still gets INFO)"),
) -> None:
    level = (log_level or ("DEBUG" if verbose >= 2 else "INFO" if verbose == 1 else "WARNING")).upper()
    if level not in LEVELS:
        _fail(f"--log-level {log_level!r}: choose one of {', '.join(LEVELS)}")
    set_log_level(level)


def _fail(message: str, code: int = 2, output: str = "table") -> None:
    """One clear message and exit ``code``: on stderr, or as a JSON object on stdout for
    ``--output json`` (``{"error": ..., "exit_code": ...}``)."""
    if output == "json":
        print(mask_secrets(json.dumps({"error": message, "exit_code": code})))
    else:
        err.print(f"[bold red]error:[/] {_markup_escape(message)}", highlight=False)
    raise typer.Exit(code)


def _output_choice(value: str) -> str:
    if value not in ("table", "json"):
        _fail(f"invalid --output {value!r}: use table or json")
    return value


#: ``--output`` of every command, checked while the command line is parsed.
OUTPUT = typer.Option("table", help="table | json", callback=_output_choice)


def _markup_escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def _check_before_prefect(job: Any) -> None:
    """What a run would find out only after Prefect started, found in a second: the env:
    credential references resolve, the source's storage options resolve, and the manifest opens
    and its first chunk parses (a glob matching nothing, a missing file, a parse error). Raises
    ConfigError. ``secret:`` references need Prefect: the run resolves them."""
    from assetferry.connectors.core.credentials import resolve_credentials, resolve_options
    from assetferry.connectors.sources.manifest import ManifestSource

    from assetferry.connectors.pipeline import access_policy

    access_policy(job)  # e.g. a manifest in / with no allowed_roots: refused as validate refuses it
    refs = job.destination.credentials
    resolve_credentials({k: v for k, v in refs.items() if str(v).startswith("env:")})
    options = job.source.options
    if not any(isinstance(v, str) and v.startswith("secret:") for v in _leaves(options)):
        options = resolve_options(options)
        src = job.source
        source = ManifestSource(src.url, format=src.format, options=options, columns=src.columns,
                                encoding=src.encoding, delimiter=src.delimiter, on_bad_lines=src.on_bad_lines)
        for chunk in source.chunks(100):
            if len(chunk.frame.columns):  # a missing id/file column is one message, before Prefect
                from assetferry.connectors.core.records import check_columns
                from assetferry.connectors.vendors import vendor_spec

                check_columns(chunk, vendor_spec(job.destination.vendor).required_columns)
            break


def _leaves(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [leaf for v in value.values() for leaf in _leaves(v)]
    return [value]


def _summary_table(summary: dict[str, Any]) -> Table:
    table = Table(title=f"{summary['job']} -> {summary['vendor']}", show_header=True)
    for col in ("loaded", "unchanged", "rejected", "failed", "pending", "time"):
        table.add_column(col, justify="right")
    table.add_row(*(str(summary[k]) for k in ("loaded", "unchanged", "rejected", "failed", "pending")),
                  f"{summary['seconds']:.1f}s")
    notes = (summary.get("extra") or {}).get("notes") or {}  # what the vendor's prepare changed
    captions = [f"{what}: {n} rows" for what, n in notes.items()]
    captions += (summary.get("extra") or {}).get("warnings") or []
    if summary.get("stopped"):
        captions.append(f"stopped: {summary['stopped']}"
                        + (f" (resets {summary['resets_at']})" if summary.get("resets_at") else ""))
    finish = summary.get("finish") or {}  # what the vendor's finish step reported (scalars only)
    if finish:
        captions.append("finish: " + ", ".join(f"{k}={v}" for k, v in finish.items()
                                                if isinstance(v, str | int | float | bool)))
    if captions:
        table.caption = "; ".join(captions)
    return table


def _run_flow(job: Any, since: str | None, until: str | None, limit: int | None,
              full_refresh: bool = False, *, no_server: bool = False) -> dict[str, Any]:
    """Run the flow against the Prefect API ``flows/server.py`` picks: PREFECT_API_URL if set,
    else assetferry's local server (started on first use, reused after), else ephemeral mode
    (``no_server``, ASSETFERRY_PREFECT_SERVER=ephemeral). The Dask runner needs a server."""
    from assetferry.flows import server

    dask = job.runner != "threads"
    if dask:
        import importlib.util

        if importlib.util.find_spec("prefect_dask") is None or importlib.util.find_spec("distributed") is None:
            raise ConfigError(f"runner {job.runner} needs prefect-dask and distributed: "
                              "pip install 'assetferry[dask]'")
    choice = server.choose(no_server=no_server, need_server=dask, why=f"runner {job.runner} (Dask workers "
                                                                      "report to the Prefect API)")
    if dask:
        where = ("a local Dask cluster" if job.runner == "dask"
                 else "the Dask scheduler at " + job.runner.removeprefix("dask://"))
        err.print(_markup_escape(f"runner {job.runner}: batches run on {where}; its workers need a real "
                                 f"Prefect server. {choice.describe()}"), highlight=False, soft_wrap=True)
    elif choice.how == "started":
        err.print(_markup_escape(choice.describe()), highlight=False, soft_wrap=True)
    with server.using(choice):
        return _run_flow_here(job, since, until, limit, full_refresh)


def _run_flow_here(job: Any, since: str | None, until: str | None, limit: int | None,
                   full_refresh: bool = False) -> dict[str, Any]:
    from contextlib import nullcontext

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from assetferry.flows import sync

    title = f"{job.name} -> {job.destination.vendor}"
    # A terminal gets a live bar; a pipe or a CI log gets whole lines, at most one per
    # PROGRESS_EVERY seconds plus the last, so nothing is cut to the width of a missing terminal.
    live = err.is_terminal
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[detail]}"), TimeElapsedColumn(), console=err,
                        transient=False) if live else None
    with progress or nullcontext():
        bar = progress.add_task(title, total=None, detail="starting") if progress else None
        last, printed = [0.0], [""]

        def hook(s: Any) -> None:
            detail = (f"{s.loaded} loaded, {s.unchanged} unchanged, {s.rejected} rejected, "
                      f"{s.failed} failed")
            if progress is not None:
                progress.update(bar, total=s.total, completed=s.done, detail=detail)
                return
            import time

            now = time.monotonic()
            line = f"{title}: {s.done}/{s.total or '?'} rows ({detail})"
            complete = bool(s.total) and s.done >= s.total
            if line != printed[0] and s.done and (complete or now - last[0] >= PROGRESS_EVERY):
                last[0], printed[0] = now, line
                print(line, file=sys.stderr, flush=True)

        sync.PROGRESS_HOOKS.append(hook)
        quiet = _NoConfigTracebacks()
        handlers = {h for name in ("", "prefect", "prefect.flow_runs", "prefect.task_runs")
                    for h in logging.getLogger(name).handlers}
        for handler in handlers:
            handler.addFilter(quiet)
            handler.addFilter(redacting)
        try:
            with _no_default_heartbeats():
                return sync.sync_flow(job)(job, since=since, until=until, limit=limit, full_refresh=full_refresh)
        finally:
            sync.PROGRESS_HOOKS.remove(hook)
            for handler in handlers:
                handler.removeFilter(quiet)
                handler.removeFilter(redacting)


redacting = RedactingFilter()

_HEARTBEAT_SETTINGS = ("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", "PREFECT_RUNNER_HEARTBEAT_FREQUENCY")


def _no_default_heartbeats() -> Any:
    """A run started here sends no flow-run heartbeats unless the user asked for them.

    Prefect 3.8 sends one every 180 s by default from a thread that sleeps in 1 s steps and is
    joined when the run ends: 0 to 1 s (0.5 s on average) added to every command, about a fifth of
    a no-op run's cost (py-spy, issue 19). Heartbeats only matter to a server automation that
    marks silent runs as crashed, which the user sets up, together with
    ``PREFECT_FLOWS_HEARTBEAT_FREQUENCY``: when that is set (environment or profile) it is kept.
    Deployment runs (a worker starts them) are not affected."""
    from contextlib import nullcontext

    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from prefect.settings.profiles import load_current_profile

    try:
        in_profile = {s.name for s in load_current_profile().settings}
    except Exception:  # noqa: BLE001 - an unreadable profile: Prefect reports it itself
        in_profile = set()
    if any(name in os.environ or name in in_profile for name in _HEARTBEAT_SETTINGS):
        return nullcontext()
    return temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None})


class _NoConfigTracebacks(logging.Filter):
    """A configuration or auth error is a message for a human, not a traceback: Prefect's engine
    logs the flow's exception with its stack; keep the message, drop the stack."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, AssetferryError):
            record.exc_info = None
            record.exc_text = None
        return True


def _preview(job: Any, since: str | None, until: str | None, limit: int | None, *,
             use_ledger: bool, out: Path | None, sample: int, title: str = "dry run (nothing sent)",
             full_refresh: bool = False, output: str = "table", check_vendor: bool = False,
             every_request: bool = False) -> int:
    """validate / --dry-run: extract, transform and plan every request, sending nothing. The
    actions are the vendor's own (``upload+upsert``, ``create``, ``link``...), counted per row.
    ``check_vendor``: first read what the destination defines (the connector's ``preflight``,
    read-only requests) when the credentials resolve, so rows referring to what it lacks are
    rejected too; the output says whether that happened. ``every_request`` (the dry run): every
    request goes to a JSON-lines file, ``out`` or else ``plan.jsonl`` in the job's state folder
    (a temporary file when the state is remote), and the output says where."""
    from collections import Counter

    import pandas as pd

    from assetferry.connectors.core.decide import preview
    from assetferry.connectors.core.loader import Loader
    from assetferry.connectors.pipeline import Pipeline, make_connector

    connector = make_connector(job, credentials={})
    vendor_note = _vendor_check(job, connector, check_vendor)
    if vendor_note.startswith("checked"):
        from assetferry.connectors.core.errors import AuthError, TransientError

        checked = make_connector(job)
        try:
            with checked.session() as http:
                checked.preflight(http)
            connector = checked
        except TransientError as exc:  # validate answers in seconds: an unreachable vendor is a note
            vendor_note = f"not checked against the vendor: it did not answer ({exc})"
        except AuthError as exc:  # the plan is still useful; the note says why it is unchecked
            vendor_note = f"not checked against the vendor: the credentials were refused ({exc})"
    loader = Loader(connector)
    pipeline = Pipeline(job, connector, since=since, until=until, limit=limit)
    ledger = pipeline.ledger()
    priors = ledger.load() if use_ledger else {}
    if use_ledger and not full_refresh and since is None and until is None:
        mark = ledger.watermark()  # what an incremental run would skip
        pipeline.watermark = pd.Timestamp(mark) if mark else None
    counts: Counter[str] = Counter()
    rejects: list[dict[str, Any]] = []
    shown = 0
    if out is None and every_request:
        out = _default_plan_file(job, ledger)
    sink = out.open("w", encoding="utf-8") if out else None
    # Whole source chunks, not load batches (per-call pandas overhead on 50-row frames would
    # dominate), except for vendors whose requests group rows: their batches hold whole groups.
    grouped = connector.spec.unit.kind == "group"
    frames = pipeline.batches() if grouped else pipeline.prepared()
    stat_cache: dict[str, Any] = {}  # validate is a snapshot: each distinct file is stat'ed once
    try:
        for ready, found in frames:
            if len(found):
                rejects += found.to_dict("records")
            if not len(ready):
                continue
            wanted = priors.get_many(ready["id"].tolist()) if use_ledger else {}
            # Without a plan file, counts in bulk (the same decisions, the sample's requests exact);
            # None when the vendor cannot name its actions in bulk: every unit is planned below.
            quick = None if sink else preview(loader, ready, wanted, sample - shown if output == "table" else 0,
                                              stat_cache)
            if quick is not None:
                counts.update(quick.counts)
                rejects += quick.rejects
                for item in quick.samples:
                    console.print_json(json.dumps(item.to_dict(), default=str))
                    shown += 1
                continue
            for item in loader.plan(ready, wanted):
                counts[item.action] += len(item.ids)
                if item.action == "reject":
                    source, row = item.where[0] if item.where else (None, None)
                    rejects.append({"source": source, "row": row, "id": item.ids[0], "field": item.field,
                                    "reason": item.reason})
                data = item.to_dict()
                if sink:
                    sink.write(mask_secrets(json.dumps(data, default=str)) + "\n")
                if item.requests and shown < sample and output == "table":
                    console.print_json(json.dumps(data, default=str))
                    shown += 1
    finally:
        if sink:
            sink.close()
    actions = sorted(a for a in counts if a not in ("reject", "unchanged"))
    if output == "json":
        console.print_json(json.dumps({
            "job": job.name, "vendor": job.destination.vendor, "mode": title, "rows_read": pipeline.counts.read,
            "would": {a: counts[a] for a in actions}, "unchanged": counts["unchanged"], "rejected": len(rejects),
            "outside_window": pipeline.counts.outside_window, "watermark": str(pipeline.watermark or "") or None,
            "rejects": rejects[:100], "plan_file": str(out) if out else None, "warnings": pipeline.warnings,
            "notes": dict(getattr(connector, "notes", None) or {}),
            **({"destination_check": vendor_note} if vendor_note else {})}, default=str))
        return 1 if rejects else 0
    table = Table(title=f"{job.name} -> {job.destination.vendor}: {title}")
    columns = ["rows read", *(f"would {a}" for a in actions), "unchanged", "rejected", "outside window"]
    for col in columns:
        table.add_column(col, justify="right")
    table.add_row(str(pipeline.counts.read), *(str(counts[a]) for a in actions), str(counts["unchanged"]),
                  str(len(rejects)), str(pipeline.counts.outside_window))
    notes = getattr(connector, "notes", None)  # what the vendor's prepare changed (not rejected)
    if notes:
        table.caption = "; ".join(f"{what}: {n} rows" for what, n in notes.items())
    console.print(table)
    for warning in pipeline.warnings:  # e.g. a manifest without a single row: never a silent success
        console.print(f"warning: {_markup_escape(warning)}", highlight=False, soft_wrap=True)
    if vendor_note:
        console.print(f"destination: {vendor_note}")
    if rejects:
        rt = Table(title=f"rejected rows (first {min(20, len(rejects))} of {len(rejects)})")
        for col in ("source", "row", "id", "field", "reason"):
            rt.add_column(col)
        for r in rejects[:20]:
            rt.add_row(*(_cell(r.get(c, "")) for c in ("source", "row", "id", "field", "reason")))
        console.print(rt)
    if out:
        console.print(f"every request (JSON lines, {shown} shown above): {out}", soft_wrap=True)
    return 1 if rejects else 0


def _default_plan_file(job: Any, ledger: Any) -> Path:
    """Where a dry run writes its plan without ``--plan``: ``plan.jsonl`` in the job's local state
    folder, else a new temporary file."""
    if ledger.local:
        folder = Path(ledger.root)
        folder.mkdir(parents=True, exist_ok=True)
        return folder / "plan.jsonl"
    handle, name = tempfile.mkstemp(prefix=f"assetferry-plan-{job.name}-", suffix=".jsonl")
    os.close(handle)
    return Path(name)


@app.command()
def run(
    job_file: Path = typer.Argument(..., help="the job YAML"),
    since: Optional[str] = typer.Option(None, help="only records with updated_at >= this ISO time"),
    until: Optional[str] = typer.Option(None, help="only records with updated_at < this ISO time"),
    limit: Optional[int] = typer.Option(None, min=1, help="load at most N records"),
    dry_run: bool = typer.Option(False, "--dry-run",
                                 help="send nothing: print the counts and the first 3 requests, and write every "
                                      "request that would be sent to a JSON-lines file (--plan, default: plan.jsonl "
                                      "in the job's state folder); the output names the file"),
    plan: Optional[Path] = typer.Option(None, help="with --dry-run: write every request (JSON lines) here"),
    full_refresh: bool = typer.Option(False, "--full-refresh",
                                      help="consider every row, not only those updated since the last complete run"),
    reconcile: bool = typer.Option(False, "--reconcile",
                                   help="first read the vendor back and send again what is missing there "
                                        "(e.g. deleted in its UI; see `verify`)"),
    output: str = OUTPUT,
    runner: Optional[str] = typer.Option(
        None, "--runner", help="threads | dask | dask://host:port: where batches run (default: the job's "
                               "runner); Dask needs a Prefect server (the local one is started if needed)"),
    no_server: bool = typer.Option(
        False, "--no-server", help="use Prefect's ephemeral mode for this run instead of the local Prefect "
                                   "server (as ASSETFERRY_PREFECT_SERVER=ephemeral)"),
) -> None:
    """Load a job's records into its vendor. Exit 0 all loaded, 1 rows rejected/failed, 2 config error.

    Incremental: rows whose updated_at is older than the last complete run's newest are skipped
    (rows without updated_at are always considered); --full-refresh considers every row."""
    if plan is not None and not dry_run:
        _fail("--plan writes the plan of a dry run: add --dry-run (nothing was sent)")
    try:
        from assetferry.connectors.core.job import load_job

        job = load_job(job_file)
        if dry_run:
            raise typer.Exit(_preview(job, since, until, limit, use_ledger=True, out=plan, sample=3,
                                      full_refresh=full_refresh, output=output, check_vendor=True,
                                      every_request=True))
        from assetferry.connectors.core.records import parse_window

        parse_window(since, until)  # configuration problems are answered before Prefect starts
        if runner:
            job = _with_runner(job, runner)
        _check_before_prefect(job)
        if reconcile:
            from assetferry.connectors.core.ledger import Ledger
            from assetferry.connectors.core.verify import drift, mark_missing
            from assetferry.connectors.pipeline import make_connector, state_options, state_url

            connector = make_connector(job)
            ledger = Ledger(state_url(job, connector), state_options(job))
            index = ledger.load()
            missing = drift(connector, index).missing
            mark_missing(ledger, index, missing)
            err.print(f"reconcile: {len(missing)} records missing at the vendor are sent again by this run")
            full_refresh = full_refresh or bool(missing)  # an old row must not hide behind the watermark
        summary = _run_flow(job, since, until, limit, full_refresh, no_server=no_server)
    except AssetferryError as exc:
        _fail(str(exc), output=output)
    if output == "json":
        console.print_json(json.dumps(summary, default=str))
    else:
        console.print(_summary_table(summary))
        if summary.get("stopped"):
            console.print(f"stopped early: {summary['stopped']}; {summary['pending']} rows pending "
                          "(the next run continues)")
        if summary.get("rejects_file"):
            console.print(f"rejected/failed rows: {summary['rejects_file']}")
    raise typer.Exit(summary["exit_code"])


@app.command()
def verify(
    job_file: Path = typer.Argument(..., help="the job YAML"),
    reconcile: bool = typer.Option(False, "--reconcile",
                                   help="mark the missing records so that the next run sends them again"),
    output: str = OUTPUT,
) -> None:
    """Read the vendor back (reads only) and compare with the ledger: missing (deleted at the
    vendor), changed (edited there since the load), extra (at the vendor, not in the ledger).
    Exit 0 in sync, 1 on drift, 2 on a configuration or credential error."""
    try:
        from assetferry.connectors.core.job import load_job
        from assetferry.connectors.core.ledger import Ledger
        from assetferry.connectors.core.verify import drift, mark_missing
        from assetferry.connectors.pipeline import make_connector, state_options, state_url

        job = load_job(job_file)
        connector = make_connector(job)
        ledger = Ledger(state_url(job, connector), state_options(job))
        index = ledger.load()
        report = drift(connector, index)
        if reconcile:
            mark_missing(ledger, index, report.missing)
    except AssetferryError as exc:
        _fail(str(exc), output=output)
    if output == "json":
        console.print_json(json.dumps({"job": job.name, "vendor": job.destination.vendor, **report.to_dict(),
                                       "reconciled": len(report.missing) if reconcile else 0}))
    else:
        table = Table(title=f"{job.name} -> {job.destination.vendor}: verify")
        for col in ("loaded (ledger)", "in sync", "missing", "changed", "extra"):
            table.add_column(col, justify="right")
        table.add_row(*(str(v) for v in (report.loaded, report.in_sync, len(report.missing), len(report.changed),
                                          len(report.extra))))
        console.print(table)
        for what in ("missing", "changed", "extra"):
            ids = getattr(report, what)
            if ids:
                console.print(f"{what}: " + _markup_escape(", ".join(map(str, ids[:20])))  # ids are data
                              + (f" (+{len(ids) - 20} more)" if len(ids) > 20 else ""))
        if reconcile and report.missing:
            console.print(f"{len(report.missing)} missing records will be sent again by the next run")
    raise typer.Exit(0 if report.clean else 1)


def _vendor_check(job: Any, connector: Any, wanted: bool) -> str:
    """Whether ``_preview`` can read the destination (``preflight``): "" when the vendor has
    nothing to check, else a sentence for the output."""
    from assetferry.connectors.core.credentials import resolve_credentials
    from assetferry.connectors.vendors.base import BaseConnector

    if type(connector).preflight is BaseConnector.preflight:
        return ""
    if not wanted:
        return "not checked against the vendor (--no-check-vendor)"
    try:
        resolve_credentials(job.destination.credentials)
    except ConfigError as exc:
        return f"not checked against the vendor: credentials not available ({exc})"
    return "checked against the vendor (references it does not define are rejected)"


@app.command()
def validate(
    job_file: Path = typer.Argument(..., help="the job YAML"),
    since: Optional[str] = typer.Option(None),
    until: Optional[str] = typer.Option(None),
    limit: Optional[int] = typer.Option(None, min=1),
    sample: int = typer.Option(3, help="how many payloads to print"),
    output: str = OUTPUT,
    check_vendor: bool = typer.Option(True, "--check-vendor/--no-check-vendor",
                                      help="also read what the destination defines (read-only requests) "
                                           "when the credentials are available"),
) -> None:
    """Extract and transform only: counts, rejects and a sample of the payloads; rows the ledger
    already holds unchanged are counted as such. Exit 1 if any row is rejected."""
    try:
        from assetferry.connectors.core.job import load_job

        job = load_job(job_file)
        code = _preview(job, since, until, limit, use_ledger=True, out=None, sample=sample, title="validation",
                        full_refresh=True, output=output, check_vendor=check_vendor)
    except AssetferryError as exc:
        _fail(str(exc), output=output)
    raise typer.Exit(code)


@app.command()
def demo(
    vendor: str = typer.Argument("kontent", help="kontent | esploro | mediapocket | actionhub | wordbee"),
    output: str = OUTPUT,
) -> None:
    """Start a vendor's sandbox, load the bundled sample manifest through the real flow, print the summary."""
    from contextlib import ExitStack
    from importlib.resources import files

    from assetferry.sandbox.server import SIMULATORS, running

    if vendor not in SIMULATORS:
        _fail(f"no sandbox for {vendor!r} (available: {', '.join(sorted(SIMULATORS))})", output=output)
    module = sys.modules[SIMULATORS[vendor].__module__]
    demo_dir = Path(str(files("assetferry.sandbox") / "demo"))
    with ExitStack() as stack:
        state = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="assetferry-demo-")))
        root = stack.enter_context(running(SIMULATORS[vendor]()))
        # The simulator module knows its demo: the job's source and destination (credentials as
        # env: references to its sandbox-only keys), and the variables to set.
        fields, env = module.demo_job(root, demo_dir, stack)
        os.environ.update(env)
        from assetferry.connectors.core.job import parse_job

        try:
            job = parse_job({"name": f"demo-{vendor}", "state": str(state), **fields}, where="demo")
            # A rehearsal leaves nothing running: it uses a Prefect server already there (a
            # configured PREFECT_API_URL or assetferry's local one), else Prefect's ephemeral mode.
            from assetferry.flows import server

            ephemeral = server.configured_api_url() is None and server.status() is None
            (err if output == "json" else console).print(
                f"sandbox {vendor} at {root}; state in {state} (removed afterwards)"
                + ("; Prefect: ephemeral (`assetferry server start` keeps runs in a UI)" if ephemeral else ""),
                soft_wrap=True)
            summary = _run_flow(job, None, None, None, no_server=ephemeral)
        except AssetferryError as exc:
            _fail(str(exc), output=output)
    if output == "json":
        console.print_json(json.dumps(summary, default=str))
    else:
        console.print(_summary_table(summary))
    raise typer.Exit(summary["exit_code"])


@app.command()
def schema(
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="write the schema to this file"),
) -> None:
    """Print the job file's JSON Schema (destination typed per vendor), for editors: e.g. a
    first line ``# yaml-language-server: $schema=./job.schema.json`` in the job file."""
    from assetferry.connectors.core.schema import job_schema

    text = json.dumps(job_schema(), indent=2) + "\n"
    if out is None:
        sys.stdout.write(text)
    else:
        out.write_text(text, encoding="utf-8")
        err.print(f"wrote {out}", highlight=False, soft_wrap=True)


@app.command()
def sandbox(
    vendor: str = typer.Argument(..., help="kontent | esploro | mediapocket | actionhub | wordbee"),
    host: str = typer.Option("127.0.0.1"),
    port: int = typer.Option(8765),
) -> None:
    """Serve a vendor simulator for offline rehearsals."""
    from assetferry.sandbox.server import SIMULATORS, serve

    if vendor not in SIMULATORS:
        _fail(f"no simulator for {vendor!r} (available: {', '.join(sorted(SIMULATORS))})")
    serve(vendor, host=host, port=port)


def _windows(since: str, until: str, window: str) -> list[tuple[str, str]]:
    """[since, until) cut into consecutive windows of ``window`` (e.g. 7d, 12h, 30m)."""
    import re
    from datetime import timedelta

    from assetferry.connectors.core.records import parse_window

    start, end = parse_window(since, until)
    if start is None or end is None:
        raise ConfigError("backfill needs both --since and --until")
    m = re.fullmatch(r"(\d+)([dhm])", window.strip())
    if not m or int(m.group(1)) == 0:
        raise ConfigError(f"invalid --window {window!r}: use a number and d, h or m, e.g. 7d")
    unit = {"d": "days", "h": "hours", "m": "minutes"}[m.group(2)]
    step = timedelta(**{unit: int(m.group(1))})
    out, cursor = [], start
    while cursor < end:
        nxt = min(cursor + step, end)
        out.append((cursor.isoformat(), nxt.isoformat()))
        cursor = nxt
    return out


@app.command()
def backfill(
    job_file: Path = typer.Argument(..., help="the job YAML"),
    since: str = typer.Option(..., help="start of the first window (ISO time)"),
    until: str = typer.Option(..., help="end of the last window (ISO time, exclusive)"),
    window: str = typer.Option("7d", help="window length: 7d, 12h, 30m"),
    deployment: Optional[str] = typer.Option(None, help="run each window as a run of this deployment "
                                                        "(flow/deployment name) on the Prefect server"),
    output: str = OUTPUT,
) -> None:
    """Load [since, until) window by window, in order: locally (one summary per window), or as one
    deployment run per window on the server (followed to the end, with each run's UI link)."""
    try:
        from assetferry.connectors.core.job import load_job

        job = load_job(job_file)
        windows = _windows(since, until, window)
        results = (_backfill_deployment(deployment, job_file, windows) if deployment
                   else [_run_flow(job, a, b, None) for a, b in windows])
    except AssetferryError as exc:
        _fail(str(exc), output=output)
    code = max((r.get("exit_code", 1) for r in results), default=0)
    if output == "json":
        console.print_json(json.dumps(results, default=str))
    else:
        table = Table(title=f"{job.name} -> {job.destination.vendor}: backfill of {len(windows)} windows")
        for col in ("since", "until", "state", "loaded", "unchanged", "rejected", "failed", "pending"):
            table.add_column(col, justify="right")
        for r in results:
            table.add_row(str(r.get("since")), str(r.get("until")), str(r.get("state_name", "")),
                          *(str(r.get(k, "")) for k in ("loaded", "unchanged", "rejected", "failed", "pending")))
        console.print(table)
        for r in results:
            if r.get("url"):
                console.print(f"{r['since']} .. {r['until']}: {r['url']}")
    raise typer.Exit(code)


def _backfill_deployment(name: str, job_file: Path, windows: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """One deployment run per window, one after the other, each followed to its final state."""
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_UI_URL

    out = []
    for a, b in windows:
        run = run_deployment(name, parameters={"job_file": str(job_file), "since": a, "until": b},
                             timeout=None, tags=["backfill"])
        state = run.state
        result: dict[str, Any] = {"since": a, "until": b, "flow_run": run.name,
                                  "state_name": state.name if state else "?",
                                  "url": f"{PREFECT_UI_URL.value()}/runs/flow-run/{run.id}" if PREFECT_UI_URL.value() else None}
        try:
            data = state.result() if state and state.is_completed() else None
        except Exception:  # noqa: BLE001 - results may not be persisted on the server
            data = None
        if isinstance(data, dict):
            result.update({k: data.get(k) for k in ("loaded", "unchanged", "rejected", "failed", "pending",
                                                    "exit_code")})
        else:
            result["exit_code"] = 0 if state and state.is_completed() and state.name == "Completed" else 1
        err.print(f"{a} .. {b}: {result['state_name']} ({run.name})")
        out.append(result)
    return out


@app.command()
def status(
    job_file: Path = typer.Argument(..., help="the job YAML"),
    output: str = OUTPUT,
) -> None:
    """What the ledger says: records per status, the last run, rejected rows, and whether a run
    of this job is going on now. Sends nothing, starts no Prefect."""
    try:
        from assetferry.connectors.core.job import load_job
        from assetferry.connectors.pipeline import Pipeline, make_connector

        job = load_job(job_file)
        ledger = Pipeline(job, make_connector(job, credentials={})).ledger()
        info = _status(job, ledger, ledger.load())
    except AssetferryError as exc:
        _fail(str(exc), output=output)
    if output == "json":
        console.print_json(json.dumps(info, default=str))
        raise typer.Exit(0)
    table = Table(title=f"{job.name} -> {job.destination.vendor}: {info['state']}")
    table.add_column("what")
    table.add_column("value", justify="right")
    for status_name, n in sorted(info["statuses"].items()):
        table.add_row(f"records {status_name}", str(n))
    for key in ("records", "last_run", "last_write", "rejected_last_run", "rejects_file", "running"):
        table.add_row(key.replace("_", " "), str(info[key] if info[key] is not None else "-"))
    console.print(table)


def _status(job: Any, ledger: Any, index: Any) -> dict[str, Any]:
    """Ledger facts for ``status``; reads only (the lock is probed without being taken)."""
    import pyarrow.compute as pc

    table = index.table
    last_write = last_run = None
    if table.num_rows:
        newest = pc.max(table.column("at")).as_py()
        last_write = newest.isoformat() if newest else None
        latest = table.filter(pc.equal(table.column("at"), pc.max(table.column("at"))))
        last_run = latest.column("run").cast("string")[0].as_py()
    rejects_path = f"{ledger.root}/rejects.csv"
    rejected = None
    if ledger.fs.exists(rejects_path):
        import pandas as pd

        with ledger.fs.open(rejects_path, "rb") as f:
            rejected = len(pd.read_csv(f, usecols=["id"]))
    return {"job": job.name, "vendor": job.destination.vendor, "state": ledger.url,
            "records": len(index), "statuses": index.status_counts(), "last_write": last_write,
            "last_run": last_run, "rejected_last_run": rejected,
            "rejects_file": f"{ledger.url}/rejects.csv" if rejected else None, "running": _holder(ledger)}


def _holder(ledger: Any) -> str | None:
    """Who holds the job's run lock right now, if anyone (without taking it)."""
    import fcntl

    if ledger.local:
        path = f"{ledger.root}/lock"
        if not ledger.fs.exists(path):
            return None
        with open(path, encoding="utf-8") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return handle.read() or "a run"
            return None
    lease = f"{ledger.root}/lock.json"
    return ledger.fs.cat_file(lease).decode() if ledger.fs.exists(lease) else None


@app.command()
def serve(
    job_files: list[Path] = typer.Argument(..., help="one or more job YAMLs"),
    cron: str = typer.Option(..., help='cron schedule, e.g. "0 2 * * *"'),
    timezone: str = typer.Option("UTC", help="the schedule's timezone, e.g. Europe/Berlin"),
) -> None:
    """Run the jobs on a schedule from this process, without a work pool or worker (small setups;
    needs PREFECT_API_URL pointing at a Prefect server). One deployment per job, concurrency 1."""
    try:
        from assetferry.connectors.core.job import load_job

        jobs = [(load_job(path), path.resolve()) for path in job_files]
    except AssetferryError as exc:
        _fail(str(exc))
    from prefect import serve as prefect_serve
    from prefect.schedules import Cron

    from assetferry.flows.sync import sync_job

    deployments = [
        sync_job.to_deployment(
            name=f"{job.name}-to-{job.destination.vendor}", schedules=[Cron(cron, timezone=timezone)],
            parameters={"job_file": str(path)}, tags=[f"job:{job.name}", f"vendor:{job.destination.vendor}"],
            concurrency_limit=1, description=f"assetferry job {path}")
        for job, path in jobs
    ]
    prefect_serve(*deployments)


def _with_runner(job: Any, runner: str) -> Any:
    """The job with ``--runner`` in place of its own (validated like the job file's). Raises ConfigError."""
    from pydantic import ValidationError

    from assetferry.connectors.core.job import JobSpec

    try:
        return JobSpec.model_validate({**job.model_dump(), "runner": runner})
    except ValidationError:
        raise ConfigError(f"--runner {runner!r}: use threads, dask or dask://host:port") from None


server_app = typer.Typer(no_args_is_help=True, help="The local Prefect server assetferry starts on first use "
                                                    "(in $PREFECT_HOME; opt out: ASSETFERRY_PREFECT_SERVER=ephemeral).")
app.add_typer(server_app, name="server")


@server_app.command("status")
def server_status(output: str = OUTPUT) -> None:
    """Whether the local Prefect server runs, its UI/API URL, PID and log. Exit 0 running, 1 not."""
    from assetferry.flows import server

    info = server.status()
    data = server.describe_info(info)
    configured = server.configured_api_url()
    if configured:
        data["prefect_api_url"] = configured  # what runs use instead
    if output == "json":
        console.print_json(json.dumps(data))
    elif info:
        console.print(f"running: {info.ui} (API {info.url}), pid {info.pid}, home {info.home}, log {info.log}",
                      highlight=False, soft_wrap=True)
    else:
        console.print(f"not running (home {data['home']}); the next `assetferry run` starts it",
                      highlight=False, soft_wrap=True)
    if configured and output != "json":
        console.print(f"PREFECT_API_URL is set ({configured}): runs use that server, not this one",
                      highlight=False, soft_wrap=True)
    raise typer.Exit(0 if info else 1)


@server_app.command("start")
def server_start() -> None:
    """Start the local Prefect server now (or report the running one)."""
    from assetferry.flows import server

    try:
        info, started = server.ensure()
    except AssetferryError as exc:
        _fail(str(exc))
    console.print(f"{'started' if started else 'running'}: {info.ui} (pid {info.pid})", highlight=False,
                  soft_wrap=True)


@server_app.command("stop")
def server_stop() -> None:
    """Stop the local Prefect server (runs stay in the Prefect home's database)."""
    from assetferry.flows import server

    info = server.stop()
    console.print(f"stopped the server at {info.ui} (pid {info.pid})" if info else "no server was running",
                  highlight=False, soft_wrap=True)


def main() -> None:
    # Arrow allocates from the C library's malloc instead of its default mimalloc pool, which
    # keeps much of what it freed: `validate` of 1M rows peaked at 242-243 MB instead of 262-480 MB
    # at the same speed, a 1M-entry ledger load grew RSS by 166 instead of 192 MiB, a run's peak
    # fell by 4 MiB (bench/RESULTS.md). Read when pyarrow is imported, which nothing has done
    # yet; the user's own setting wins (child processes such as Dask workers inherit it).
    os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")
    try:
        app()
    except ConfigError as exc:  # pragma: no cover - commands turn these into exit 2 themselves
        err.print(f"error: {exc}")
        sys.exit(2)


if __name__ == "__main__":
    main()
