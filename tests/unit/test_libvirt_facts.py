"""facts/libvirt.py: recorded facts for tests, and the live connection's deadline (a daemon
that accepts and never answers must not hang the doctor), libvirt errors and a missing
libvirt-python as FactUnavailable."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time

import pytest

from virtdoctor.facts.libvirt import DomainInfo, LiveLibvirt, NetworkInfo, RecordedLibvirt, parse_xml
from virtdoctor.model import FactUnavailable

CAPS = """<capabilities>
  <host><cpu><arch>x86_64</arch></cpu></host>
  <guest><os_type>hvm</os_type><arch name='x86_64'><emulator>/usr/bin/qemu-system-x86_64</emulator></arch></guest>
  <guest><os_type>hvm</os_type><arch name='aarch64'><emulator>/usr/bin/qemu-system-aarch64</emulator></arch></guest>
  <guest><os_type>hvm</os_type><arch name='riscv64'/></guest>
</capabilities>"""
DOMCAPS_X86 = "<domainCapabilities><arch>x86_64</arch></domainCapabilities>"
DOMCAPS_ARM = "<domainCapabilities><arch>aarch64</arch></domainCapabilities>"


def recorded(**kw):
    return RecordedLibvirt(capabilities=CAPS, domains=[DomainInfo("vm1", "u-1", "<domain/>")],
                           networks=[NetworkInfo("default", True, True, True, "<network/>", "virbr0")], **kw)


def test_recorded_reads_and_caches():
    lv = recorded(domcapabilities=DOMCAPS_X86)
    assert lv.connect_error() is None
    caps = lv.capabilities()
    assert lv.capabilities() is caps
    assert lv.host_arch() == "x86_64"
    assert lv.guest_emulators() == [("x86_64", "/usr/bin/qemu-system-x86_64"),
                                    ("aarch64", "/usr/bin/qemu-system-aarch64")]
    dc = lv.domcapabilities()
    assert dc.findtext("arch") == "x86_64" and lv.domcapabilities() is dc
    assert lv.domain("vm1").uuid == "u-1" and lv.domain("nope") is None
    assert lv.network("default").bridge == "virbr0" and lv.network("nope") is None
    assert lv.domains() is not lv.domains()  # a copy: callers cannot change the record
    assert lv.versions() == {}


def test_recorded_domcapabilities_per_arch_and_key():
    exact = ("/usr/bin/qemu-system-x86_64", "x86_64", "q35", "kvm")
    lv = recorded(domcapabilities={exact: DOMCAPS_X86, "aarch64": DOMCAPS_ARM, None: DOMCAPS_X86})
    assert lv.domcapabilities(*exact).findtext("arch") == "x86_64"
    assert lv.domcapabilities(None, "aarch64", "virt", "kvm").findtext("arch") == "aarch64"
    assert lv.domcapabilities().findtext("arch") == "x86_64"
    only_arm = recorded(domcapabilities={"aarch64": DOMCAPS_ARM})
    with pytest.raises(FactUnavailable, match="no domain capabilities recorded for x86_64"):
        only_arm.domcapabilities(None, "x86_64")
    with pytest.raises(FactUnavailable, match="no domain capabilities recorded"):
        recorded().domcapabilities()


def test_recorded_error_makes_every_read_unavailable():
    lv = recorded(error="Failed to connect socket to '/var/run/libvirt/libvirt-sock': No such file or directory")
    assert lv.connect_error().startswith("Failed to connect socket")
    for read in (lv.capabilities, lv.domains, lv.networks, lv.domcapabilities):
        with pytest.raises(FactUnavailable, match="Failed to connect socket"):
            read()


def test_parse_xml_does_not_expand_entities(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("TOP-SECRET")
    doc = (f'<!DOCTYPE c [<!ENTITY x SYSTEM "file://{secret}"><!ENTITY y "expanded">]>'
           "<capabilities><a>&x;</a><b>&y;</b></capabilities>")
    root = parse_xml(doc)
    from lxml import etree

    text = etree.tostring(root, encoding="unicode")
    assert "TOP-SECRET" not in text and "expanded" not in text


# -- the live connection ----------------------------------------------------------

libvirt = pytest.importorskip("libvirt")


class SilentDaemon:
    """Accepts connections on a UNIX socket and never answers: a hung libvirtd."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="vd-sock-")
        self.path = os.path.join(self.dir, "libvirt-sock")
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(self.path)
        self.server.listen(8)
        self.clients: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self.clients.append(conn)

    @property
    def uri(self):
        return f"qemu+unix:///system?socket={self.path}"

    def close(self):
        for c in self.clients:  # the blocked libvirt thread gets EOF and ends
            c.close()
        self.server.close()
        try:
            os.unlink(self.path)
            os.rmdir(self.dir)
        except OSError:
            pass


@pytest.fixture
def silent_daemon():
    d = SilentDaemon()
    yield d
    d.close()


def test_a_daemon_that_never_answers_gives_fact_unavailable_in_time(silent_daemon):
    lv = LiveLibvirt(silent_daemon.uri, timeout=1.0)
    t0 = time.monotonic()
    err = lv.connect_error()
    elapsed = time.monotonic() - t0
    assert err == (f"the libvirt daemon did not answer virConnectOpenReadOnly within 1 s ({silent_daemon.uri})")
    assert 0.9 <= elapsed < 3.0, elapsed
    assert silent_daemon.clients, "libvirt did connect to the socket"
    t0 = time.monotonic()  # later reads fail at once with the same reason, no second wait
    with pytest.raises(FactUnavailable, match="did not answer virConnectOpenReadOnly within 1 s"):
        lv.domains()
    with pytest.raises(FactUnavailable, match="did not answer"):
        lv.capabilities()
    assert time.monotonic() - t0 < 0.5


def test_check_command_against_a_hung_daemon_finishes(silent_daemon, tmp_path):
    """The whole CLI, in its own process: a hung daemon makes the libvirt checks skip
    (or the socket check fail) within the timeout, and the process exits."""
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "virtdoctor", "-c", silent_daemon.uri, "--timeout", "1",
                           "--format", "json", "check"], capture_output=True, text=True, timeout=60)
    elapsed = time.monotonic() - t0
    assert proc.returncode in (0, 1, 2), proc.stderr
    doc = json.loads(proc.stdout)
    reasons = [f["message"] for f in doc["findings"] if "did not answer" in f["message"]]
    assert reasons, doc["findings"]
    assert elapsed < 15, elapsed


def test_libvirt_errors_are_fact_unavailable():
    lv = LiveLibvirt("bogus:///x", timeout=5)
    err = lv.connect_error()
    # libvirt asks the daemon about schemes it does not know: the daemon's answer, or, when
    # another test has the daemon down at that moment, the socket error
    assert err in ("libvirt: no connection driver available for bogus:///x",
                   "libvirt: Failed to connect socket to '/var/run/libvirt/libvirt-sock': No such file or directory",
                   "libvirt: Failed to connect socket to '/var/run/libvirt/libvirt-sock': Connection refused",
                   # unprivileged, libvirt first looks for the session daemon over D-Bus (none here)
                   "libvirt: internal error: Unable to get system bus connection: Could not connect: "
                   "No such file or directory"), err
    with pytest.raises(FactUnavailable, match="^libvirt: "):
        lv.domains()


def test_missing_socket_is_libvirts_own_message(tmp_path):
    sock = tmp_path / "none-sock"
    err = LiveLibvirt(f"qemu+unix:///system?socket={sock}", timeout=5).connect_error()
    assert err == f"libvirt: Failed to connect socket to '{sock}': No such file or directory"


def test_live_reads_against_the_test_driver():
    lv = LiveLibvirt("test:///default", timeout=10)
    assert lv.connect_error() is None
    assert lv.host_arch()  # the test driver's capabilities parse
    # the process shares one test:///default driver while any connection to it lives: other
    # tests' domains may still be there, the driver's own is "test"
    dom = lv.domain("test")
    assert dom in lv.domains()
    assert (dom.name, dom.active, dom.persistent, dom.state_name) == ("test", True, True, "running")
    assert "<name>test</name>" in dom.xml and dom.live_xml
    assert lv.domains() is lv.domains()  # cached for the run
    [net] = lv.networks()
    assert (net.name, net.active) == ("default", True)
    assert lv.domain("test") is dom
    assert set(lv.versions()) == {"libvirt", "hypervisor"}
    # libvirt refuses domain capabilities read-only; the facts retry read-write,
    # where the test driver says it has no such call: that message reaches the check
    with pytest.raises(FactUnavailable, match="^libvirt: this function is not supported.*virConnectGetDomainCapabilities"):
        lv.domcapabilities()


def _without_libvirt(code: str) -> subprocess.CompletedProcess:
    prelude = "import sys\nsys.modules['libvirt'] = None  # import libvirt -> ImportError\n"
    return subprocess.run([sys.executable, "-c", prelude + code], capture_output=True, text=True, timeout=60)


def test_missing_libvirt_python_is_fact_unavailable():
    proc = _without_libvirt(
        "from virtdoctor.facts.libvirt import LiveLibvirt\n"
        "from virtdoctor.api import Pass, check\n"
        "from virtdoctor.engine import run_check\n"
        "from virtdoctor.facts import HostFacts\n"
        "print(LiveLibvirt('qemu:///system').connect_error())\n"
        "chk = check('needs-daemon', scope='host', area='t', title='t', needs=('libvirt',))(lambda f: Pass())\n"
        "[f] = run_check(chk, HostFacts(root='/', uri='qemu:///system'))\n"
        "print(f.status.value, f.message)\n")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "libvirt-python is not installed (pip install libvirt-python)",
        "skip libvirt not reachable: libvirt-python is not installed (pip install libvirt-python)"]


def test_check_without_libvirt_python_skips_not_crashes():
    proc = _without_libvirt(
        "from virtdoctor.cli import main\n"
        "raise SystemExit(main(['--format', 'json', 'check']))\n")
    assert proc.returncode in (0, 1, 2), proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["summary"]["error"] == 0, [f for f in doc["findings"] if f["status"] == "error"]
    assert "Traceback" not in proc.stderr
