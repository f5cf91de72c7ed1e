"""A third-party plugin distribution, pip-installed next to virtdoctor in a fresh venv: its
check runs in `virtdoctor check`, is listed by `virtdoctor checks`, is selectable with
--only; a broken plugin is a warning, not a crash; --no-plugins leaves it out."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SOURCES = ("pyproject.toml", "README.md", "virtdoctor", "checks", "knowledge")

pytest.importorskip("build", reason="the `build` package (test extra) is not installed in this venv")

GOOD_PYPROJECT = """
[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "virtdoctor-hello"
version = "1.0"
dependencies = ["virtdoctor"]

[project.entry-points.virtdoctor]
hello = "virtdoctor_hello"

[tool.setuptools]
py-modules = ["virtdoctor_hello"]
"""

GOOD_MODULE = '''
"""A third-party virtdoctor plugin: one host check."""
from virtdoctor.api import Fail, Pass, check, hookimpl


@check("hello-marker", scope="host", area="hello", severity="warning",
       title="The hello marker file exists")
def hello_marker(facts):
    """Looks at /etc/hello-marker. Why: a plugin test."""
    if facts.exists("/etc/hello-marker"):
        return Pass("the marker is there")
    return Fail("/etc/hello-marker is missing", {"path": "/etc/hello-marker"})


@hookimpl
def virtdoctor_checks():
    return [hello_marker]
'''

BROKEN_PYPROJECT = GOOD_PYPROJECT.replace("virtdoctor-hello", "virtdoctor-broken").replace(
    'hello = "virtdoctor_hello"', 'broken = "virtdoctor_broken"').replace("virtdoctor_hello", "virtdoctor_broken")
BROKEN_MODULE = 'raise ImportError("virtdoctor_broken needs a library this host lacks")\n'


def clean_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTHON", "VIRTUAL_ENV")) and k != "VIRTDOCTOR_DISABLE_PLUGINS"}
    env.update(extra)
    return env


def sh(argv, cwd, check=True, env=None) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(a) for a in argv], cwd=cwd, capture_output=True, text=True,
                          env=env or clean_env(), timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"{argv} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return proc


def write_dist(path: Path, pyproject: str, module_name: str, module: str) -> Path:
    path.mkdir(parents=True)
    (path / "pyproject.toml").write_text(textwrap.dedent(pyproject))
    (path / f"{module_name}.py").write_text(module)
    return path


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    """A fresh venv with virtdoctor (from this repository) and two plugins: one good, one broken."""
    base = tmp_path_factory.mktemp("plugin-dist")
    src = base / "virtdoctor-src"
    src.mkdir()
    for name in SOURCES:  # a copy: building in the shared work tree would race with others
        s = REPO / name
        if s.is_dir():
            shutil.copytree(s, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(s, src / name)
    good = write_dist(base / "hello", GOOD_PYPROJECT, "virtdoctor_hello", GOOD_MODULE)
    broken = write_dist(base / "broken", BROKEN_PYPROJECT, "virtdoctor_broken", BROKEN_MODULE)
    sh([sys.executable, "-m", "venv", base / "venv"], cwd=base)
    bin_dir = base / "venv" / "bin"
    sh([bin_dir / "python", "-m", "pip", "install", "-q", "--disable-pip-version-check", src, good, broken], cwd=base)
    return bin_dir


@pytest.fixture
def root(tmp_path) -> Path:
    r = tmp_path / "root"
    (r / "etc").mkdir(parents=True)
    return r


def test_plugin_check_runs_and_a_broken_plugin_is_a_warning(venv, root, tmp_path):
    proc = sh([venv / "virtdoctor", "--offline", "--root", root, "--format", "json", "check"], cwd=tmp_path,
              check=False)
    assert proc.returncode in (1, 2), proc.stderr  # the hello check fails as a warning at least
    assert "Traceback" not in proc.stderr
    warnings = [l for l in proc.stderr.splitlines() if "warning" in l]
    assert warnings == ["virtdoctor: warning: plugin 'broken' (virtdoctor_broken) failed to load: ImportError: "
                        "virtdoctor_broken needs a library this host lacks"]
    doc = json.loads(proc.stdout)
    [hello] = [f for f in doc["findings"] if f["id"] == "hello-marker"]
    assert (hello["status"], hello["severity"], hello["message"]) == ("fail", "warning",
                                                                    "/etc/hello-marker is missing")
    assert any(f["id"] == "kvm-device-permission" for f in doc["findings"])  # built-ins still run

    (root / "etc" / "hello-marker").write_text("")
    proc = sh([venv / "virtdoctor", "--offline", "--root", root, "--format", "json", "check", "--only",
               "hello-marker"], cwd=tmp_path, check=False)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert [(f["id"], f["status"]) for f in doc["findings"]] == [("hello-marker", "pass")]


def test_plugin_check_is_listed(venv, tmp_path):
    proc = sh([venv / "virtdoctor", "--format", "json", "checks"], cwd=tmp_path)
    rows = {r["id"]: r for r in json.loads(proc.stdout)["checks"]}
    assert rows["hello-marker"]["plugin"] == "virtdoctor_hello"
    assert rows["hello-marker"]["area"] == "hello" and rows["hello-marker"]["severity"] == "warning"
    assert "daemon-socket-missing" in rows
    text = sh([venv / "virtdoctor", "checks"], cwd=tmp_path).stdout.splitlines()
    assert "hello" in text and any(l.split()[:1] == ["hello-marker"] for l in text)


def test_only_selects_the_plugin_check(venv, root, tmp_path):
    proc = sh([venv / "virtdoctor", "--offline", "--root", root, "check", "--only", "hello-marker"], cwd=tmp_path,
              check=False)
    assert proc.returncode == 1
    assert "WARN  hello-marker: /etc/hello-marker is missing" in proc.stdout
    assert "daemon-socket-missing" not in proc.stdout


@pytest.mark.parametrize("how", ["flag", "env"])
def test_no_plugins_leaves_them_out(venv, root, tmp_path, how):
    args = ["--no-plugins"] if how == "flag" else []
    env = clean_env(VIRTDOCTOR_DISABLE_PLUGINS="1") if how == "env" else None
    proc = sh([venv / "virtdoctor", *args, "--format", "json", "checks"], cwd=tmp_path, env=env)
    ids = {r["id"] for r in json.loads(proc.stdout)["checks"]}
    assert "hello-marker" not in ids and "daemon-socket-missing" in ids
    assert proc.stderr == ""  # the broken plugin is not even loaded: no warning
    proc = sh([venv / "virtdoctor", *args, "--offline", "--root", root, "check", "--only", "hello-marker"],
              cwd=tmp_path, check=False, env=env)
    assert proc.returncode == 3
    assert proc.stderr.strip().splitlines() == [
        "virtdoctor: unknown check slug: hello-marker (see 'virtdoctor checks')"]
