"""The malformed-input corpus (issue 18): every file under ``tests/corpus/`` goes through
``validate``, ``run --dry-run`` and (where it matters) ``run``, against the Kontent.ai simulator.

Each case gets a clear answer: rows rejected one by one with a reason (and the rest planned or
loaded), or one error naming the file, the line or key, exit 2 for a configuration problem;
never a traceback; rows in = loaded + unchanged + rejected + failed + pending (+ outside the
window). ``CASES`` states what each input must give; the corpus files are the inputs, byte-exact
(``tests/corpus/.gitattributes``)."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from assetferry.flows.cli import app
from typer.testing import CliRunner

from tests import kit

CORPUS = Path(__file__).resolve().parent / "corpus"
ROOT = Path(__file__).resolve().parent.parent
#: Secrets planted in corpus inputs: none may appear in any output, plan or rejects file.
PLANTED = ("CORPUSSIGNATURE0123456789", "CorpusPassw0rd", "CORPUSSASSIG987", "sk-CORPUS-LITERAL-SECRET-42",
           "CorpusDestPassw0rd")


@dataclass(frozen=True)
class Case:
    """One corpus input and what it must give.

    ``kind``: ``rows`` (exit 0/1, ``ok`` rows planned, each of ``rejects`` rejected with a reason
    containing the fragment; a key is ``id:<id>`` or ``row:<n>``; a fragment may list
    alternatives with ``|``), ``empty`` (no rows: exit 0 and a warning) or ``error`` (exit 2, one
    message containing every fragment of ``error``). ``rows_in``: data rows in the manifest.
    ``run``: also loaded by a real run (kept to the cases where a run can differ)."""

    name: str
    kind: str
    manifest: str | None = None
    job: str | None = None
    rows_in: int = 0
    ok: int | None = None
    rejects: dict[str, str] = field(default_factory=dict)
    error: tuple[str, ...] = ()
    source: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    run: bool = False


def rows(name: str, manifest: str, rows_in: int, ok: int, rejects: dict[str, str] | None = None, **kw: Any) -> Case:
    return Case(name, "rows", manifest=manifest, rows_in=rows_in, ok=ok, rejects=rejects or {}, **kw)


def error(name: str, *fragments: str, manifest: str | None = None, job: str | None = None, **kw: Any) -> Case:
    return Case(name, "error", manifest=manifest, job=job, error=fragments, **kw)


LINE = "line|row"
DECODE = "utf-8|UTF-8|decode|encoding"
CASES = [
    # -- CSV shape -------------------------------------------------------------------------------
    rows("ragged extra fields", "ragged_extra_fields.csv", 3, 2, {"row:2": "line 3|fields"}, run=True),
    rows("ragged short row", "ragged_short_row.csv", 3, 2, {"row:2": "missing file|line 3|fields"}),
    rows("bad quoting", "bad_quoting.csv", 2, 1, {"row:1": "line 2: malformed quoting"}),
    # an unclosed quote runs to the end of the file: the parser sees one last row, rejected as such
    rows("unclosed quote", "unclosed_quote.csv", 2, 1, {"row:2": "line 3: malformed quoting"}),
    rows("blank lines", "blank_lines.csv", 2, 2),
    rows("CRLF line ends", "crlf.csv", 2, 2),
    rows("UTF-8 BOM", "utf8_bom.csv", 2, 2),
    rows("delimiter declared", "semicolon_declared.csv", 2, 2, source={"delimiter": ";"}),
    error("wrong delimiter", "semicolon_undeclared.csv", "column absent", "delimiter",
          manifest="semicolon_undeclared.csv"),
    error("missing id column", "missing_id_column.csv", "column absent: id", manifest="missing_id_column.csv"),
    error("missing file column", "missing_file_column.csv", "column absent: file", manifest="missing_file_column.csv"),
    error("duplicate header column", "duplicate_header.csv", "title", "duplicate", manifest="duplicate_header.csv"),
    error("corrupt gzip", "gzip_corrupt.csv.gz", manifest="gzip_corrupt.csv.gz"),
    # -- encodings -----------------------------------------------------------------------------------
    rows("latin-1 byte", "latin1_byte.csv", 2, 1, {"row:1": DECODE}, run=True),
    rows("latin-1 declared", "latin1_declared.csv", 2, 2, source={"encoding": "latin-1"}),
    rows("NUL byte in a field", "nul_byte.csv", 2, 1, {"id:n1": "title contains control characters"}),
    rows("JSONL latin-1 byte", "jsonl_latin1.jsonl", 2, 1, {"row:1": DECODE}),
    # -- empty manifests -----------------------------------------------------------------------------
    Case("zero-byte manifest", "empty", manifest="empty_zero_bytes.csv"),
    Case("header only", "empty", manifest="header_only.csv"),
    Case("JSON empty array", "empty", manifest="json_empty_array.json"),
    # -- ids -----------------------------------------------------------------------------------------
    rows("duplicate ids", "duplicate_ids.csv", 3, 2, {"row:3": "duplicate id 'dup' (first seen at"}, run=True),
    rows("odd ids", "odd_ids.csv", 6, 5, {"row:1": "whitespace"}),
    rows("missing ids", "missing_ids.csv", 3, 1, {"row:1": "missing id", "row:3": "missing id|whitespace"}),
    # -- values ----------------------------------------------------------------------------------------
    rows("1 MB title", "huge_title.csv", 2, 1, {"id:big": "title is 1048576 characters; Kontent.ai accepts at most "
                                                         "1000 (destination.settings.max_title_chars)"}, run=True),
    rows("200 KB description", "huge_description.csv", 2, 1, {"id:hd1": "description is 200000 characters"}),
    rows("title length setting", "huge_description.csv", 2, 0,
         {"id:hd1": "title is 5 characters", "id:hd2": "title is 5 characters; Kontent.ai accepts at most 4"},
         settings={"max_title_chars": 4}),
    rows("control characters", "control_chars.csv", 4, 1,
         {"id:esc": "title contains control characters", "row:2": "id contains control characters",
          "id:bidi": "title contains control characters"}, run=True),
    rows("unicode and reserved characters in file paths", "unicode_names.csv", 2, 2),
    rows("reserved characters in file_name", "reserved_file_names.csv", 3, 3),  # URL-encoded, never a path
    rows("invalid updated_at", "bad_updated_at.csv", 2, 1, {"id:t1": "invalid timestamp 'yesterday'"}),
    rows("unknown or malformed language", "bad_language.csv", 3, 1,
         {"id:la1": "invalid language codename 'en US'", "id:la2": "'klingon' does not exist in the environment"}),
    # -- files -----------------------------------------------------------------------------------------
    rows("0-byte file", "zero_byte_file.csv", 2, 2, run=True),
    rows("0-byte file refused by setting", "zero_byte_file.csv", 2, 1, {"id:z1": "file is empty (0 bytes"},
         settings={"reject_empty_files": True}),
    rows("missing file", "missing_file.csv", 2, 1, {"id:mf1": "file not found"}),
    rows("a folder as file", "directory_as_file.csv", 2, 1, {"id:dir1": "is a directory"}),
    rows("signed and password URLs", "secrets_in_urls.csv", 4, 1,
         {"id:ps1": "not allowed", "id:pw1": "not allowed", "id:sas": "not allowed"}, run=True),
    # -- JSON, JSONL, Parquet ----------------------------------------------------------------------------
    rows("JSONL broken line", "jsonl_broken_line.jsonl", 3, 2, {"row:2": "line 2"}, run=True),
    rows("JSONL non-object lines", "jsonl_not_object.jsonl", 4, 2, {"row:2": "line 2", "row:3": "line 3"}),
    rows("JSONL mixed value types", "jsonl_mixed_types.jsonl", 4, 3, {"row:4": "missing id"}),
    rows("JSON with BOM and CRLF", "json_bom_crlf.json", 2, 2),
    error("JSON truncated", "json_truncated.json", "cannot parse json", manifest="json_truncated.json"),
    error("JSON two arrays", "json_two_arrays.json", "exactly one array", manifest="json_two_arrays.json"),
    error("JSON scalar items", "json_scalar_items.json", "array item 0", manifest="json_scalar_items.json"),
    error("Parquet corrupt", "parquet_corrupt.parquet", "parquet", manifest="parquet_corrupt.parquet"),
    rows("Parquet integer ids, null title", "parquet_int_ids.parquet", 2, 2),
    error("Parquet missing file column", "parquet_no_file_column.parquet", "column absent: file",
          manifest="parquet_no_file_column.parquet"),
    rows("Parquet integer timestamps", "parquet_int_timestamps.parquet", 2, 0,
         {"id:pt1": "invalid timestamp '1'", "id:pt2": "invalid timestamp '2'"}),
    # -- job files ---------------------------------------------------------------------------------------
    error("unknown vendor", "unknown_vendor.yaml", "destination.vendor", "sharepoint", job="unknown_vendor.yaml"),
    error("wrong settings types", "destination.settings.requests_per_second", "destination.settings.max_title_chars",
          "destination.settings.check_environment", "batch_size", "concurrency", "retries", job="wrong_setting_types.yaml"),
    error("YAML syntax error", "yaml_syntax_error.yaml", "not valid YAML (line", job="yaml_syntax_error.yaml"),
    error("YAML alias bomb", "yaml_alias_bomb.yaml", "alias", job="yaml_alias_bomb.yaml"),
    error("YAML nested too deeply", "yaml_deep_nesting.yaml", "nested too deeply", job="yaml_deep_nesting.yaml"),
    error("YAML duplicate key", "duplicate_keys.yaml", "'source' appears twice (lines 2 and 3)", job="duplicate_keys.yaml"),
    error("job file not UTF-8", "job_not_utf8.yaml", "not UTF-8", "line 2", job="job_not_utf8.yaml"),
    error("empty job file", "empty_job.yaml", "mapping", job="empty_job.yaml"),
    error("job file is a list", "top_level_list.yaml", "mapping", job="top_level_list.yaml"),
    error("unknown key", "unknown_key.yaml", "sorce", "batchsize", job="unknown_key.yaml"),
    error("state: /etc", "state_etc.yaml", "system folder", job="state_etc.yaml"),
    error("state under /proc via ..", "system folder", job="state_proc_relative.yaml"),
    error("manifest in /", "allowed_roots", "is in /", job="manifest_in_root.yaml"),
    error("credential missing", "destination.credentials.api_key: required", job="missing_credential_key.yaml"),
    error("literal secret", "destination.credentials", "reference", job="literal_secret.yaml"),
    error("password in destination.url", "destination.url", "user:password@", job="password_in_destination_url.yaml"),
    error("unknown format", "unknown_format.yaml", "source.format", job="unknown_format.yaml"),
    error("two-character delimiter", "bad_delimiter.yaml", "source.delimiter", job="bad_delimiter.yaml"),
    error("unknown encoding", "klingon-8", "encoding", job="bad_encoding.yaml"),
    error("bad job name", "bad_name.yaml", "name", job="bad_name.yaml"),
    error("manifest missing", "manifest not found", "nope.csv", job="manifest_missing.yaml"),
    error("no extension, no format", "no_extension.manifest", "format", job="no_extension_no_format.yaml"),
]
IDS = [c.name for c in CASES]


# -- the corpus, made runnable: copied, job files pointed at the simulator, one job per manifest -----
@dataclass
class Corpus:
    root: Path
    jobs: dict[str, Path]
    kontent: str


def _job_for(case: Case, root: Path, kontent: str) -> Path:
    if case.job:
        return root / "jobs" / case.job
    slug = "".join(ch if ch.isalnum() else "-" for ch in case.name.lower())
    data = kit.job_dict(f"../manifests/{case.manifest}", kontent, Path("state") / slug,
                        name=slug.strip("-")[:60], settings={"requests_per_second": 100, "requests_per_minute": 6000,
                                                             **case.settings})
    data["source"].update(case.source)
    data["retries"] = 0
    return kit.write_job(root / "jobs" / f"m-{slug}.yaml", data)


@pytest.fixture(scope="module")
def corpus(kontent_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Corpus]:
    kit.set_limits(kontent_server, 1000, 60000)  # the corpus tests inputs, not rate limits
    root = tmp_path_factory.mktemp("corpus") / "corpus"
    shutil.copytree(CORPUS, root, symlinks=True)
    for job in (root / "jobs").glob("*.yaml"):
        raw = job.read_bytes()
        job.write_bytes(raw.replace(b"@KONTENT@", kontent_server.encode()).replace(b"@ENV@", kit.ENV.encode()))
    yield Corpus(root, {c.name: _job_for(c, root, kontent_server) for c in CASES}, kontent_server)


def test_the_corpus_is_big_enough_and_every_input_is_used() -> None:
    assert len(CASES) >= 40 and len(set(IDS)) == len(IDS)
    used = {c.manifest for c in CASES if c.manifest} | {c.job for c in CASES if c.job} | {"good.csv", "no_extension.manifest"}
    inputs = {p.name for p in (CORPUS / "manifests").iterdir() if p.is_file()} | {p.name for p in (CORPUS / "jobs").iterdir()}
    assert inputs - used == set(), "corpus files no case uses"
    assert used - inputs == set(), "cases whose input is missing"
    assert (CORPUS / "manifests" / "files" / "empty.png").stat().st_size == 0
    assert b"\r\n" in (CORPUS / "manifests" / "crlf.csv").read_bytes()  # kept byte-exact


# -- validate and run --dry-run: in process (the CLI's own code; no Prefect is involved) -------------
def _invoke(*args: str) -> Any:
    result = CliRunner().invoke(app, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"{args}: {type(result.exception).__name__}: {result.exception}")
    assert "Traceback" not in result.output, result.output
    for secret in PLANTED:
        assert secret not in result.output, (args, secret)
    return result


def _reject_key(reject: dict[str, Any]) -> set[str]:
    keys = {f"row:{reject.get('row')}"}
    if reject.get("id") is not None:
        keys.add(f"id:{reject['id']}")
    return keys


def _matches(reason: str, fragment: str) -> bool:
    return any(alt in reason for alt in fragment.split("|"))


def check_answer(case: Case, code: int, output: str, where: str) -> dict[str, Any] | None:
    """The JSON answer of a command for ``case``; asserts what ``case`` says."""
    answer = json.loads(output) if output.strip() else {}
    if case.kind == "error":
        assert code == 2, (where, code, output)
        assert answer.get("exit_code") == 2 and answer.get("error"), (where, answer)
        message = " ".join(answer["error"].split())
        missing = [f for f in case.error if f not in message]
        assert not missing, (where, missing, message)
        return None
    assert code in (0, 1), (where, code, output)
    would = sum(answer["would"].values())
    rejected = answer["rejected"]
    assert answer["rows_read"] == case.rows_in, (where, answer)
    # rows in = planned + unchanged + rejected + outside the window
    assert would + answer["unchanged"] + rejected + answer["outside_window"] == case.rows_in, (where, answer)
    if case.kind == "empty":
        assert code == 0 and case.rows_in == 0
        assert any("no rows" in w for w in answer.get("warnings", [])), (where, answer)
        return answer
    assert code == (1 if rejected else 0), (where, code)
    if case.ok is not None:
        assert would + answer["unchanged"] == case.ok, (where, answer)
    for reject in answer["rejects"]:
        assert reject.get("reason"), (where, reject)
        assert reject.get("row") is not None and reject.get("source"), (where, reject)
    for key, fragment in case.rejects.items():
        found = [r for r in answer["rejects"] if key in _reject_key(r)]
        assert found, (where, key, answer["rejects"])
        assert _matches(str(found[0]["reason"]), fragment), (where, key, found[0])
    return answer


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_validate_and_dry_run_answer_every_case(case: Case, corpus: Corpus, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KONTENT_API_KEY", kit.KEY)
    kit.set_limits(corpus.kontent, 1000, 60000)  # another module's test may have lowered them
    job = str(corpus.jobs[case.name])
    started = time.monotonic()
    for command in (["validate", job], ["run", job, "--dry-run"]):
        result = _invoke(*command, "--output", "json")
        answer = check_answer(case, result.exit_code, result.output, " ".join(command[:-1]))
        if answer and command[0] == "run":  # the dry run names its plan file, holding every planned row
            plan = Path(answer["plan_file"])
            items = [json.loads(line) for line in plan.read_text().splitlines()]
            planned = sum(len(i["ids"]) for i in items if i["action"] != "reject")
            assert planned == sum(answer["would"].values()) + answer["unchanged"], (plan, answer)
            assert not [s for s in PLANTED if s in plan.read_text()]
        table = _invoke(*command)  # the human output: same exit code, nothing raw reaches the terminal
        assert table.exit_code == result.exit_code, table.output
        assert "\x1b" not in table.output and "\x07" not in table.output and "\u202e" not in table.output
        if case.kind == "error":
            assert "error:" in table.output
    assert time.monotonic() - started < 20, "one case took too long (alias bomb?)"


def test_control_characters_are_shown_escaped_never_raw(corpus: Corpus, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KONTENT_API_KEY", kit.KEY)
    result = _invoke("validate", str(corpus.jobs["control characters"]))
    text = " ".join(result.output.split())
    assert "\\x1b" in text or "bel\\x07id" in text, result.output  # the value is visible, escaped
    assert "\x1b" not in result.output and "\x07" not in result.output


# -- run: configuration cases answer before Prefect starts; row cases load through a real flow ------
def _cli_env(tmp: Path) -> dict[str, str]:
    env = {**os.environ, "PREFECT_HOME": str(tmp / "prefect-home"), "KONTENT_API_KEY": kit.KEY,
           "PREFECT_LOGGING_LEVEL": "WARNING"}
    env.pop("PREFECT_API_URL", None)
    return env


_DRIVER = """
import json, sys
from typer.testing import CliRunner
from assetferry.flows.cli import app
for line in sys.stdin:
    name, job = json.loads(line)
    r = CliRunner().invoke(app, ["run", job, "--output", "json"])
    exc = r.exception if r.exception is not None and not isinstance(r.exception, SystemExit) else None
    print(json.dumps({"name": name, "code": r.exit_code, "output": r.stdout, "stderr": r.stderr,
                      "exception": f"{type(exc).__name__}: {exc}" if exc else None}), flush=True)
"""


def _run_many(tmp: Path, cases: list[Case], corpus: Corpus) -> dict[str, dict[str, Any]]:
    """``run --output json`` for each case, one after the other in one child process (one Prefect
    start for all): the CLI's own entry point, each run as a user would start it."""
    feed = "".join(json.dumps([c.name, str(corpus.jobs[c.name])]) + "\n" for c in cases)
    done = subprocess.run([sys.executable, "-c", _DRIVER], input=feed, env=_cli_env(tmp), cwd=ROOT,
                          capture_output=True, text=True, timeout=600, check=False)
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    answers = {}
    for line in done.stdout.splitlines():
        if line.startswith("{\"name\""):
            item = json.loads(line)
            answers[item["name"]] = item
    assert set(answers) == {c.name for c in cases}, (done.stdout[-2000:], done.stderr[-2000:])
    return answers


def test_run_answers_every_configuration_case_before_prefect(corpus: Corpus, tmp_path: Path) -> None:
    cases = [c for c in CASES if c.kind == "error"]
    started = time.monotonic()
    answers = _run_many(tmp_path, cases, corpus)
    for case in cases:
        item = answers[case.name]
        assert item["exception"] is None, item
        check_answer(case, item["code"], item["output"], f"run {case.name}")
    assert not (tmp_path / "prefect-home" / "prefect.db").exists()  # Prefect never started
    assert time.monotonic() - started < 60


def test_the_real_entry_point_answers_a_bad_job_and_a_bad_manifest(corpus: Corpus, tmp_path: Path) -> None:
    for name in ("YAML alias bomb", "missing id column"):
        done = subprocess.run([sys.executable, "-m", "assetferry", "run", str(corpus.jobs[name])], env=_cli_env(tmp_path),
                              cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 2, (done.stdout, done.stderr)
        assert "Traceback" not in done.stdout + done.stderr
        assert "error:" in done.stderr and next(c for c in CASES if c.name == name).error[-1] in " ".join(done.stderr.split())


def test_run_loads_the_good_rows_and_rejects_each_bad_one_with_its_reason(
        corpus: Corpus, kontent: str, tmp_path: Path) -> None:
    cases = [c for c in CASES if c.run]
    kit.set_limits(kontent, 1000, 60000)
    answers = _run_many(tmp_path, cases, corpus)
    for case in cases:
        item = answers[case.name]
        assert item["exception"] is None, item
        summary = json.loads(item["output"])
        assert item["code"] == (1 if case.rejects else 0), (case.name, summary)
        counted = sum(summary[k] for k in ("loaded", "unchanged", "rejected", "failed", "pending", "outside_window"))
        assert counted == case.rows_in == summary["total"], (case.name, summary)
        assert summary["loaded"] == case.ok and summary["rejected"] == len(case.rejects), (case.name, summary)
        if case.rejects:
            text = Path(summary["rejects_file"]).read_text(encoding="utf-8")
            assert not [s for s in PLANTED if s in text], case.name
            csv.field_size_limit(sys.maxsize)  # the 1 MB title is kept whole in the record column
            with open(summary["rejects_file"], newline="", encoding="utf-8") as f:
                found = list(csv.DictReader(f))
            for key, fragment in case.rejects.items():
                hit = [r for r in found if key in _reject_key({**r, "row": r["row"]})]
                assert hit and _matches(hit[0]["reason"], fragment), (case.name, key, found)
    loaded = {a["external_id"] for a in kit.list_assets(kontent)}
    assert {"r1", "r3", "l2", "z1", "z2", "j1", "j3"} <= loaded  # the good rows of bad manifests made it
