"""The Ansible collection virtdoctor.virtdoctor against an inventory of local hosts, each
with its own fake root (--root) and different failures, plus a host that cannot be reached:
ansible-core from PyPI in its own venv (cached under /var/cache/virtdoctor), the collection
built with ansible-galaxy, the example playbooks run as an operator would:

- check.yml: every reachable host's findings; the report callback's fleet document names the
  right hosts per slug and the unreachable one;
- fix.yml --check --diff: plans (changed where a safe fix is planned), nothing on disk changes;
- fix.yml: repairs what it may (changed where it fixed), a second run changes nothing.

`daemon-socket-missing` and `virtlogd-unavailable` are skipped everywhere and fix runs name
their checks (FIX_ONLY): plans that start daemons would start them on this machine, --root
cannot confine them to a fake root."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from tests.fleet.conftest import free_port

REPO = Path(__file__).resolve().parents[2]
COLLECTION = REPO / "contrib" / "ansible_collections" / "virtdoctor" / "virtdoctor"
ANSIBLE_CORE = "2.19.14"
CACHE = Path(os.environ.get("VIRTDOCTOR_ANSIBLE_VENV", f"/var/cache/virtdoctor/ansible-core-{ANSIBLE_CORE}"))
SKIP = ["daemon-socket-missing", "virtlogd-unavailable"]
# fix runs on fake roots are limited to checks whose plans stay below --root (a plan that
# starts a daemon would start it on this machine whatever --root says)
FIX_ONLY = ["daemon-log-dir-missing", "qemu-user-missing", "kvm-device-missing", "dbus-unavailable"]
ONLY = ("-e", json.dumps({"virtdoctor_only": FIX_ONLY}))


def _require(msg):
    if os.environ.get("VIRTDOCTOR_REQUIRE_LIVE", "") not in ("", "0"):
        pytest.fail(f"VIRTDOCTOR_REQUIRE_LIVE=1 but {msg}", pytrace=False)
    pytest.skip(msg)


@pytest.fixture(scope="session")
def ansible_venv() -> Path:
    """ansible-core from PyPI in a venv of its own, made once and reused."""
    exe = CACHE / "bin" / "ansible-playbook"
    if not exe.exists():
        base = getattr(sys, "_base_executable", sys.executable)
        try:
            shutil.rmtree(CACHE, ignore_errors=True)
            CACHE.parent.mkdir(parents=True, exist_ok=True)
            subprocess.run([base, "-m", "venv", str(CACHE)], check=True, capture_output=True, timeout=300)
            subprocess.run([str(CACHE / "bin" / "pip"), "install", "-q", "--disable-pip-version-check",
                            f"ansible-core=={ANSIBLE_CORE}"], check=True, capture_output=True, text=True, timeout=600)
        except (subprocess.CalledProcessError, OSError, subprocess.TimeoutExpired) as exc:
            shutil.rmtree(CACHE, ignore_errors=True)
            _require(f"cannot install ansible-core {ANSIBLE_CORE} into {CACHE}: "
                     f"{getattr(exc, 'stderr', '') or exc}")
    return CACHE / "bin"


@pytest.fixture(scope="session")
def collections_path(ansible_venv, tmp_path_factory) -> Path:
    """The collection built with ansible-galaxy and installed from its tarball, as a user would."""
    out = tmp_path_factory.mktemp("galaxy")
    build = subprocess.run([str(ansible_venv / "ansible-galaxy"), "collection", "build", str(COLLECTION),
                            "--output-path", str(out)], capture_output=True, text=True, timeout=120)
    assert build.returncode == 0, build.stdout + build.stderr
    (tarball,) = out.glob("virtdoctor-virtdoctor-*.tar.gz")
    with tarfile.open(tarball) as tf:
        names = tf.getnames()
    for need in ("galaxy.yml", "MANIFEST.json", "plugins/modules/virtdoctor_check.py",
                 "plugins/modules/virtdoctor_fix.py", "plugins/callback/report.py",
                 "roles/install/tasks/main.yml", "roles/textfile/tasks/main.yml", "playbooks/fix.yml"):
        assert need in names or need == "galaxy.yml", (need, names)
    dest = out / "collections"
    inst = subprocess.run([str(ansible_venv / "ansible-galaxy"), "collection", "install", str(tarball), "-p",
                           str(dest)], capture_output=True, text=True, timeout=120)
    assert inst.returncode == 0, inst.stdout + inst.stderr
    return dest


def make_roots(base: Path) -> dict[str, Path]:
    roots = {}
    # hv-logs: only /etc: the daemon's log directories are missing (a safe fix)
    r = base / "hv-logs"
    (r / "etc").mkdir(parents=True)
    roots["hv-logs"] = r
    # hv-qemu: log directories there, qemu.conf names an account that does not exist (manual fix)
    r = base / "hv-qemu"
    for d in ("var/log/libvirt/qemu", "etc/libvirt"):
        (r / d).mkdir(parents=True, mode=0o700)
    (r / "etc/libvirt/qemu.conf").write_text('user = "libvirt-qemu"\ngroup = "kvm"\n')
    (r / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (r / "etc/group").write_text("root:x:0:\n")
    roots["hv-qemu"] = r
    # hv-tidy: log directories there, no libvirt configuration
    r = base / "hv-tidy"
    (r / "var/log/libvirt/qemu").mkdir(parents=True, mode=0o700)
    (r / "etc").mkdir()
    roots["hv-tidy"] = r
    return roots


def snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): (p.stat().st_mode, p.read_bytes() if p.is_file() else None)
            for p in sorted(root.rglob("*"))}


def player(tmp_path: Path, ansible_venv: Path, collections_path: Path, hosts: list[str], extra_vars=()):
    """ansible-playbook on an inventory of these host lines (group `hypervisors`, connection
    local unless a line says otherwise); each run's fleet document, JUnit file and recap."""
    lines = ["[hypervisors]", *hosts, "", "[hypervisors:vars]", "ansible_connection=local",
             f"ansible_python_interpreter={ansible_venv / 'python'}",
             f"virtdoctor_skip={json.dumps(SKIP)}", "virtdoctor_serial=2", *extra_vars]
    inventory = tmp_path / "hosts.ini"
    inventory.write_text("\n".join(lines) + "\n")
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(collections_path),
               ANSIBLE_CALLBACKS_ENABLED="virtdoctor.virtdoctor.report",
               ANSIBLE_HOST_KEY_CHECKING="False", ANSIBLE_LOCAL_TEMP=str(tmp_path / "ansible-tmp"),
               ANSIBLE_REMOTE_TEMP=str(tmp_path / "ansible-remote-tmp"), ANSIBLE_NOCOLOR="1",
               ANSIBLE_SSH_ARGS="-o ConnectTimeout=3 -o BatchMode=yes",
               PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")
    env.pop("ANSIBLE_CONFIG", None)

    def play(name, *args, report=None):
        report = report or tmp_path / f"fleet-{name}-{time.monotonic_ns()}.json"
        junit = report.with_suffix(".xml")
        e = dict(env, VIRTDOCTOR_FLEET_REPORT=str(report), VIRTDOCTOR_FLEET_JUNIT=str(junit))
        t0 = time.monotonic()
        proc = subprocess.run([str(ansible_venv / "ansible-playbook"), "-i", str(inventory),
                               f"virtdoctor.virtdoctor.{name}", *args], capture_output=True, text=True, env=e,
                              timeout=600, cwd=tmp_path)
        proc.elapsed = time.monotonic() - t0
        proc.fleet = json.loads(report.read_text()) if report.exists() else None
        proc.junit = junit
        proc.recap = {m.group(1): {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m.group(2))}
                      for m in re.finditer(r"^(\S+)\s+:\s+(ok=.*)$", proc.stdout, re.M)}
        return proc

    return play


@pytest.fixture
def fleet(tmp_path, ansible_venv, collections_path):
    roots = make_roots(tmp_path / "roots")
    dead = free_port()  # nothing listens there: the host is unreachable
    hosts = [f"{name} virtdoctor_root={root}" for name, root in roots.items()]
    hosts.append(f"hv-gone ansible_connection=ssh ansible_host=127.0.0.1 ansible_port={dead} ansible_user=nobody")
    return roots, player(tmp_path, ansible_venv, collections_path, hosts)


def test_check_playbook_fleet_document(fleet):
    roots, play = fleet
    before = {n: snapshot(r) for n, r in roots.items()}
    proc = play("check", "-e", "virtdoctor_fail_on=never")
    out = proc.stdout + proc.stderr
    assert proc.fleet is not None, out
    doc = proc.fleet
    assert doc["unreachable"] == ["hv-gone"], out
    assert sorted(doc["hosts"]) == sorted(roots), out
    assert doc["failing"]["daemon-log-dir-missing"] == ["hv-logs"]
    assert doc["failing"]["qemu-user-missing"] == ["hv-qemu"]
    # what no fake root has is failing everywhere
    assert doc["failing"]["kvm-device-missing"] == sorted(roots)
    # the document agrees with each host's own run
    for name, root in roots.items():
        own = subprocess.run([sys.executable, "-m", "virtdoctor", "--root", str(root), "--format", "json",
                              "check", f"--skip={','.join(SKIP)}"], capture_output=True, text=True, timeout=120)
        own_doc = json.loads(own.stdout)
        host = doc["hosts"][name]
        assert host["rc"] == own.returncode
        assert host["failing"] == sorted({f["id"] for f in own_doc["findings"] if f["status"] == "fail"})
        assert host["target"]["root"] == str(root)
        assert host["summary"] == own_doc["summary"]
        for slug in host["failing"]:
            assert name in doc["failing"][slug]
    assert all(r["changed"] == 0 for r in proc.recap.values()), proc.recap
    assert proc.recap["hv-gone"]["unreachable"] == 1
    assert {n: snapshot(r) for n, r in roots.items()} == before  # checking changes nothing
    # the JUnit file: a suite per host, the unreachable one as an error
    import xml.etree.ElementTree as ET

    top = ET.parse(proc.junit).getroot()
    suites = {s.get("name"): s for s in top.findall("testsuite")}
    assert set(suites) == set(roots) | {"hv-gone"}
    assert suites["hv-gone"].find("testcase/error") is not None
    fails = {c.get("name") for c in suites["hv-logs"].findall("testcase") if c.find("failure") is not None}
    assert fails == set(doc["hosts"]["hv-logs"]["failing"])
    print(f"\nfleet document: {len(json.dumps(doc))} bytes for {len(roots)} hosts; check.yml took {proc.elapsed:.1f} s")


def test_check_fails_the_task_on_errors_and_on_virtdoctor_errors(fleet, tmp_path):
    roots, play = fleet
    proc = play("check")  # fail_on: error (default): every fake root has failing errors
    assert all(proc.recap[n]["failed"] == 1 for n in roots), proc.stdout
    assert "virtdoctor: " in proc.stdout and "failing: " in proc.stdout
    # virtdoctor cannot run (a --root that is not a directory): its own message, the task fails
    proc = play("check", "-e", f"virtdoctor_root={tmp_path / 'no-such-root'}", "-e", "virtdoctor_fail_on=never")
    assert all(proc.recap[n]["failed"] == 1 for n in roots), proc.stdout
    assert f"--root {tmp_path / 'no-such-root'}: not a directory" in proc.stdout
    assert sorted(proc.fleet["errors"]) == sorted(roots)


def test_fix_check_mode_then_fix_then_nothing(fleet):
    roots, play = fleet
    before = {n: snapshot(r) for n, r in roots.items()}
    dry = play("fix", "--check", "--diff", *ONLY)
    out = dry.stdout + dry.stderr
    assert {n: snapshot(r) for n, r in roots.items()} == before, out  # check mode changes nothing
    assert dry.recap["hv-logs"]["changed"] >= 1, out  # a safe fix is planned there
    assert dry.recap["hv-qemu"]["changed"] == 0 and dry.recap["hv-tidy"]["changed"] == 0, out
    assert dry.recap["hv-gone"]["unreachable"] == 1
    planned = {a["id"] for a in dry.fleet["hosts"]["hv-logs"]["fix"] if a["status"] == "planned"}
    assert planned == {"daemon-log-dir-missing"}, dry.fleet["hosts"]["hv-logs"]["fix"]
    assert "$ mkdir -p -m 0700 /var/log/libvirt" in dry.stdout  # --diff shows the plan

    t0 = time.monotonic()
    real = play("fix", *ONLY)
    out = real.stdout + real.stderr
    assert real.recap["hv-logs"]["changed"] >= 1 and real.recap["hv-logs"]["failed"] == 0, out
    assert real.recap["hv-qemu"]["changed"] == 0 and real.recap["hv-tidy"]["changed"] == 0, out
    fixed = {a["id"] for a in real.fleet["hosts"]["hv-logs"]["fix"] if a["status"] == "fixed"}
    assert fixed == {"daemon-log-dir-missing"}
    for d in ("var/log/libvirt", "var/log/libvirt/qemu"):
        assert (roots["hv-logs"] / d).is_dir()
    # fix.yml checks again after fixing: the fleet document shows the repaired state
    assert "daemon-log-dir-missing" not in real.fleet["failing"]
    assert real.fleet["failing"]["qemu-user-missing"] == ["hv-qemu"]
    elapsed = time.monotonic() - t0

    again = play("fix", *ONLY)
    assert all(again.recap[n]["changed"] == 0 and again.recap[n]["failed"] == 0 for n in roots), again.stdout
    print(f"\nfix.yml on {len(roots)} local hosts: {elapsed:.1f} s")


def test_install_and_textfile_roles(tmp_path, ansible_venv, collections_path):
    """textfile.yml on this machine: the install role makes a venv from a wheel built from this
    repository (copied from the controller), reusing Debian's python3-libvirt; the textfile
    role, without systemd here, writes a cron.d entry whose command writes the textfile."""
    wheels = tmp_path / "wheels"
    from tests.unit.test_packaging import copy_sources

    src = copy_sources(tmp_path / "src")
    build = subprocess.run([sys.executable, "-m", "build", "--wheel", "--outdir", str(wheels), str(src)],
                           capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert build.returncode == 0, build.stdout[-2000:] + build.stderr[-2000:]
    (wheel,) = wheels.glob("virtdoctor-*.whl")
    venv = tmp_path / "opt-virtdoctor"
    textdir = tmp_path / "textfile"
    cron_name = f"vdtest-virtdoctor-textfile-{os.getpid()}"
    cron_file = Path("/etc/cron.d") / cron_name
    extra = {"virtdoctor_venv": str(venv), "virtdoctor_wheel": str(wheel), "virtdoctor_link": False,
             "virtdoctor_executable": str(venv / "bin" / "virtdoctor"), "virtdoctor_textfile_dir": str(textdir),
             "virtdoctor_textfile_cron_file": cron_name, "virtdoctor_textfile_args": ["--offline"]}
    play = player(tmp_path, ansible_venv, collections_path, ["localhost"])
    try:
        t0 = time.monotonic()
        proc = play("textfile", "-e", json.dumps(extra))
        out = proc.stdout + proc.stderr
        assert proc.recap["localhost"]["failed"] == 0, out
        assert (venv / "bin" / "virtdoctor").exists()
        # the venv reuses the distribution's libvirt bindings
        probe = subprocess.run([str(venv / "bin" / "python"), "-c", "import libvirt; print(libvirt.__file__)"],
                               capture_output=True, text=True, timeout=60)
        assert probe.returncode == 0 and probe.stdout.startswith("/usr/lib/python3/dist-packages/"), probe
        job = [line for line in cron_file.read_text().splitlines() if line and not line.startswith("#")]
        assert len(job) == 1 and "--textfile" in job[0], job
        fields = job[0].split(None, 6)  # m h dom mon dow user command
        assert fields[5] == "root"
        run = subprocess.run(["sh", "-c", fields[6].replace(">/dev/null 2>&1", "")], timeout=120,
                             capture_output=True, text=True)
        assert run.returncode in (0, 1, 2), (fields[6], run.stdout, run.stderr)
        fams = {f.name for f in __import__("prometheus_client.parser", fromlist=["x"]).text_string_to_metric_families(
            (textdir / "virtdoctor.prom").read_text())}
        assert {"virtdoctor_check_failures", "virtdoctor_last_run_exit_code"} <= fams
        again = play("textfile", "-e", json.dumps(extra))
        assert again.recap["localhost"]["changed"] == 0 and again.recap["localhost"]["failed"] == 0, again.stdout
        print(f"\ntextfile.yml (install from a wheel + cron): {time.monotonic() - t0:.1f} s")
    finally:
        cron_file.unlink(missing_ok=True)
