"""Issue 18 point 4: one bad manifest line rejects that row, not the manifest; read options
(encoding, delimiter, on_bad_lines); a missing column is one message; values kept exactly.

Driven through ``assetferry validate`` (in-process with Typer's runner, and as a real
``python -m assetferry`` subprocess for the exit-code cases) and, once, through a real run
against the Kontent.ai simulator (rejects file, rows in = loaded + rejected)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from assetferry.connectors.core.errors import ConfigError
from assetferry.connectors.core.job import load_job
from assetferry.connectors.pipeline import Pipeline, make_connector
from assetferry.flows.cli import app
from typer.testing import CliRunner

from tests import kit

ROOT = Path(__file__).resolve().parent.parent
HEADER = "id,title,file,language"


def _files(folder: Path, n: int = 4) -> list[str]:
    (folder / "files").mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(n):
        (folder / "files" / f"f{i}.txt").write_bytes(b"content %d" % i)
        names.append(f"files/f{i}.txt")
    return names


def _job(folder: Path, manifest: str, data: bytes, **source: Any) -> Path:
    (folder / manifest).write_bytes(data)
    job = kit.job_dict(manifest, "http://127.0.0.1:9", Path("state"), source=source)
    return kit.write_job(folder / "job.yaml", job)


def _validate(job: Path) -> tuple[int, dict[str, Any] | str]:
    """``validate --output json`` in-process: (exit code, the JSON answer or the raw output)."""
    result = CliRunner().invoke(app, ["validate", str(job), "--output", "json", "--no-check-vendor"],
                                env={"KONTENT_API_KEY": kit.KEY})
    assert "Traceback" not in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    try:
        return result.exit_code, json.loads(result.output)
    except ValueError:
        return result.exit_code, result.output


def _cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home"), "KONTENT_API_KEY": kit.KEY}
    env.pop("PREFECT_API_URL", None)
    return subprocess.run([sys.executable, "-m", "assetferry", *args], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=120, check=False)


def _balanced(answer: dict[str, Any]) -> None:
    """Rows in = would send + unchanged + rejected (validate's side of the invariant)."""
    assert answer["rows_read"] == sum(answer["would"].values()) + answer["unchanged"] + answer["rejected"], answer


# -- one bad line rejects its row ---------------------------------------------------------------
@pytest.mark.parametrize(("bad_line", "reason"), [
    ("B,Extra,{f1},default,EXTRA", "expected 4 fields, found 5"),
    ("B,Missing", "expected 4 fields, found 2"),
    ('B,"Half "quoted" title",{f1},default', "malformed quoting"),
])
def test_a_ragged_or_badly_quoted_csv_line_rejects_only_its_row(tmp_path: Path, bad_line: str, reason: str) -> None:
    f = _files(tmp_path)
    text = "\n".join([HEADER, f"A,Good,{f[0]},default", bad_line.format(f1=f[1]), f"C,Good too,{f[2]},default"]) + "\n"
    code, answer = _validate(_job(tmp_path, "m.csv", text.encode()))

    assert code == 1 and isinstance(answer, dict), answer
    assert answer["rows_read"] == 3 and answer["would"] == {"upload+upsert": 2} and answer["rejected"] == 1
    [reject] = answer["rejects"]
    assert reject["source"].endswith("m.csv") and reject["row"] == 2
    assert reject["reason"].startswith("line 3: ") and reason in reject["reason"], reject
    _balanced(answer)


def test_a_broken_jsonl_line_rejects_only_its_row(tmp_path: Path) -> None:
    f = _files(tmp_path)
    lines = [json.dumps({"id": "A", "file": f[0]}), '{"id": "B", "file": ', "", "[1, 2]",
             json.dumps({"id": "C", "file": f[2]})]
    code, answer = _validate(_job(tmp_path, "m.jsonl", ("\n".join(lines) + "\n").encode()))

    assert code == 1 and isinstance(answer, dict), answer
    assert answer["rows_read"] == 4 and answer["would"] == {"upload+upsert": 2}
    reasons = {r["row"]: r["reason"] for r in answer["rejects"]}
    assert reasons[2].startswith("line 2: not valid JSON"), reasons
    assert reasons[3] == "line 4: expected a JSON object, got list"  # the blank line 3 is no row
    _balanced(answer)


def test_an_undecodable_byte_rejects_its_row_and_encoding_reads_it(tmp_path: Path) -> None:
    f = _files(tmp_path)
    text = f"{HEADER}\nA,Caf\xe9,{f[0]},default\nB,Plain,{f[1]},default\n".encode("latin-1")
    code, answer = _validate(_job(tmp_path, "m.csv", text))

    assert code == 1 and isinstance(answer, dict), answer
    [reject] = answer["rejects"]
    assert reject["field"] == "title" and reject["id"] == "A"
    assert reject["reason"].startswith("line 2: not valid UTF-8: byte 0xE9") and "source.encoding" in reject["reason"]
    assert answer["would"] == {"upload+upsert": 1}

    job = _job(tmp_path, "m.csv", text, encoding="latin-1")
    code, answer = _validate(job)
    assert code == 0 and answer["would"] == {"upload+upsert": 2}, answer
    pipeline = Pipeline(load_job(job), make_connector(load_job(job), credentials={}))
    [(ready, _)] = list(pipeline.prepared())
    assert ready["title"].tolist() == ["Café", "Plain"]


def test_on_bad_lines_fail_makes_the_first_bad_line_fatal(tmp_path: Path) -> None:
    f = _files(tmp_path)
    text = f"{HEADER}\nA,Good,{f[0]},default\nB,x,{f[1]},default,EXTRA\n"
    job = _job(tmp_path, "m.csv", text.encode(), on_bad_lines="fail")

    done = _cli(tmp_path, "validate", str(job), "--no-check-vendor")

    assert done.returncode == 2, (done.stdout, done.stderr)
    message = " ".join(done.stderr.split())
    assert "Traceback" not in done.stdout + done.stderr
    assert "m.csv" in message and "line 3: expected 4 fields, found 5" in message, message


# -- columns ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("text", "options", "absent"), [
    ("title,file\nT,files/f0.txt\nU,files/f1.txt\n", {}, "column absent: id (columns found: title, file)"),
    ("id;title;file\nA;T;files/f0.txt\nB;U;files/f1.txt\n", {}, "column absent: id, file (columns found: id;title;file)"),
])
def test_a_missing_column_is_reported_once_with_exit_2(tmp_path: Path, text: str, options: dict[str, str],
                                                       absent: str) -> None:
    _files(tmp_path)
    job = _job(tmp_path, "m.csv", text.encode(), **options)

    done = _cli(tmp_path, "validate", str(job), "--no-check-vendor")

    assert done.returncode == 2, (done.stdout, done.stderr)
    message = " ".join(done.stderr.split())
    assert absent in message and message.count("column absent") == 1, message
    assert "missing id" not in message and "Traceback" not in message


def test_the_delimiter_option_reads_a_semicolon_manifest(tmp_path: Path) -> None:
    f = _files(tmp_path)
    text = f"id;title;file\nA;Hello, world;{f[0]}\n"
    code, answer = _validate(_job(tmp_path, "m.csv", text.encode(), delimiter=";"))
    assert code == 0 and answer["would"] == {"upload+upsert": 1}, answer


def test_a_duplicated_header_column_is_an_error_naming_it(tmp_path: Path) -> None:
    f = _files(tmp_path)
    code, answer = _validate(_job(tmp_path, "m.csv", f"id,title,file,title\nA,x,{f[0]},y\n".encode()))
    assert code == 2 and isinstance(answer, dict), answer
    assert "duplicate column(s) in the header: title" in answer["error"] and "m.csv" in answer["error"]
    assert "line 1" in answer["error"]


# -- values kept exactly --------------------------------------------------------------------------------
def test_quoted_values_bom_and_crlf_are_read_exactly(tmp_path: Path) -> None:
    f = _files(tmp_path)
    rows = [["id", "title", "file", "description"],
            ["A", 'a "b" c', f[0], "multi\nline"],
            ["B", 'Half "quoted" title', f[1], "  padded  "]]
    with (tmp_path / "m.csv").open("w", encoding="utf-8-sig", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\r\n")
        writer.writerow(rows[0])
        writer.writerow(rows[1])
        handle.write(f'B,Half "quoted" title,{f[1]},  padded  \r\n')  # quotes inside an unquoted value
    job = kit.write_job(tmp_path / "job.yaml", kit.job_dict("m.csv", "http://127.0.0.1:9", Path("state")))
    spec = load_job(job)
    chunks = list(Pipeline(spec, make_connector(spec, credentials={})).source.chunks())

    frame = chunks[0].frame
    assert list(frame.columns) == ["id", "title", "file", "description"]  # no BOM in the first name
    assert frame["title"].tolist() == ['a "b" c', 'Half "quoted" title']
    assert frame["description"].tolist() == ["multi\nline", "  padded  "]  # no \r left, nothing trimmed here
    assert chunks[0].row_numbers().tolist() == [1, 2]


def test_an_id_with_surrounding_whitespace_is_rejected_not_trimmed(tmp_path: Path) -> None:
    f = _files(tmp_path)
    code, answer = _validate(_job(tmp_path, "m.csv", f"id,file\n A ,{f[0]}\nB,{f[1]}\n".encode()))
    assert code == 1 and isinstance(answer, dict), answer
    [reject] = answer["rejects"]
    assert reject["field"] == "id" and reject["reason"] == "id has leading or trailing whitespace: ' A '"
    assert answer["would"] == {"upload+upsert": 1}


@pytest.mark.parametrize("data", [b"", b"id,title,file\r\n", b"\xef\xbb\xbfid,title,file\n\n"])
def test_an_empty_manifest_is_a_warning_not_a_silent_success(tmp_path: Path, data: bytes) -> None:
    code, answer = _validate(_job(tmp_path, "m.csv", data))
    assert code == 0 and isinstance(answer, dict), answer
    assert answer["rows_read"] == 0
    [warning] = answer["warnings"]
    assert "m.csv" in warning and "has no rows" in warning

    done = CliRunner().invoke(app, ["validate", str(tmp_path / "job.yaml"), "--no-check-vendor"],
                              env={"KONTENT_API_KEY": kit.KEY})
    assert "warning: manifest" in done.output and "has no rows" in " ".join(done.output.split())


def test_source_options_are_checked_when_the_job_is_read(tmp_path: Path) -> None:
    _files(tmp_path)
    for bad, fragment in (({"delimiter": ",,"}, "source.delimiter"), ({"on_bad_lines": "skip"}, "source.on_bad_lines")):
        job = kit.write_job(tmp_path / "bad.yaml", kit.job_dict("m.csv", "http://127.0.0.1:9", Path("state"), source=bad))
        with pytest.raises(ConfigError, match=fragment):
            load_job(job)
    (tmp_path / "m.csv").write_text("id,file\n")
    code, answer = _validate(_job(tmp_path, "m.csv", b"id,file\n", encoding="no-such-codec"))
    assert code == 2 and "unknown source.encoding" in answer["error"], answer


# -- a real run: parse rejects are counted and written ---------------------------------------------------------
@pytest.mark.usefixtures("prefect_harness")
def test_a_run_loads_the_good_rows_and_writes_the_bad_lines_to_rejects(kontent: str, tmp_path: Path) -> None:
    from assetferry.flows.sync import sync_assets

    f = _files(tmp_path)
    text = "\n".join([HEADER, f"A,Good,{f[0]},default", f"B,x,{f[1]},default,EXTRA",
                      '{"not": "csv"', f"D,Good,{f[3]},default"]) + "\n"
    (tmp_path / "m.csv").write_text(text)
    data = kit.job_dict("m.csv", kontent, Path("state"),
                        settings={"requests_per_second": 100, "requests_per_minute": 6000})
    job = load_job(kit.write_job(tmp_path / "job.yaml", data))

    summary = sync_assets(job)

    assert (summary["loaded"], summary["rejected"], summary["failed"], summary["pending"]) == (2, 2, 0, 0), summary
    assert summary["loaded"] + summary["unchanged"] + summary["rejected"] + summary["failed"] + summary["pending"] == 4
    with open(summary["rejects_file"], newline="", encoding="utf-8") as handle:
        rejected = {r["row"]: r for r in csv.DictReader(handle)}
    assert set(rejected) == {"2", "3"}
    assert rejected["2"]["reason"] == "line 3: expected 4 fields, found 5" and rejected["2"]["id"] == "B"
    assert rejected["3"]["reason"].startswith("line 4: ")
