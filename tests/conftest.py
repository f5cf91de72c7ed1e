"""Test-suite policy shared by every test: the `live` marker, and the `fake_root` fixture.

Live tests (marker `live`; everything under tests/live/ gets it) use the real daemon. They
need root, libvirt-python and a `qemu:///system` that answers; one session-wide probe decides
that, the first time a live test runs:

- prerequisites missing: the live test skips with the reason, or, with
  VIRTDOCTOR_REQUIRE_LIVE=1 (what `make test` sets after preparing the host), fails with it;
- prerequisites present and VIRTDOCTOR_REQUIRE_LIVE=1: a live test that skips anyway (a
  pytest.skip in its body or a fixture) fails. Allowed: skips declared by a skip/skipif marker,
  and tests marked `needs_kvm` when QEMU's account cannot use /dev/kvm.

The terminal summary gets a "virtdoctor live tests" section: which live tests ran and which
skipped, and why. VIRTDOCTOR_TEST_URI overrides the URI probed (default qemu:///system).
"""
from __future__ import annotations

import dataclasses
import os
import re
import sys
from pathlib import Path

import pytest

REQUIRE_ENV = "VIRTDOCTOR_REQUIRE_LIVE"
PROBE_TIMEOUT = 10.0

MARKERS = {
    "live": "live: needs root, a running libvirt daemon and QEMU on this machine",
    "needs_kvm": "needs_kvm: needs /dev/kvm usable by the account QEMU runs as (else skipped)",
}


def _require_live() -> bool:
    return os.environ.get(REQUIRE_ENV, "") not in ("", "0")


# --------------------------------------------------------------------------- live prerequisites

@dataclasses.dataclass(frozen=True)
class LiveHost:
    """What the session-wide probe found. `ok` is False with `reason` when a live test cannot run;
    `kvm` says whether QEMU's account can open /dev/kvm and it answers, `kvm_reason` why not."""
    ok: bool
    reason: str
    uri: str
    libvirt_version: str = ""
    kvm: bool = False
    kvm_reason: str = ""

    def describe(self) -> str:
        if not self.ok:
            return f"prerequisites missing: {self.reason}"
        accel = "KVM usable" if self.kvm else f"no KVM ({self.kvm_reason}), TCG guests"
        return f"root, libvirt-python, {self.uri} answers (libvirt {self.libvirt_version}), {accel}"


def _vmhelpers():
    """tests/live/vmhelpers.py, which owns every helper that touches the host; imported only
    when a live test runs, under the name live tests import it by."""
    live_dir = str(Path(__file__).parent / "live")
    if live_dir not in sys.path:
        sys.path.insert(0, live_dir)
    import vmhelpers
    return vmhelpers


def probe_live_host() -> LiveHost:
    helpers = _vmhelpers()
    uri = helpers.live_uri()
    if os.geteuid() != 0:
        return LiveHost(False, "not root", uri)
    try:
        import libvirt  # noqa: F401
    except ImportError as exc:
        return LiveHost(False, f"libvirt-python is not importable ({exc})", uri)
    try:
        conn = helpers.open_with_timeout(uri, PROBE_TIMEOUT)
    except RuntimeError as exc:
        return LiveHost(False, str(exc), uri)
    try:
        version = helpers.version_text(conn.getLibVersion())
    finally:
        conn.close()
    kvm, kvm_reason = helpers.kvm_usable_by_qemu()
    return LiveHost(True, "", uri, version, kvm, kvm_reason)


_live_key = pytest.StashKey[LiveHost]()
_allowed_skip_key = pytest.StashKey[str]()
_records_key = pytest.StashKey[dict]()


def live_host_of(config: pytest.Config) -> LiveHost:
    """The probe's verdict, computed once per session."""
    if _live_key not in config.stash:
        config.stash[_live_key] = probe_live_host()
    return config.stash[_live_key]


@pytest.fixture(scope="session")
def live_host(request) -> LiveHost:
    """The session's LiveHost (ok, reason, uri, libvirt_version, kvm, kvm_reason)."""
    return live_host_of(request.config)


# --------------------------------------------------------------------------- hooks

def pytest_configure(config):
    declared = "\n".join(config.getini("markers"))
    for name, line in MARKERS.items():
        if not re.search(rf"^{name}\b", declared, re.M):
            config.addinivalue_line("markers", line)
    config.stash[_records_key] = {}


# Plain order: after pytest's skip/skipif markers (tryfirst, so a declared skip wins), before the
# runner sets up fixtures (so a test whose prerequisites are missing never reaches them).
def pytest_runtest_setup(item):
    if item.get_closest_marker("live") is None:
        return
    host = live_host_of(item.config)
    if not host.ok:
        if _require_live():
            pytest.fail(f"{REQUIRE_ENV}=1 but live prerequisites are missing: {host.reason}",
                        pytrace=False)
        pytest.skip(f"live prerequisites missing: {host.reason}")
    if item.get_closest_marker("needs_kvm") is not None and not host.kvm:
        reason = f"needs_kvm: {host.kvm_reason}"
        item.stash[_allowed_skip_key] = reason
        pytest.skip(reason)


def _skip_reason(report) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        reason = str(longrepr[2])
    else:
        reason = str(longrepr)
    return reason.removeprefix("Skipped: ")


def _skipped_by_marker(item) -> bool:
    """Whether a skip/skipif marker declares this skip (pytest's own evaluation, else a rougher
    look at the markers: the helper is private API)."""
    try:
        from _pytest.skipping import evaluate_skip_marks
        return evaluate_skip_marks(item) is not None
    except Exception:
        return item.get_closest_marker("skip") is not None or any(
            (m.args and m.args[0] is True) or m.kwargs.get("condition") is True
            for m in item.iter_markers("skipif"))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if item.get_closest_marker("live") is None:
        return
    records = item.config.stash[_records_key]
    if report.skipped:
        host = item.config.stash.get(_live_key, None)
        allowed = (_allowed_skip_key in item.stash or _skipped_by_marker(item)
                   or hasattr(report, "wasxfail"))
        reason = _skip_reason(report)
        if _require_live() and host is not None and host.ok and not allowed:
            report.outcome = "failed"
            report.longrepr = (f"live test skipped although its prerequisites are present "
                               f"({REQUIRE_ENV}=1): {reason}")
            records[item.nodeid] = ("failed", f"skipped in {report.when}: {reason}")
        else:
            records[item.nodeid] = ("skipped", reason)
    elif report.failed:
        records[item.nodeid] = ("failed" if report.when == "call" else "error", report.when)
    elif report.when == "call":
        records[item.nodeid] = ("passed", "")


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    records = config.stash.get(_records_key, {})
    if not records:
        return
    tr = terminalreporter
    tr.section("virtdoctor live tests")
    host = config.stash.get(_live_key, None)
    if host is not None:
        tr.line(f"host: {host.describe()}")
    ran = {k: v for k, v in records.items() if v[0] != "skipped"}
    skipped = {k: v for k, v in records.items() if v[0] == "skipped"}
    tr.line(f"ran {len(ran)}, skipped {len(skipped)}"
            + (f" ({REQUIRE_ENV}=1: unexpected skips fail)" if _require_live() else ""))
    for nodeid, (status, detail) in ran.items():
        tr.line(f"  RAN     {status:7} {nodeid}" + (f" ({detail})" if status != "passed" else ""))
    for nodeid, (_, reason) in skipped.items():
        tr.line(f"  SKIPPED         {nodeid}: {reason}")


# --------------------------------------------------------------------------- fake host trees

class FakeRoot:
    """A fake host tree below a temporary directory, for `--root` and facts tests.

    Paths are written as on a real host ("/etc/libvirt/qemu.conf"); `path()` maps them below
    the fake root. Ownership that a test cannot chown stays the test's own: give it to the
    facts layer's stat table instead: `chown` and `device` record what stat() should say in
    `stat_table`, which `facts()` (and the `fake_host` fixture) hand to HostFacts as its stat
    overlay, so tests of device nodes and ownership run without root.
    """

    def __init__(self, base: Path):
        self.base = Path(base)
        self.base.mkdir(parents=True, exist_ok=True)
        self.stat_table: dict[str, dict[str, int]] = {}

    def chown(self, host_path, uid: int, gid: int) -> Path:
        """What stat() of HOST_PATH reports as owner and group (no privilege needed)."""
        key = "/" + os.path.normpath(os.fspath(host_path)).lstrip("/")
        self.stat_table.setdefault(key, {}).update(uid=uid, gid=gid)
        return self.path(host_path)

    def device(self, host_path, major: int, minor: int, mode: int = 0o660, uid: int = 0, gid: int = 0,
               kind: str = "c") -> Path:
        """A device node as stat() reports it (char or block, major:minor, mode, owner): an
        empty file whose stat the facts layer overlays, where mknod would need root. The type
        comes from the table, the permission bits from the file (a fix's chmod shows)."""
        import stat as _stat

        real = self.write(host_path, "", mode)
        key = "/" + os.path.normpath(os.fspath(host_path)).lstrip("/")
        ftype = _stat.S_IFCHR if kind == "c" else _stat.S_IFBLK
        self.stat_table[key] = {"type": ftype, "uid": uid, "gid": gid, "rdev": os.makedev(major, minor)}
        return real

    def facts(self, **kw):
        """HostFacts of this tree with its stat overlay (processes: none unless given)."""
        from virtdoctor.facts import HostFacts

        kw.setdefault("processes_override", [])
        return HostFacts(root=str(self.base), stat_overlay=self.stat_table, **kw)

    def __str__(self) -> str:  # usable as `--root str(root)`
        return str(self.base)

    def __fspath__(self) -> str:
        return str(self.base)

    def path(self, host_path: str | os.PathLike) -> Path:
        """The real path of `host_path` inside the fake root."""
        rel = os.path.normpath("/" + os.fspath(host_path)).lstrip("/")
        return self.base / rel if rel else self.base

    def mkdir(self, host_path, mode: int = 0o755) -> Path:
        """Create a directory (and its parents, mode 0755); set `mode` on the last one."""
        real = self.path(host_path)
        real.mkdir(parents=True, exist_ok=True)
        os.chmod(real, mode)
        return real

    def write(self, host_path, text: str | bytes = "", mode: int = 0o644) -> Path:
        """Write a file (parents created) and give it `mode`."""
        real = self.path(host_path)
        real.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(text, bytes):
            real.write_bytes(text)
        else:
            real.write_text(text)
        os.chmod(real, mode)
        return real

    def read(self, host_path) -> str:
        return self.path(host_path).read_text()

    def symlink(self, host_path, target: str) -> Path:
        """Create HOST_PATH as a symlink to TARGET, kept verbatim: an absolute target means a
        host path, as in a mounted image (the facts layer resolves it below the root)."""
        real = self.path(host_path)
        real.parent.mkdir(parents=True, exist_ok=True)
        if real.is_symlink() or real.exists():
            real.unlink()
        os.symlink(target, real)
        return real

    def passwd(self, entries) -> Path:
        """Write /etc/passwd. Each entry: a full line, or (name, uid, gid[, home[, shell]])."""
        lines = []
        for e in entries:
            if isinstance(e, str):
                lines.append(e)
            else:
                name, uid, gid, *rest = e
                home = rest[0] if rest else "/nonexistent"
                shell = rest[1] if len(rest) > 1 else "/usr/sbin/nologin"
                lines.append(f"{name}:x:{uid}:{gid}::{home}:{shell}")
        return self.write("/etc/passwd", "".join(l.rstrip("\n") + "\n" for l in lines))

    def group(self, entries) -> Path:
        """Write /etc/group. Each entry: a full line, or (name, gid[, members])."""
        lines = []
        for e in entries:
            if isinstance(e, str):
                lines.append(e)
            else:
                name, gid, *rest = e
                members = rest[0] if rest else ()
                if isinstance(members, str):
                    members = [members] if members else []
                lines.append(f"{name}:x:{gid}:{','.join(members)}")
        return self.write("/etc/group", "".join(l.rstrip("\n") + "\n" for l in lines))


@pytest.fixture
def fake_root(tmp_path) -> FakeRoot:
    """An empty fake host tree below tmp_path/root; see FakeRoot."""
    return FakeRoot(tmp_path / "root")


@pytest.fixture
def fake_host(fake_root):
    """A factory of HostFacts over `fake_root` with its stat overlay: `fake_host(uri=...,
    kvm=probe, libvirt_facts=...)`. Device nodes and ownership come from
    `fake_root.device(...)` / `fake_root.chown(...)`, so no test needs root."""
    return fake_root.facts


@pytest.fixture
def fake_host(fake_root):
    """A factory of HostFacts over `fake_root` with its stat overlay: `fake_host(uri=...,
    kvm=probe, libvirt_facts=...)`. Device nodes and ownership come from
    `fake_root.device(...)` / `fake_root.chown(...)`, so no test needs root."""
    return fake_root.facts
