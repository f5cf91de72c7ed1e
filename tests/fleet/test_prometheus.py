"""node_exporter's textfile collector serves what `virtdoctor check --textfile` writes:
the test starts Debian's prometheus-node-exporter on 127.0.0.1 (a free port, only the
textfile collector, a temporary directory), scrapes it over HTTP and finds virtdoctor's
series; `promtool check metrics` accepts the file and `promtool test rules` passes on
contrib/prometheus/tests/. node_exporter is stopped by its pid."""
from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.fleet.conftest import free_port, need_tool

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "contrib" / "prometheus"


def virtdoctor(*argv, **kw):
    return subprocess.run([sys.executable, "-m", "virtdoctor", *map(str, argv)], capture_output=True, text=True,
                          timeout=120, **kw)


@pytest.fixture
def node_exporter(tmp_path):
    exe = need_tool("prometheus-node-exporter")
    textdir = tmp_path / "textfile"
    textdir.mkdir()
    port = free_port()
    proc = subprocess.Popen([exe, f"--web.listen-address=127.0.0.1:{port}", "--collector.disable-defaults",
                             "--collector.textfile", f"--collector.textfile.directory={textdir}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                urllib.request.urlopen(url, timeout=2).read()
                break
            except OSError:
                if proc.poll() is not None:
                    pytest.fail(f"node_exporter exited {proc.returncode}: {proc.stderr.read()[-2000:]}")
                if time.monotonic() > deadline:
                    pytest.fail("node_exporter did not answer within 15 s")
                time.sleep(0.1)
        yield textdir, url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def scrape(url):
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    return text, {f.name: f for f in text_string_to_metric_families(text)}


@pytest.fixture
def root(fake_root):
    fake_root.mkdir("/etc")
    return fake_root


def test_node_exporter_serves_the_textfile(node_exporter, root):
    textdir, url = node_exporter
    path = textdir / "virtdoctor.prom"
    listing = json.loads(virtdoctor("--offline", "--root", root, "--format", "json", "checks").stdout)
    proc = virtdoctor("--offline", "--root", root, "--format", "json", "check", "--textfile", path)
    assert proc.returncode == 2, proc.stderr
    doc = json.loads(proc.stdout)
    text, fams = scrape(url)
    assert "virtdoctor_check_failures" in fams, text[:2000]
    # node_exporter read the file without error and serves every series of it
    assert [s.value for s in fams["node_textfile_scrape_error"].samples] == [0.0]
    mtimes = {s.labels["file"]: s.value for s in fams["node_textfile_mtime_seconds"].samples}
    assert set(mtimes) == {str(path)} or set(mtimes) == {"virtdoctor.prom"}
    failures = {s.labels["id"]: s.value for s in fams["virtdoctor_check_failures"].samples}
    assert set(failures) == {c["id"] for c in listing["checks"]}
    failing = {f["id"] for f in doc["findings"] if f["status"] == "fail"}
    assert failing and {k for k, v in failures.items() if v > 0} == failing
    served = {(s.labels["id"], s.labels["subject"], s.labels["status"]) for s in fams["virtdoctor_finding"].samples}
    assert served == {(f["id"], f["subject"], f["status"]) for f in doc["findings"] if f["status"] != "pass"}
    assert fams["virtdoctor_last_run_exit_code"].samples[0].value == 2
    file_fams = {f.name: f for f in text_string_to_metric_families(path.read_text())}
    for name, fam in file_fams.items():
        def key(samples):
            return sorted((x.name, sorted(x.labels.items()), float(x.value)) for x in samples)

        assert key(fam.samples) == key(fams[name].samples), name

    # a rewrite is picked up on the next scrape, never half written
    proc = virtdoctor("--offline", "--root", root, "check", "--only", "kvm-device-missing", "--textfile", path)
    _, fams = scrape(url)
    assert {s.labels["id"] for s in fams["virtdoctor_check_failures"].samples} == {"kvm-device-missing"}
    assert fams["virtdoctor_last_run_exit_code"].samples[0].value == proc.returncode
    assert [s.value for s in fams["node_textfile_scrape_error"].samples] == [0.0]


def test_promtool_check_metrics_accepts_the_file(root, tmp_path):
    promtool = need_tool("promtool")
    path = tmp_path / "virtdoctor.prom"
    proc = virtdoctor("--offline", "--root", root, "check", "--textfile", path)
    assert proc.returncode == 2, proc.stderr
    lint = subprocess.run([promtool, "check", "metrics"], stdin=path.open(), capture_output=True, text=True,
                          timeout=60)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    assert lint.stdout.strip() == "" and lint.stderr.strip() == ""


def test_promtool_rules():
    promtool = need_tool("promtool")
    check = subprocess.run([promtool, "check", "rules", RULES / "virtdoctor.rules.yml"], capture_output=True,
                           text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS: 3 rules found" in check.stdout
    tests = sorted((RULES / "tests").glob("*.yml"))
    assert tests
    proc = subprocess.run([promtool, "test", "rules", *tests], capture_output=True, text=True, timeout=60,
                          cwd=RULES / "tests")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout and "FAILED" not in proc.stdout
