"""Packaging and CLI conventions (issue 20): one `assetferry` import namespace that survives a
neighbouring `flows` package, `--version`, `python -m assetferry`, the job file's JSON Schema,
log levels, and progress output outside a terminal."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import venv
from contextlib import ExitStack
from importlib.resources import files
from pathlib import Path

import jsonschema
import pytest
import yaml

from assetferry.connectors.core.errors import ConfigError
from assetferry.connectors.core.job import parse_job
from assetferry.connectors.core.schema import job_schema
from assetferry.connectors.vendors import names
from assetferry.sandbox.server import SIMULATORS

ROOT = Path(__file__).resolve().parent.parent


def _cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
         python: str = sys.executable, timeout: int = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([python, "-m", "assetferry", *args], capture_output=True, text=True,
                          env=env or os.environ.copy(), cwd=cwd, timeout=timeout)


# ---- the JSON Schema -------------------------------------------------------------------------

_DEMO_JOBS: dict[str, dict] = {}


def _demo_jobs() -> dict[str, dict]:
    """Every vendor's demo job, as `assetferry demo VENDOR` builds it (against its simulator)."""
    import copy

    from assetferry.sandbox.server import running

    if not _DEMO_JOBS:
        demo_dir = Path(str(files("assetferry.sandbox") / "demo"))
        with ExitStack() as stack:
            for vendor in names():
                if vendor not in SIMULATORS:
                    continue
                module = sys.modules[SIMULATORS[vendor].__module__]
                root = stack.enter_context(running(SIMULATORS[vendor]()))
                fields, _env = module.demo_job(root, demo_dir, stack)
                _DEMO_JOBS[vendor] = {"name": f"demo-{vendor}", **fields}
    return copy.deepcopy(_DEMO_JOBS)


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    out = _cli("schema", cwd=ROOT)
    assert out.returncode == 0, out.stderr
    schema = json.loads(out.stdout)
    assert schema == json.loads(json.dumps(job_schema())), "the command prints the generated schema"
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_schema_accepts_every_vendors_demo_job_and_the_shipped_deployment_job(validator):
    jobs = _demo_jobs()
    assert set(jobs) == set(SIMULATORS), "every vendor with a sandbox has a demo job"
    shipped = yaml.safe_load((ROOT / "deployments/jobs/product-images.yaml").read_text())
    for name, job in [*jobs.items(), ("deployment", shipped)]:
        errors = [e.message for e in validator.iter_errors(job)]
        assert errors == [], f"{name}: {errors}"
        parse_job(job, where=name)  # and the product agrees


@pytest.mark.parametrize("change, where", [
    (lambda j: j["destination"].update(vendor="nosuchvendor"), "destination"),
    (lambda j: j["destination"]["settings"].update(language=5), "language"),
    (lambda j: j["destination"]["settings"].update(no_such_setting=True), "no_such_setting"),
    (lambda j: j["destination"]["credentials"].pop("api_key"), "api_key"),
    (lambda j: j["destination"]["credentials"].update(api_key="sk-literal-value"), "api_key"),
    (lambda j: j.update(concurrency=0), "concurrency"),
    (lambda j: j["source"].update(format="xlsx"), "format"),
    (lambda j: j.update(extra_key=1), "extra_key"),
])
def test_schema_and_validation_refuse_the_same_mistakes(validator, change, where):
    job = _demo_jobs()["kontent"]
    change(job)
    errors = list(validator.iter_errors(job))
    assert errors, "the schema accepted a job the product refuses"
    with pytest.raises(ConfigError):
        parse_job(job, where="job.yaml")
    text = " ".join(f"{e.message} {list(e.absolute_path)}" for e in errors)
    assert where in text, f"the schema's errors do not name {where}: {text}"


def test_schema_types_each_vendors_settings_separately(validator):
    jobs = _demo_jobs()
    # Kontent's settings are not Wordbee's: the union picks the branch by `vendor`.
    wordbee_settings = jobs["wordbee"]["destination"]["settings"]
    job = jobs["kontent"]
    job["destination"]["settings"] = dict(wordbee_settings)
    assert list(validator.iter_errors(job)), "wordbee settings accepted under vendor: kontent"


# ---- CLI conventions -------------------------------------------------------------------------

def test_version_and_module_entry_point():
    from assetferry import __version__

    out = _cli("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"assetferry {__version__}"
    assert __version__ != "0+unknown"
    help_text = _cli("--help").stdout
    for option in ("--version", "--log-level", "--install-completion", "schema"):
        assert option in help_text


def test_log_level_is_checked():
    out = _cli("--log-level", "LOUD", "schema")
    assert out.returncode == 2 and "LOUD" in out.stderr and "Traceback" not in out.stderr


def test_the_command_gives_arrow_the_system_allocator_unless_the_user_chose_one():
    """mimalloc (Arrow's default pool) kept up to twice the memory `validate` needed at 1M rows."""
    probe = ("import sys\nfrom assetferry.flows.cli import main\nsys.argv = ['assetferry', '--version']\n"
             "try:\n    main()\nexcept SystemExit:\n    pass\n"
             "import pyarrow\nprint(pyarrow.default_memory_pool().backend_name)")
    for chosen, expected in ((None, "system"), ("mimalloc", "mimalloc")):
        env = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
        if chosen:
            env["ARROW_DEFAULT_MEMORY_POOL"] = chosen
        out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=120)
        assert out.returncode == 0 and out.stdout.split()[-1] == expected, out.stderr[-2000:]


# ---- the built wheel in a fresh environment --------------------------------------------------

def test_built_wheel_installs_beside_a_foreign_flows_package_and_runs_the_demo(tmp_path):
    """Build the wheel, install it (no dependencies: they come from this test environment through
    a .pth line) into a fresh venv that already holds an unrelated `flows` and `tasks` package,
    and run the CLI from an unrelated folder: nothing resolves to the source tree."""
    src = tmp_path / "src"
    src.mkdir()
    for part in ("pyproject.toml", "README.md", "assetferry", "flows", "tasks", "connectors", "sandbox"):
        copy = shutil.copytree if (ROOT / part).is_dir() else shutil.copy2
        copy(ROOT / part, src / part, **({"ignore": shutil.ignore_patterns("__pycache__")}
                                         if (ROOT / part).is_dir() else {}))
    dist = tmp_path / "dist"
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(src)],
                           capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-2000:]
    wheel = next(dist.glob("assetferry-*.whl"))

    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = str(env_dir / "bin" / "python")
    site = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    ours = [p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir()]
    (site / "zz_test_dependencies.pth").write_text("\n".join(ours) + "\n")
    for foreign in ("flows", "tasks"):  # someone else's packages with our folder names
        (site / foreign).mkdir()
        (site / foreign / "__init__.py").write_text(f"FOREIGN = {foreign!r}\n")
    installed = subprocess.run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps",
                                "--no-index", "-q", str(wheel)], capture_output=True, text=True, timeout=300)
    if installed.returncode != 0 and "no such option: --python" in installed.stderr:  # pragma: no cover
        installed = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q",
                                    "--target", str(site), str(wheel)], capture_output=True, text=True)
    assert installed.returncode == 0, installed.stderr[-2000:]

    work = tmp_path / "elsewhere"
    work.mkdir()
    # the user's defaults: no log level, no server mode forced by the test suite
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "ASSETFERRY_"))}
    env.update(PREFECT_HOME=str(tmp_path / "prefect-home"), PATH=f"{env_dir / 'bin'}:{env.get('PATH', '')}")
    probe = subprocess.run([python, "-c", "import assetferry, assetferry.flows.cli as c, flows, tasks, json; "
                            "print(json.dumps([assetferry.__file__, c.__file__, flows.FOREIGN, tasks.FOREIGN]))"],
                           capture_output=True, text=True, cwd=work, env=env, timeout=120)
    assert probe.returncode == 0, probe.stderr[-2000:]
    package, cli, flows_name, tasks_name = json.loads(probe.stdout)
    assert package.startswith(str(site)) and cli.startswith(str(site / "assetferry" / "flows"))
    assert (flows_name, tasks_name) == ("flows", "tasks")
    assert (site / "assetferry" / "py.typed").is_file()
    assert (site / "assetferry" / "sandbox" / "demo" / "manifest.csv").is_file()

    script = str(env_dir / "bin" / "assetferry")
    version = subprocess.run([script, "--version"], capture_output=True, text=True, cwd=work, env=env, timeout=120)
    assert version.returncode == 0 and version.stdout.startswith("assetferry "), version.stderr[-2000:]
    assert _cli("--help", python=python, cwd=work, env=env).returncode == 0
    demo = subprocess.run([script, "demo"], capture_output=True, text=True, cwd=work, env=env, timeout=300)
    assert demo.returncode == 0, demo.stdout[-2000:] + demo.stderr[-3000:]
    assert "36" in demo.stdout and "Traceback" not in demo.stderr
    # Outside a terminal: whole progress lines, and Prefect's start-up chatter only with -v.
    assert "36/36 rows" in demo.stderr
    # and it leaves no Prefect server running behind it
    assert not (tmp_path / "prefect-home" / "assetferry-server.json").exists()
    assert "ephemeral" in demo.stdout
    assert "Starting temporary server" not in demo.stderr
    assert not any(p.name.startswith("assetferry-demo-") for p in Path(os.environ.get("TMPDIR", "/tmp")).iterdir()
                   if p.stat().st_mtime > work.stat().st_mtime), "the demo left its state folder behind"
