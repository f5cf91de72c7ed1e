"""Linux security modules as libvirt's security drivers see them: AppArmor and SELinux state,
qemu.conf's `security_driver` and `dynamic_ownership`, denial records in the kernel and audit
logs, and the per-domain AppArmor profile files virt-aa-helper writes.

Record formats (what the parsers below read):
- AppArmor (kernel security/apparmor/audit.c, aa_audit_msg; the libapparmor testsuite's
  recorded lines): `apparmor="DENIED" operation="open" [class="file"] profile="libvirt-<uuid>"
  name="<path>" pid=<n> comm="qemu-system-x86" requested_mask="r" denied_mask="r" fsuid=<n>
  ouid=<n>`, behind `audit: type=1400 audit(<sec>.<ms>:<serial>): ` in the kernel log or
  `type=AVC msg=audit(<sec>.<ms>:<serial>): ` in auditd's log.
- SELinux (kernel security/selinux/avc.c, avc_audit_pre/post_callback, plus lsm_audit.c):
  `avc:  denied  { read } for  pid=<n> comm="qemu-system-x86" name="<file>" dev="<dev>"
  ino=<n> scontext=system_u:system_r:svirt_t:s0:cX,cY tcontext=<ctx> tclass=file permissive=0`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

QEMU_CONF = "/etc/libvirt/qemu.conf"
LOGS = ("/var/log/audit/audit.log", "/var/log/kern.log", "/var/log/syslog", "/var/log/messages")
LOG_TAIL = 2 << 20
AA_PROFILES = "/sys/kernel/security/apparmor/profiles"
AA_ENABLED = "/sys/module/apparmor/parameters/enabled"
SELINUX_ENFORCE = "/sys/fs/selinux/enforce"
LSM_LIST = "/sys/kernel/security/lsm"
AA_LIBVIRT_DIR = "/etc/apparmor.d/libvirt"

_FIELD = re.compile(r'(\w+)=("[^"]*"|\S+)')
_AVC = re.compile(r'avc:\s+denied\s+\{\s*([^}]*?)\s*\}\s+for\s+(.*)')
_UUID = re.compile(r"libvirt-([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})")


@dataclass(frozen=True)
class Denial:
    """One denial record. `subject` is the AppArmor profile or the SELinux source context,
    `target` the file name or path the record names (SELinux may give only the last component),
    `access` the denied mask or permissions."""

    lsm: str  # "apparmor" or "selinux"
    subject: str
    target: str
    access: str
    operation: str
    tcontext: str
    line: str
    source: str

    @property
    def domain_uuid(self) -> str | None:
        """The libvirt domain UUID of an AppArmor `libvirt-<uuid>` profile."""
        m = _UUID.search(self.subject)
        return m.group(1) if m else None

    @property
    def is_svirt(self) -> bool:
        return self.lsm == "selinux" and ":svirt_" in self.subject


@dataclass(frozen=True)
class LsmState:
    apparmor: bool | None  # None: /sys/module/apparmor absent (not built in / not this kernel)
    apparmor_profiles: dict = field(default_factory=dict)  # name -> mode ("enforce", "complain")
    selinux: str | None = None  # "enforcing", "permissive", or None (selinuxfs not mounted)
    lsms: tuple = ()  # /sys/kernel/security/lsm, when readable
    security_driver: tuple | None = None  # qemu.conf security_driver; None when not set
    dynamic_ownership: bool = True
    denials: tuple = ()
    logs_read: tuple = ()

    @property
    def active(self) -> set[str]:
        """The security drivers libvirt's probe would find usable on this kernel."""
        out = set()
        if self.apparmor:
            out.add("apparmor")
        if self.selinux is not None:
            out.add("selinux")
        return out

    def libvirt_denials(self, uuid: str | None = None) -> list[Denial]:
        """AppArmor denials of libvirt-<uuid> profiles and SELinux denials of svirt contexts."""
        out = []
        for d in self.denials:
            if d.lsm == "apparmor" and d.domain_uuid and (uuid is None or d.domain_uuid == uuid):
                out.append(d)
            elif d.is_svirt and uuid is None:
                out.append(d)
        return out


def parse_denial(line: str, source: str = "") -> Denial | None:
    """A Denial from one log line, None when the line is not an AppArmor DENIED or SELinux
    denied record."""
    if 'apparmor="DENIED"' in line:
        fields = {k: v.strip('"') for k, v in _FIELD.findall(line[line.index('apparmor="DENIED"'):])}
        return Denial("apparmor", fields.get("profile", ""), fields.get("name", ""),
                      fields.get("denied_mask", fields.get("requested_mask", "")), fields.get("operation", ""),
                      "", line.strip(), source)
    m = _AVC.search(line)
    if m:
        fields = {k: v.strip('"') for k, v in _FIELD.findall(m.group(2))}
        return Denial("selinux", fields.get("scontext", ""), fields.get("path", fields.get("name", "")),
                      m.group(1), fields.get("tclass", ""), fields.get("tcontext", ""), line.strip(), source)
    return None


def _flag(facts, path: str) -> str | None:
    try:
        text = facts.read_text(path)
    except Exception:
        return None
    return None if text is None else text.strip()


def read_lsm(facts) -> LsmState:
    aa = _flag(facts, AA_ENABLED)
    apparmor = None if aa is None else aa.upper().startswith("Y")
    profiles = {}
    text = _flag(facts, AA_PROFILES)
    for line in (text or "").splitlines():
        m = re.match(r"(.+?) \((\w+)\)$", line.strip())
        if m:
            profiles[m.group(1)] = m.group(2)
    enforce = _flag(facts, SELINUX_ENFORCE)
    selinux = None if enforce is None else ("enforcing" if enforce == "1" else "permissive")
    lsms = tuple(x for x in (_flag(facts, LSM_LIST) or "").split(",") if x)
    driver = facts.conf_value(QEMU_CONF, "security_driver")
    if isinstance(driver, str):
        driver = (driver,)
    elif isinstance(driver, list):
        driver = tuple(str(d) for d in driver)
    else:
        driver = None
    dyn = facts.conf_value(QEMU_CONF, "dynamic_ownership", 1)
    denials, read = [], []
    for path in LOGS:
        try:
            tail = facts.read_tail(path, LOG_TAIL)
        except Exception:
            continue
        if tail is None:
            continue
        read.append(path)
        for line in tail.splitlines():
            if "DENIED" in line or "avc:" in line:
                d = parse_denial(line, path)
                if d is not None:
                    denials.append(d)
    return LsmState(apparmor=apparmor, apparmor_profiles=profiles, selinux=selinux, lsms=lsms,
                    security_driver=driver, dynamic_ownership=bool(dyn), denials=tuple(denials),
                    logs_read=tuple(read))


def profile_files(facts, uuid: str) -> dict:
    """The per-domain files virt-aa-helper writes: the profile and its `.files` include, each
    None when absent, and the paths the `.files` include grants (first token of each rule)."""
    base = f"{AA_LIBVIRT_DIR}/libvirt-{uuid}"
    out = {"profile": base if facts.exists(base) else None,
           "files": f"{base}.files" if facts.exists(f"{base}.files") else None, "granted": []}
    if out["files"]:
        try:
            text = facts.read_text(f"{base}.files") or ""
        except Exception:
            text = ""
        for line in text.splitlines():
            m = re.match(r'\s*"([^"]+)"\s+\w+,', line)
            if m:
                out["granted"].append(m.group(1))
    return out


def aa_path_granted(granted: list[str], path: str) -> bool:
    """Whether one of virt-aa-helper's quoted rules (literal paths, `**`/`*` globs) covers path."""
    for rule in granted:
        rx = re.escape(rule).replace(r"\*\*", ".*").replace(r"\*", "[^/]*").replace(r"\{", "{").replace(r"\}", "}")
        if re.fullmatch(rx, path):
            return True
    return False


def file_label(facts, host_path: str) -> str | None:
    """The file's SELinux label (`security.selinux` xattr), None when absent or unreadable."""
    import os

    try:
        raw = os.getxattr(facts.path(host_path), "security.selinux")
    except (OSError, AttributeError):
        return None
    return raw.rstrip(b"\0").decode("utf-8", "replace")
