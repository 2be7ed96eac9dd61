"""The ``assetferry`` command: run, validate, demo, sandbox. Prefect is imported only by ``run``
(without ``--dry-run``) and ``demo``, so ``validate`` and ``--dry-run`` answer in seconds."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from connectors.core.errors import AssetferryError, ConfigError

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
console = Console()
err = Console(stderr=True)

# Offline-friendly Prefect defaults (see shared/prefect-notes.md); a user's own settings win.
for _name, _value in {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "60",
    "PREFECT_LOGGING_EXTRA_LOGGERS": "assetferry",
}.items():
    os.environ.setdefault(_name, _value)


def _fail(message: str, code: int = 2) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


def _summary_table(summary: dict[str, Any]) -> Table:
    table = Table(title=f"{summary['job']} -> {summary['vendor']}", show_header=True)
    for col in ("loaded", "unchanged", "rejected", "failed", "pending", "time"):
        table.add_column(col, justify="right")
    table.add_row(*(str(summary[k]) for k in ("loaded", "unchanged", "rejected", "failed", "pending")),
                  f"{summary['seconds']:.1f}s")
    return table


def _run_flow(job: Any, since: str | None, until: str | None, limit: int | None) -> dict[str, Any]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from flows import sync

    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[detail]}"), TimeElapsedColumn(), console=err,
                  transient=False) as progress:
        bar = progress.add_task(f"{job.name} -> {job.destination.vendor}", total=None, detail="starting")

        def hook(s: Any) -> None:
            progress.update(bar, total=s.total, completed=s.done,
                            detail=f"{s.loaded} loaded, {s.unchanged} unchanged, {s.rejected} rejected, "
                                   f"{s.failed} failed")

        sync.PROGRESS_HOOKS.append(hook)
        try:
            return sync.sync_assets(job, since=since, until=until, limit=limit)
        finally:
            sync.PROGRESS_HOOKS.remove(hook)


def _preview(job: Any, since: str | None, until: str | None, limit: int | None, *,
             use_ledger: bool, out: Path | None, sample: int) -> int:
    """validate / --dry-run: extract, transform and plan every request, sending nothing."""
    from connectors.pipeline import Pipeline, make_connector

    connector = make_connector(job, credentials={})
    pipeline = Pipeline(job, connector, since=since, until=until, limit=limit)
    priors = pipeline.ledger().load() if use_ledger else {}
    counts = {"upload": 0, "upsert": 0, "unchanged": 0, "reject": 0}
    rejects: list[dict[str, Any]] = []
    shown = 0
    sink = out.open("w", encoding="utf-8") if out else None
    try:
        # Whole source chunks, not load batches: the plan is per row, and per-call pandas
        # overhead on 50-row frames would dominate.
        for ready, found in pipeline.prepared():
            if len(found):
                rejects += found.to_dict("records")
            if not len(ready):
                continue
            for item in connector.plan(ready, priors):
                counts[item["action"]] += 1
                if item["action"] == "reject":
                    rejects.append({k: item.get(k) for k in ("source", "row", "id", "field", "reason")})
                if sink:
                    sink.write(json.dumps(item, default=str) + "\n")
                if item["action"] in ("upload", "upsert") and shown < sample:
                    console.print_json(json.dumps(item, default=str))
                    shown += 1
    finally:
        if sink:
            sink.close()
    table = Table(title=f"{job.name} -> {job.destination.vendor}: "
                        f"{'dry run (nothing sent)' if use_ledger else 'validation'}")
    for col in ("rows read", "would upload+upsert", "would upsert only", "unchanged", "rejected",
                "outside window"):
        table.add_column(col, justify="right")
    table.add_row(str(pipeline.counts.read), str(counts["upload"]), str(counts["upsert"]),
                  str(counts["unchanged"]), str(len(rejects)), str(pipeline.counts.outside_window))
    console.print(table)
    if rejects:
        rt = Table(title=f"rejected rows (first {min(20, len(rejects))} of {len(rejects)})")
        for col in ("source", "row", "id", "field", "reason"):
            rt.add_column(col)
        for r in rejects[:20]:
            rt.add_row(*(str(r.get(c, "")) for c in ("source", "row", "id", "field", "reason")))
        console.print(rt)
    if out:
        console.print(f"full plan: {out}")
    return 1 if rejects else 0


@app.command()
def run(
    job_file: Path = typer.Argument(..., help="the job YAML"),
    since: Optional[str] = typer.Option(None, help="only records with updated_at >= this ISO time"),
    until: Optional[str] = typer.Option(None, help="only records with updated_at < this ISO time"),
    limit: Optional[int] = typer.Option(None, min=1, help="load at most N records"),
    dry_run: bool = typer.Option(False, "--dry-run", help="show every request that would be sent; send nothing"),
    plan: Optional[Path] = typer.Option(None, help="with --dry-run: write the full plan (JSON lines) here"),
    output: str = typer.Option("table", help="table | json"),
) -> None:
    """Load a job's records into its vendor. Exit 0 all loaded, 1 rows rejected/failed, 2 config error."""
    try:
        from connectors.core.job import load_job

        job = load_job(job_file)
        if dry_run:
            raise typer.Exit(_preview(job, since, until, limit, use_ledger=True, out=plan, sample=3))
        summary = _run_flow(job, since, until, limit)
    except AssetferryError as exc:
        _fail(str(exc))
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
def validate(
    job_file: Path = typer.Argument(..., help="the job YAML"),
    since: Optional[str] = typer.Option(None),
    until: Optional[str] = typer.Option(None),
    limit: Optional[int] = typer.Option(None, min=1),
    sample: int = typer.Option(3, help="how many payloads to print"),
) -> None:
    """Extract and transform only: counts, rejects and a sample of the payloads. Exit 1 if any row is rejected."""
    try:
        from connectors.core.job import load_job

        job = load_job(job_file)
        code = _preview(job, since, until, limit, use_ledger=False, out=None, sample=sample)
    except AssetferryError as exc:
        _fail(str(exc))
    raise typer.Exit(code)


@app.command()
def demo() -> None:
    """Start the Kontent.ai sandbox, load the bundled sample manifest through the real flow, print the summary."""
    from sandbox import kontent
    from sandbox.server import running

    from importlib.resources import files

    demo_dir = Path(str(files("sandbox") / "demo"))
    state = Path(tempfile.mkdtemp(prefix="assetferry-demo-"))
    os.environ["ASSETFERRY_DEMO_KEY"] = kontent.DEMO_API_KEY
    with running(kontent.create_app()) as root:
        from connectors.core.job import parse_job

        job = parse_job({
            "name": "demo",
            "source": {"url": str(demo_dir / "manifest.csv")},
            "destination": {"vendor": "kontent", "url": f"{root}/v2",
                            "credentials": {"api_key": "env:ASSETFERRY_DEMO_KEY"},
                            "settings": {"environment_id": kontent.DEMO_ENVIRONMENT_ID}},
            "state": str(state),
        }, where="demo")
        console.print(f"sandbox Kontent.ai at {root}/v2; state in {state}")
        try:
            summary = _run_flow(job, None, None, None)
        except AssetferryError as exc:
            _fail(str(exc))
    console.print(_summary_table(summary))
    raise typer.Exit(summary["exit_code"])


@app.command()
def sandbox(
    vendor: str = typer.Argument(..., help="kontent"),
    host: str = typer.Option("127.0.0.1"),
    port: int = typer.Option(8765),
) -> None:
    """Serve a vendor simulator for offline rehearsals."""
    from sandbox.server import SIMULATORS, serve

    if vendor not in SIMULATORS:
        _fail(f"no simulator for {vendor!r} (available: {', '.join(sorted(SIMULATORS))})")
    serve(vendor, host=host, port=port)


def main() -> None:
    try:
        app()
    except ConfigError as exc:  # pragma: no cover - commands turn these into exit 2 themselves
        err.print(f"error: {exc}")
        sys.exit(2)


if __name__ == "__main__":
    main()
