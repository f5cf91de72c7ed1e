"""Packaging: the wheel `python -m build --wheel` makes installs into a fresh venv with a
working `virtdoctor` and `python -m virtdoctor`, lists the built-in checks, carries the
knowledge files under virtdoctor/knowledge_data, and installs no top-level `checks` or
`knowledge` package. An editable install works too."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from virtdoctor import __version__

REPO = Path(__file__).resolve().parents[2]
SOURCES = ("pyproject.toml", "README.md", "virtdoctor", "checks", "knowledge")
BUILTIN = ("daemon-socket-missing", "daemon-log-dir-missing", "kvm-device-permission")

pytest.importorskip("build", reason="the `build` package (test extra) is not installed in this venv")


def clean_env() -> dict:
    """No PYTHONPATH, no plugins from outside: the venv alone decides what is importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["VIRTDOCTOR_DISABLE_PLUGINS"] = "1"
    return env


def sh(argv, cwd, check=True, timeout=300) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(a) for a in argv], cwd=cwd, capture_output=True, text=True, env=clean_env(),
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{argv} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return proc


def copy_sources(dest: Path) -> Path:
    """The project as a source distribution would carry it (no build/ or egg-info of others)."""
    dest.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in SOURCES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=ignore)
        else:
            shutil.copy2(src, dest / name)
    return dest


def new_venv(path: Path) -> Path:
    sh([sys.executable, "-m", "venv", path], cwd=path.parent)
    return path / "bin"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("wheel")
    src = copy_sources(base / "src")
    sh([sys.executable, "-m", "build", "--wheel", "--outdir", base / "dist", src], cwd=base)
    [whl] = (base / "dist").glob("virtdoctor-*.whl")
    return whl


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("venv")
    bin_dir = new_venv(base / "venv")
    sh([bin_dir / "python", "-m", "pip", "install", "-q", "--disable-pip-version-check", wheel], cwd=base)
    return bin_dir


def test_wheel_layout(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert tops == {"virtdoctor", f"virtdoctor-{__version__}.dist-info"}, tops
    knowledge = [n for n in names if n.startswith("virtdoctor/knowledge_data/") and n.endswith(".toml")]
    assert {Path(n).name for n in knowledge} == {p.name for p in (REPO / "knowledge").glob("*.toml")}
    assert "virtdoctor/checks/daemon.py" in names and "virtdoctor/checks/kvm.py" in names
    eps = zipfile.ZipFile(wheel).read(f"virtdoctor-{__version__}.dist-info/entry_points.txt").decode()
    assert "virtdoctor = virtdoctor.cli:main" in eps


def test_installed_commands(installed, tmp_path):
    out = sh([installed / "virtdoctor", "--version"], cwd=tmp_path).stdout
    assert out == f"virtdoctor {__version__}\n"
    out = sh([installed / "python", "-m", "virtdoctor", "--version"], cwd=tmp_path).stdout
    assert out == f"virtdoctor {__version__}\n"
    rows = json.loads(sh([installed / "virtdoctor", "--format", "json", "checks"], cwd=tmp_path).stdout)["checks"]
    ids = {r["id"] for r in rows}
    assert set(BUILTIN) <= ids
    assert all(r["plugin"].startswith("virtdoctor.checks.") for r in rows)
    text = sh([installed / "virtdoctor", "checks"], cwd=tmp_path).stdout
    assert "daemon-socket-missing" in text


def test_installed_check_runs_from_the_install(installed, tmp_path):
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    proc = sh([installed / "virtdoctor", "--offline", "--root", root, "--format", "json", "check"], cwd=tmp_path,
              check=False)
    assert proc.returncode in (0, 1, 2), proc.stderr
    doc = json.loads(proc.stdout)
    assert set(BUILTIN) <= {f["id"] for f in doc["findings"]}
    assert doc["summary"]["error"] == 0, [f for f in doc["findings"] if f["status"] == "error"]
    where = sh([installed / "python", "-c", "import virtdoctor, virtdoctor.checks; "
                "print(virtdoctor.__file__); print(virtdoctor.checks.__file__)"], cwd=tmp_path).stdout.split()
    site = Path(where[0]).parents[1]
    assert site.name == "site-packages" and all(str(site) in w for w in where)


def test_knowledge_is_inside_the_package(installed, tmp_path):
    code = ("import pathlib, virtdoctor.knowledge_data as k; d = pathlib.Path(k.__file__).parent; "
            "print(d); print(len(list(d.glob('*.toml'))))")
    where, count = sh([installed / "python", "-c", code], cwd=tmp_path).stdout.split()
    assert where.endswith("site-packages/virtdoctor/knowledge_data")
    assert int(count) == len(list((REPO / "knowledge").glob("*.toml"))) > 0
    assert (Path(where) / "kvm-device-permission.toml").exists()


def test_no_top_level_checks_or_knowledge_package(installed, tmp_path):
    site = Path(sh([installed / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                   cwd=tmp_path).stdout.strip())
    for name in ("checks", "knowledge"):
        assert not (site / name).exists()
        proc = sh([installed / "python", "-c", f"import {name}"], cwd=tmp_path, check=False)
        assert proc.returncode != 0 and "ModuleNotFoundError" in proc.stderr
    record = next(site.glob("virtdoctor-*.dist-info")) / "RECORD"
    tops = {line.split("/")[0].split(",")[0] for line in record.read_text().splitlines()}
    assert not {"checks", "knowledge"} & tops


def test_editable_install(tmp_path):
    src = copy_sources(tmp_path / "src")
    bin_dir = new_venv(tmp_path / "venv")
    sh([bin_dir / "python", "-m", "pip", "install", "-q", "--disable-pip-version-check", "-e", src], cwd=tmp_path)
    assert sh([bin_dir / "virtdoctor", "--version"], cwd=tmp_path).stdout == f"virtdoctor {__version__}\n"
    where = sh([bin_dir / "python", "-c", "import virtdoctor.checks.daemon as d, virtdoctor.knowledge_data as k; "
                "print(d.__file__); print(k.__file__)"], cwd=tmp_path).stdout.split()
    assert where[0] == str(src / "checks" / "daemon.py")  # edits in the tree take effect
    assert where[1] == str(src / "knowledge" / "__init__.py")
    rows = json.loads(sh([bin_dir / "virtdoctor", "--format", "json", "checks"], cwd=tmp_path).stdout)["checks"]
    assert set(BUILTIN) <= {r["id"] for r in rows}
    proc = sh([bin_dir / "python", "-c", "import checks"], cwd=tmp_path, check=False)
    assert proc.returncode != 0
