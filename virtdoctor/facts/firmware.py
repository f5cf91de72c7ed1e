"""Firmware facts: QEMU firmware descriptors, qemu.conf's `nvram` list, the
guest machine types and QEMU's ROM search path, read the way libvirt 9.0.0
and QEMU 7.2 read them.

Descriptors (QEMU's docs/interop/firmware.json) are looked up as libvirt's
src/qemu/qemu_interop_config.c does: every file of /usr/share/qemu/firmware,
then /etc/qemu/firmware, where a file of the same name overrides the earlier
one and an empty file masks it; the survivors are tried in file-name order.
Selection for `<os firmware='efi'>` follows src/qemu/qemu_firmware.c
(qemuFirmwareMatchDomain): interface, arch + machine glob, S3/S4, the
`<firmware><feature>` requests, `secure='yes'` needing `requires-smm`, split
flash, SEV. The first match wins.

All I/O goes through HostFacts (files below --root, `facts.run` on the live
host, the libvirt capabilities), so tests build a fake root.
"""
from __future__ import annotations

import json
import os.path
import posixpath
from dataclasses import dataclass, field
from fnmatch import fnmatchcase

from virtdoctor.model import FactUnavailable

DESCRIPTOR_DIRS = ("/usr/share/qemu/firmware", "/etc/qemu/firmware")
QEMU_CONF = "/etc/libvirt/qemu.conf"
NVRAM_DIR = "/var/lib/libvirt/qemu/nvram"
# QEMU 7.2 on Debian: `qemu-system-x86_64 -L help` prints <bindir>/../share/qemu,
# <bindir>/../share/seabios and <bindir>/../lib/ipxe/qemu
DEFAULT_ROM_DIRS = ("/usr/share/qemu", "/usr/share/seabios", "/usr/lib/ipxe/qemu")
EMULATOR_DIRS = ("/usr/bin", "/usr/local/bin", "/usr/libexec")
# the UEFI firmware package per guest arch (Debian names; Fedora: edk2-ovmf, edk2-aarch64)
UEFI_PACKAGES = {"x86_64": "ovmf", "i686": "ovmf", "aarch64": "qemu-efi-aarch64", "armv7l": "qemu-efi-arm"}
UEFI_NAMES = {"x86_64": "OVMF", "i686": "OVMF", "aarch64": "AAVMF", "armv7l": "AAVMF32"}
X86 = ("x86_64", "i686")
# fallbacks when no capabilities say what an alias stands for
MACHINE_ALIAS_PREFIX = {"q35": "pc-q35-", "pc": "pc-i440fx-", "virt": "virt-"}
DEFAULT_MACHINE = {"x86_64": "pc-i440fx-", "i686": "pc-i440fx-", "aarch64": "virt-", "armv7l": "virt-"}


def _memo(facts, key, compute):
    """Per-run cache (facts.memo: facts are fresh per run and per fix re-check):
    descriptors, search paths and emulator probes are read once, not once per
    domain."""
    return facts.memo(("firmware", key), compute)


@dataclass
class Descriptor:
    """One firmware descriptor file, parsed (or with `error` when unusable)."""

    name: str  # file name, the sort and override key
    path: str  # host path of the effective file
    interfaces: tuple[str, ...] = ()
    device: str = ""
    executable: str | None = None
    nvram_template: str | None = None
    flash_mode: str = "split"
    targets: tuple[tuple[str, tuple[str, ...]], ...] = ()
    features: frozenset[str] = frozenset()
    description: str = ""
    error: str | None = None
    overrides: str | None = None  # the /usr/share file this /etc file replaces

    @property
    def requires_smm(self) -> bool:
        return "requires-smm" in self.features

    @property
    def secure_boot(self) -> bool:
        return "secure-boot" in self.features

    def arches(self) -> set[str]:
        return {a for a, _ in self.targets}

    def matches(self, arch: str, machine: str) -> bool:
        """qemuFirmwareMatchesMachineArch: g_pattern_match_simple (* and ?)."""
        for t_arch, machines in self.targets:
            if t_arch == arch and any(fnmatchcase(machine, _glob_only(m)) for m in machines):
                return True
        return False

    def files(self) -> list[tuple[str, str]]:
        """(role, host path) of the files this descriptor points QEMU at."""
        out = []
        if self.executable:
            out.append(("executable", self.executable))
        if self.nvram_template:
            out.append(("nvram-template", self.nvram_template))
        return out


def _glob_only(pattern: str) -> str:
    # g_pattern_match_simple knows only * and ?; escape fnmatch's [ ]
    return pattern.replace("[", "[[]")


def parse_descriptor(text: str, name: str, path: str) -> Descriptor:
    """Parse one descriptor's JSON.

    >>> d = parse_descriptor('{"interface-types": ["uefi"], "mapping": {"device": "flash",'
    ...     ' "executable": {"filename": "/c.fd", "format": "raw"}}, "targets": [{"architecture":'
    ...     ' "x86_64", "machines": ["pc-q35-*"]}], "features": ["secure-boot"]}', "a.json", "/a.json")
    >>> d.matches("x86_64", "pc-q35-7.2"), d.executable, d.secure_boot
    (True, '/c.fd', True)
    """
    d = Descriptor(name=name, path=path)
    try:
        doc = json.loads(text)
    except ValueError as exc:
        d.error = f"not valid JSON: {exc}"
        return d
    if not isinstance(doc, dict):
        d.error = "not a JSON object"
        return d
    try:
        d.description = str(doc.get("description", ""))
        d.interfaces = tuple(str(i) for i in doc.get("interface-types") or ())
        mapping = doc.get("mapping")
        if not isinstance(mapping, dict):
            d.error = "no 'mapping' object"
            return d
        d.device = str(mapping.get("device", ""))
        if d.device == "flash":
            d.flash_mode = str(mapping.get("mode", "split"))
            exe = mapping.get("executable") or {}
            d.executable = exe.get("filename")
            tmpl = mapping.get("nvram-template") or {}
            d.nvram_template = tmpl.get("filename")
            if not d.executable:
                d.error = "flash mapping without executable filename"
        elif d.device in ("memory", "kernel"):
            d.executable = mapping.get("filename")
        targets = []
        for t in doc.get("targets") or ():
            targets.append((str(t.get("architecture", "")), tuple(str(m) for m in t.get("machines") or ())))
        d.targets = tuple(targets)
        d.features = frozenset(str(f) for f in doc.get("features") or ())
    except (AttributeError, TypeError) as exc:
        d.error = f"unexpected structure: {exc}"
    return d


def firmware_descriptors(facts) -> list[Descriptor]:
    """The effective descriptors, in the order libvirt tries them."""
    return list(_memo(facts, "descriptors", lambda: _read_descriptors(facts)))


def _read_descriptors(facts) -> list[Descriptor]:
    chosen: dict[str, str] = {}
    overridden: dict[str, str] = {}
    dangling: dict[str, str] = {}
    for d in DESCRIPTOR_DIRS:
        for name in facts.listdir(d):
            if name.startswith("."):
                continue
            path = f"{d}/{name}"
            st = facts.stat(path)
            if st is None:
                if facts.exists(path):  # dangling symlink: libvirt's stat() fails the whole lookup
                    dangling[name] = path
                    chosen[name] = path
                continue
            if not st.is_file:
                continue
            dangling.pop(name, None)
            if name in chosen:
                overridden[name] = chosen[name]
            chosen[name] = path
    out = []
    for name in sorted(chosen):
        path = chosen[name]
        if name in dangling:
            out.append(Descriptor(name=name, path=path, error="dangling symlink: libvirt cannot stat it"))
            continue
        try:
            text = facts.read_text(path)
        except FactUnavailable as exc:
            out.append(Descriptor(name=name, path=path, error=str(exc)))
            continue
        if not text:  # empty: masks the less specific file of that name
            continue
        desc = parse_descriptor(text, name, path)
        desc.overrides = overridden.get(name)
        out.append(desc)
    return out


def masked_descriptors(facts) -> list[str]:
    """Host paths of empty descriptor files (they hide a file of the same name)."""
    out = []
    for d in DESCRIPTOR_DIRS:
        for name in facts.listdir(d):
            st = facts.stat(f"{d}/{name}")
            if st is not None and st.is_file and st.size == 0:
                out.append(f"{d}/{name}")
    return out


def nvram_list(facts) -> list[tuple[str, str | None, str]]:
    """qemu.conf `nvram = ["CODE:VARS", ...]` as (code, vars or None when the
    entry has no colon, raw entry). Empty when unset."""
    value = facts.conf_value(QEMU_CONF, "nvram")
    if not value:
        return []
    if isinstance(value, str):
        value = [value]
    out = []
    for entry in value:
        entry = str(entry)
        code, sep, nv = entry.partition(":")
        out.append((code, nv if sep else None, entry))
    return out


# -- machines and capabilities ------------------------------------------------
def _caps(facts):
    try:
        return facts.libvirt.capabilities()
    except FactUnavailable:
        return None


def canonical_machine(facts, arch: str, machine: str, virt_type: str = "") -> str:
    """What libvirt stores for `machine` (an alias such as q35 becomes
    pc-q35-7.2; no machine means the emulator's default), from the
    capabilities; without them a stand-in such as `pc-q35-` that still
    matches the descriptors' `pc-q35-*` globs."""
    caps = _caps(facts)
    if caps is not None:
        for guest in caps.iterfind("guest"):
            a = guest.find("arch")
            if a is None or a.get("name") != arch:
                continue
            machines = list(a.iterfind("machine"))
            dom = a.find(f"domain[@type='{virt_type}']") if virt_type else None
            if dom is not None and dom.find("machine") is not None:
                machines = list(dom.iterfind("machine")) + machines
            if not machine:
                return (machines[0].text or "").strip() if machines else ""
            for m in machines:
                if (m.text or "").strip() == machine:
                    return m.get("canonical") or machine
    if not machine:
        return DEFAULT_MACHINE.get(arch, "")
    return MACHINE_ALIAS_PREFIX.get(machine, machine)


def is_q35(machine: str) -> bool:
    return machine == "q35" or machine.startswith("pc-q35")


def capabilities_emulators(facts) -> dict[str, str]:
    """arch -> emulator path offered by the capabilities (raises FactUnavailable)."""
    return {arch: emu for arch, emu in facts.libvirt.guest_emulators()}


def emulator_for(facts, arch: str, virt_type: str = "") -> str | None:
    """The capabilities' emulator for a guest arch (domain-type specific first)."""
    caps = facts.libvirt.capabilities()
    for guest in caps.iterfind("guest"):
        a = guest.find("arch")
        if a is None or a.get("name") != arch:
            continue
        if virt_type:
            dom = a.find(f"domain[@type='{virt_type}']")
            if dom is not None and dom.findtext("emulator"):
                return dom.findtext("emulator").strip()
        if a.findtext("emulator"):
            return a.findtext("emulator").strip()
    return None


def emulator_arch(path: str) -> str | None:
    """Guest arch of an emulator by its name: qemu-system-aarch64 -> aarch64;
    qemu-kvm (RHEL) is the host's x86_64/aarch64 emulator: unknown here."""
    base = posixpath.basename(path)
    if base.startswith("qemu-system-"):
        arch = base[len("qemu-system-"):]
        return {"i386": "i686", "arm": "armv7l"}.get(arch, arch)
    return None


def installed_emulators(facts) -> list[str]:
    """qemu-system-* binaries found in the usual directories (below --root)."""
    out = []
    for d in EMULATOR_DIRS:
        out.extend(p for p in facts.glob(f"{d}/qemu-system-*") if not p.endswith((".debug", ".so")))
    return out


def host_arch(facts) -> tuple[str | None, str]:
    """(arch, how we know): libvirt's capabilities, else the installed emulators."""
    try:
        arch = facts.libvirt.host_arch()
        if arch:
            return arch, "libvirt capabilities"
    except FactUnavailable:
        pass
    arches = [emulator_arch(p) for p in installed_emulators(facts)]
    for preferred in ("x86_64", "aarch64"):
        if preferred in arches:
            return preferred, "installed emulators"
    return None, "unknown"


def rom_search_dirs(facts, emulator: str) -> tuple[list[str], str]:
    """QEMU's firmware/ROM search path for `emulator`, as (dirs, source):
    `EMU -L help` on the live host, else Debian's built-in list."""
    return _memo(facts, ("romdirs", emulator), lambda: _rom_search_dirs(facts, emulator))


def _rom_search_dirs(facts, emulator: str) -> tuple[list[str], str]:
    try:
        cmd = facts.run([emulator, "-L", "help"], timeout=5.0)
        dirs = [posixpath.normpath(line.strip()) for line in cmd.stdout.splitlines()
                if cmd.returncode == 0 and line.strip().startswith("/")]
        if dirs:
            return dirs, f"{emulator} -L help"
    except FactUnavailable:
        pass
    return list(DEFAULT_ROM_DIRS), "QEMU 7.2's Debian search path"


def find_rom(facts, name: str, dirs: list[str]) -> str | None:
    """The first readable file `name` in `dirs` (a dangling symlink is absent)."""
    if name.startswith("/"):
        return name if facts.stat(name) is not None else None
    for d in dirs:
        st = facts.stat(f"{d}/{name}")
        if st is not None and not st.is_dir:
            return f"{d}/{name}"
    return None


# -- a domain's firmware as libvirt sees it -------------------------------------
@dataclass
class OsFirmware:
    """The firmware-related parts of a domain's `<os>`/`<features>`."""

    arch: str
    machine: str  # as written
    virt_type: str
    firmware: str  # "efi", "bios" or ""
    loader_path: str | None = None
    loader_type: str = ""
    loader_secure: str = ""
    loader_readonly: str = ""
    nvram_path: str | None = None
    nvram_template: str | None = None
    fw_features: dict[str, str] = field(default_factory=dict)  # name -> "yes"/"no"
    smm: str = ""  # "on", "off" or "" (absent)
    acpi: str = ""  # "on", "off" or ""
    pm_s3: str = ""
    pm_s4: str = ""
    sev: str | None = None  # launchSecurity type
    sev_policy: int = 0

    @property
    def old_style_uefi(self) -> bool:
        """virDomainDefHasOldStyleUEFI: a pflash `<loader>` without autoselection."""
        return self.firmware != "efi" and self.loader_type == "pflash"

    @property
    def is_efi(self) -> bool:
        return self.firmware == "efi" or self.loader_type == "pflash"


def _state(el, attr: str = "state", absent_means: str = "on") -> str:
    if el is None:
        return ""
    v = el.get(attr)
    if v is None:
        return absent_means
    return {"yes": "on", "no": "off"}.get(v, v)


def os_firmware(dom) -> OsFirmware:
    root = dom.root
    os_el = root.find("os")
    t = os_el.find("type") if os_el is not None else None
    fw = OsFirmware(arch=(t.get("arch", "") if t is not None else ""), machine=(t.get("machine", "") if t is not None else ""),
                    virt_type=root.get("type", ""), firmware=(os_el.get("firmware", "") if os_el is not None else ""))
    if os_el is not None:
        loader = os_el.find("loader")
        if loader is not None:
            fw.loader_path = (loader.text or "").strip() or None
            fw.loader_type = loader.get("type", "")
            fw.loader_secure = loader.get("secure", "")
            fw.loader_readonly = loader.get("readonly", "")
        nvram = os_el.find("nvram")
        if nvram is not None:
            src = nvram.find("source")
            path = (nvram.text or "").strip() or (src.get("file") if src is not None else None)
            fw.nvram_path = path or None
            fw.nvram_template = nvram.get("template")
        for feat in os_el.iterfind("firmware/feature"):
            if feat.get("name"):
                fw.fw_features[feat.get("name")] = feat.get("enabled", "")
    fw.smm = _state(root.find("features/smm"))
    fw.acpi = _state(root.find("features/acpi"))
    fw.pm_s3 = (root.find("pm/suspend-to-mem").get("enabled", "") if root.find("pm/suspend-to-mem") is not None else "")
    fw.pm_s4 = (root.find("pm/suspend-to-disk").get("enabled", "") if root.find("pm/suspend-to-disk") is not None else "")
    ls = root.find("launchSecurity")
    if ls is not None:
        fw.sev = ls.get("type")
        try:
            fw.sev_policy = int(ls.findtext("policy") or "0", 0)
        except ValueError:
            fw.sev_policy = 0
    return fw


def descriptor_matches(desc: Descriptor, fw: OsFirmware, machine: str) -> str | None:
    """None when `desc` satisfies the domain, else why not (qemuFirmwareMatchDomain)."""
    if desc.error:
        return desc.error
    if fw.firmware == "efi":
        want = "uefi"
    elif fw.firmware == "bios":
        want = "bios"
    elif fw.loader_path:
        want = "uefi" if fw.loader_type == "pflash" else "bios"
        if desc.device != "flash" or desc.executable != fw.loader_path:
            return "not this loader path"
    else:
        return "no firmware requested"
    if want not in desc.interfaces:
        return f"no {want} interface"
    if not desc.matches(fw.arch, machine):
        return f"not for {fw.arch} {machine}"
    if fw.pm_s3 == "yes" and "acpi-s3" not in desc.features:
        return "domain wants S3, firmware lacks acpi-s3"
    if fw.pm_s4 == "yes" and "acpi-s4" not in desc.features:
        return "domain wants S4, firmware lacks acpi-s4"
    sb = fw.fw_features.get("secure-boot")
    if sb == "yes" and not desc.secure_boot:
        return "secure-boot requested, firmware lacks it"
    if sb == "no" and desc.secure_boot:
        return "secure-boot refused, firmware has it"
    ek = fw.fw_features.get("enrolled-keys")
    if ek == "yes" and "enrolled-keys" not in desc.features:
        return "enrolled-keys requested, firmware lacks them"
    if ek == "no" and "enrolled-keys" in desc.features:
        return "enrolled-keys refused, firmware has them"
    if fw.loader_secure == "yes" and not desc.requires_smm:
        return "loader secure='yes' needs a requires-smm firmware"
    if desc.device == "flash" and desc.flash_mode != "split":
        return "not split flash"
    if fw.sev == "sev":
        if "amd-sev" not in desc.features:
            return "domain uses SEV, firmware lacks amd-sev"
        if fw.sev_policy & 4 and "amd-sev-es" not in desc.features:
            return "domain uses SEV-ES, firmware lacks amd-sev-es"
    return None


@dataclass
class Selection:
    machine: str  # the canonical machine matched against
    chosen: Descriptor | None
    tried: list[tuple[str, str]]  # (descriptor path, why not)
    broken: list[Descriptor]  # descriptors libvirt cannot parse: every lookup fails


def select_firmware(facts, fw: OsFirmware) -> Selection:
    """The descriptor libvirt would pick for this domain (first match)."""
    machine = canonical_machine(facts, fw.arch, fw.machine, fw.virt_type)
    descs = firmware_descriptors(facts)
    broken = [d for d in descs if d.error]
    tried = []
    for d in descs:
        if d.error:
            continue
        why = descriptor_matches(d, fw, machine)
        if why is None:
            return Selection(machine, d, tried, broken)
        tried.append((d.path, why))
    return Selection(machine, None, tried, broken)


def descriptor_for_loader(facts, path: str) -> Descriptor | None:
    return next((d for d in firmware_descriptors(facts) if not d.error and d.executable == path), None)


def default_nvram_path(name: str) -> str:
    return f"{NVRAM_DIR}/{name}_VARS.fd"


def looks_secure_boot(path: str | None) -> bool:
    """Debian/Fedora names of SMM-only (secure-boot) OVMF builds."""
    if not path:
        return False
    base = os.path.basename(path).lower()
    return any(tag in base for tag in (".secboot.", ".ms.", ".snakeoil.", "secboot", "-secure-"))


# -- emulators -------------------------------------------------------------------
@dataclass(frozen=True)
class EmulatorState:
    path: str
    ok: bool
    problem: str = ""  # libvirt's / QEMU's wording of what is wrong
    version: str = ""


def emulator_state(facts, path: str) -> EmulatorState:
    """Does the emulator exist, is it executable, and (on the live host) does
    `EMU --version` answer? The problem text is libvirt's
    (src/qemu/qemu_capabilities.c: virQEMUCapsNewForBinaryInternal)."""
    return _memo(facts, ("emulator", path), lambda: _emulator_state(facts, path))


def _emulator_state(facts, path: str) -> EmulatorState:
    st = facts.stat(path)
    if st is None:
        return EmulatorState(path, False, f"Cannot check QEMU binary {path}: No such file or directory")
    if st.is_dir or not st.perms & 0o111:
        return EmulatorState(path, False, f"QEMU binary {path} is not executable: Permission denied")
    if not facts.is_live:
        return EmulatorState(path, True)
    try:
        cmd = facts.run([path, "--version"], timeout=10.0)
    except FactUnavailable as exc:
        return EmulatorState(path, False, f"{path} --version failed: {exc}")
    first = (cmd.stdout.strip().splitlines() or [""])[0]
    if cmd.returncode != 0:
        detail = (cmd.stderr.strip().splitlines() or [f"exit status {cmd.returncode}"])[-1]
        return EmulatorState(path, False, f"{path} --version failed: {detail}")
    return EmulatorState(path, True, version=first)


def defined_domain_emulators(facts) -> dict[str, list[str]]:
    """emulator path -> names of defined domains using it (raises FactUnavailable)."""
    out: dict[str, list[str]] = {}
    for dom in facts.domains:
        emu = dom.emulator
        if emu:
            out.setdefault(emu, []).append(dom.name)
    return out


def qemu_can_read(facts, path: str) -> tuple[bool | None, str]:
    """Can QEMU's account (qemu.conf user/group) read `path`, with every
    parent directory searchable? (None, why) when that cannot be judged."""
    qemu = facts.qemu_account()
    if qemu.uid is None:
        return None, f"QEMU's user {qemu.user} does not exist"
    parts = [p for p in path.split("/") if p]
    cur = ""
    for part in parts[:-1]:
        cur += "/" + part
        st = facts.stat(cur)
        if st is None:
            return False, f"{cur} does not exist"
        if not st.allowed(qemu.uid, qemu.gids, "x"):
            return False, f"{qemu.label} cannot search {cur} ({st.owner}:{st.group} {st.mode_text})"
    st = facts.stat(path)
    if st is None:
        return False, f"{path} does not exist"
    if not st.allowed(qemu.uid, qemu.gids, "r"):
        return False, f"{qemu.label} cannot read {path} ({st.owner}:{st.group} {st.mode_text})"
    return True, ""
