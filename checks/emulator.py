"""QEMU binaries and the ROM files they load."""
from __future__ import annotations

from virtdoctor.api import (Auto, FactUnavailable, Fail, Pass, RunCommand, Skip, check, fwfacts, hookimpl,
                            plan, planner, redefine_plan)

# ROM files QEMU loads for a device (QEMU 7.2 romfile defaults)
NIC_ROMS = {"virtio": "efi-virtio.rom", "virtio-transitional": "efi-virtio.rom",
            "virtio-non-transitional": "efi-virtio.rom", "e1000": "efi-e1000.rom", "e1000e": "efi-e1000e.rom",
            "rtl8139": "efi-rtl8139.rom", "ne2k_pci": "efi-ne2k_pci.rom", "pcnet": "efi-pcnet.rom",
            "vmxnet3": "efi-vmxnet3.rom", "eepro100": "efi-eepro100.rom", "i82559er": "pxe-eepro100.rom"}
# primary video on x86 (the device with a VGA BIOS)
VGA_ROMS = {"vga": "vgabios-stdvga.bin", "cirrus": "vgabios-cirrus.bin", "qxl": "vgabios-qxl.bin",
            "vmvga": "vgabios-vmware.bin", "virtio": "vgabios-virtio.bin", "bochs": "vgabios-bochs-display.bin",
            "ramfb": "vgabios-ramfb.bin"}
# what the default devices of an emulator need: SeaBIOS, the stdvga BIOS, the
# ROMs of libvirt's default NIC (rtl8139), QEMU's (e1000) and virtio
HOST_ROMS = {
    "x86_64": ("bios-256k.bin", "vgabios-stdvga.bin", "efi-rtl8139.rom", "efi-e1000.rom", "efi-virtio.rom"),
    "i686": ("bios-256k.bin", "vgabios-stdvga.bin", "efi-rtl8139.rom", "efi-e1000.rom", "efi-virtio.rom"),
    "aarch64": ("efi-virtio.rom",),
}
ROM_PACKAGE = (("vgabios-", "seabios"), ("bios", "seabios"), ("efi-", "ipxe-qemu"), ("pxe-", "ipxe-qemu"))


def host_needed(facts, what: str) -> None:
    if facts.offline:
        raise FactUnavailable(f"--offline: {what} needs this host's files and libvirt")


def rom_package(name: str) -> str:
    base = name.rsplit("/", 1)[-1]
    return next((pkg for prefix, pkg in ROM_PACKAGE if base.startswith(prefix)), "qemu-system-data")


# -- qemu-emulator-missing -----------------------------------------------------------
@check("qemu-emulator-missing", scope="host", area="emulator", severity="error",
       title="Every QEMU emulator in use exists and runs", needs=("libvirt-installed", "libvirt"))
def qemu_emulator_missing_host(facts):
    """Looks at every emulator the capabilities offer and every `<emulator>`
    of the defined domains: it exists, is executable and answers `--version`
    (on the live host; under --root: exists and is executable).
    Why: a domain whose emulator is gone fails to define or start with
    "Cannot check QEMU binary /usr/libexec/qemu-kvm: No such file or directory"
    (qemu-kvm is RHEL's path; Debian has /usr/bin/qemu-system-x86_64).
    Fix safety: per domain (unsafe, see the domain check); none on the host."""
    users: dict[str, list[str]] = {}
    for arch, emu in facts.libvirt.guest_emulators():
        users.setdefault(emu, []).append(f"capabilities ({arch})")
    for emu, names in fwfacts.defined_domain_emulators(facts).items():
        users.setdefault(emu, []).extend(f"domain {n}" for n in names)
    if not users:
        return Fail("the capabilities offer no QEMU emulator and no domain names one: is qemu-system-* installed?",
                    {"emulators": []})
    results = []
    for emu in sorted(users):
        state = fwfacts.emulator_state(facts, emu)
        ev = {"emulator": emu, "used_by": users[emu], "version": state.version or None}
        if state.ok:
            results.append(Pass(f"{emu} runs" + (f" ({state.version})" if state.version else ""), ev, key=emu))
        else:
            results.append(Fail(f"{state.problem} (used by {', '.join(users[emu])})", ev, key=emu))
    return results


@check("qemu-emulator-missing", scope="domain", area="emulator", severity="error",
       title="The domain's emulator exists", plans=True)
def qemu_emulator_missing(facts, dom):
    """Looks at the domain's `<emulator>` (or, without one, whether the
    capabilities offer an emulator for its arch).
    Why: "Cannot check QEMU binary /usr/libexec/qemu-kvm: No such file or
    directory" on define and start; without `<emulator>`: "unsupported
    configuration: No emulator found for arch 'aarch64'".
    Fix safety: unsafe: points `<emulator>` at the capabilities' emulator for
    the domain's arch (a different QEMU build); applies at the next boot."""
    host_needed(facts, "looking for the emulator")
    emu = dom.emulator
    if not emu:
        arch = dom.arch or fwfacts.host_arch(facts)[0] or ""
        found = fwfacts.emulator_for(facts, arch, dom.virt_type)
        if found is None:
            return Fail(f"unsupported configuration: No emulator found for arch '{arch}'", {"arch": arch}, plan=point_at_capabilities_emulator(facts, dom))
        return Pass(f"no <emulator>: libvirt uses {found} for {arch}", {"arch": arch, "emulator": found})
    state = fwfacts.emulator_state(facts, emu)
    ev = {"emulator": emu, "arch": dom.arch}
    if state.ok:
        return Pass(f"{emu} exists" + (f" ({state.version})" if state.version else ""), ev)
    try:
        ev["capabilities_emulator"] = fwfacts.emulator_for(facts, dom.arch, dom.virt_type)
    except FactUnavailable:
        pass
    return Fail(state.problem, ev, plan=point_at_capabilities_emulator(facts, dom))


@planner
def point_at_capabilities_emulator(facts, dom):
    if dom.info is None or not dom.name or not dom.emulator:
        return None
    arch = dom.arch or fwfacts.host_arch(facts)[0] or ""
    try:
        new = fwfacts.emulator_for(facts, arch, dom.virt_type)
    except FactUnavailable:  # no capabilities: the installed qemu-system-ARCH
        new = next((p for p in fwfacts.installed_emulators(facts) if fwfacts.emulator_arch(p) == arch), None)
    if not new or new == dom.emulator:
        return None
    notes = [f"{dom.emulator} -> {new} (the capabilities' emulator for {arch}); "
             f"or restore {dom.emulator} (e.g. ln -s {new} {dom.emulator})"]

    def edit(d):
        d.root.find("devices/emulator").text = new
        return f"Point {dom.name}'s <emulator> at {new}"

    return redefine_plan(dom, edit, notes=notes)


# -- romfile-missing -------------------------------------------------------------------
def _host_emulators(facts) -> tuple[list[tuple[str, str]], str]:
    try:
        return [(a, e) for a, e in facts.libvirt.guest_emulators()], "libvirt capabilities"
    except FactUnavailable:
        out = []
        for path in fwfacts.installed_emulators(facts):
            arch = fwfacts.emulator_arch(path)
            if arch:
                out.append((arch, path))
        return out, "installed qemu-system-* binaries"


@check("romfile-missing", scope="host", area="emulator", severity="error",
       title="The ROM files QEMU's default devices load are installed", needs=("libvirt-installed",), plans=True)
def romfile_missing_host(facts):
    """Looks in QEMU's firmware search path (`EMU -L help` on the live host,
    else Debian's /usr/share/qemu, /usr/share/seabios, /usr/lib/ipxe/qemu) for
    SeaBIOS, the stdvga BIOS and the NIC option ROMs (rtl8139, e1000, virtio)
    of each emulator's arch.
    Why: else guests die at start with QEMU's "failed to find romfile
    "vgabios-stdvga.bin"" (or "efi-virtio.rom"): `--no-install-recommends`
    drops ipxe-qemu for qemu-system-arm, and seabios / ipxe-qemu can be removed.
    Fix safety: manual (install seabios / ipxe-qemu)."""
    emulators, source = _host_emulators(facts)
    if not emulators:
        return Skip(f"no QEMU emulator found ({source}); qemu-emulator-missing reports that")
    groups: dict[tuple, list[tuple[str, str]]] = {}
    for arch, emu in sorted(emulators):
        roms = HOST_ROMS.get(arch)
        if roms:
            dirs, dirs_from = fwfacts.rom_search_dirs(facts, emu)
            groups.setdefault((tuple(dirs), dirs_from, roms), []).append((arch, emu))
    results = []
    for (dirs, dirs_from, roms), members in groups.items():
        emus = ", ".join(e for _, e in members)
        arches = ",".join(a for a, _ in members)
        missing = [r for r in roms if fwfacts.find_rom(facts, r, list(dirs)) is None]
        pkgs = sorted({rom_package(r) for r in missing})
        ev = {"emulators": [e for _, e in members], "arches": [a for a, _ in members], "search_path": list(dirs),
              "search_path_from": dirs_from, "missing": missing, "packages": pkgs}
        if missing:
            results.append(Fail(f"{emus}: {', '.join(missing)} not in {':'.join(dirs)}: guests fail with "
                                f"\"failed to find romfile \"{missing[0]}\"\"", ev, key=arches,
                                plan=install_roms_host(pkgs)))
        else:
            results.append(Pass(f"{emus}: {', '.join(roms)} found", ev, key=arches))
    return results or Pass("no emulator of a known arch to check")


@planner
def install_roms_host(pkgs: list[str]):
    if not pkgs:
        return None
    return plan(f"Install {' '.join(pkgs)}", Auto.MANUAL, RunCommand(["apt-get", "install", "-y", *pkgs]))


def _device_label(el) -> str:
    tag = el.tag
    target = el.find("target")
    alias = el.find("alias")
    name = (alias.get("name") if alias is not None else None) or (target.get("dev") if target is not None else None)
    mac = el.find("mac")
    if name is None and mac is not None:
        name = mac.get("address")
    return f"{tag} {name}" if name else tag


def domain_roms(dom, arch: str) -> list[tuple[str, str, bool]]:
    """(device, ROM file name or path, explicit <rom file>) QEMU will load."""
    out = []
    devices = dom.root.find("devices")
    if devices is None:
        return out
    for el in devices:
        if not isinstance(el.tag, str):
            continue
        rom = el.find("rom")
        if rom is not None and rom.get("enabled") == "no":
            continue
        if rom is not None and rom.get("file"):
            out.append((_device_label(el), rom.get("file"), True))
            continue
        if el.tag == "interface":
            if el.get("type") in ("hostdev", "vdpa"):
                continue
            addr = el.find("address")
            if addr is not None and addr.get("type") not in (None, "pci"):
                continue  # virtio-mmio, ccw...: no option ROM
            model_el = el.find("model")
            model = model_el.get("type") if model_el is not None else None
            if model is None:
                model = "rtl8139" if arch in fwfacts.X86 else None
            if model in NIC_ROMS and arch in ("x86_64", "i686", "aarch64"):
                out.append((_device_label(el), NIC_ROMS[model], False))
    if arch in fwfacts.X86:
        video = devices.find("video")
        model_el = video.find("model") if video is not None else None
        if model_el is not None and model_el.get("type") in VGA_ROMS and model_el.get("primary", "yes") != "no":
            out.append((f"video {model_el.get('type')}", VGA_ROMS[model_el.get("type")], False))
    return out


@check("romfile-missing", scope="domain", area="emulator", severity="error",
       title="The ROM files of the domain's devices exist and QEMU can read them", plans=True)
def romfile_missing(facts, dom):
    """Looks at `<rom file>` of devices (exists, readable by QEMU's account
    through every parent directory), the option ROMs of its NIC models and the
    VGA BIOS of its primary video model, in QEMU's search path.
    Why: QEMU exits at start with "failed to find romfile "vgabios-stdvga.bin""
    (or the `<rom file>` cannot be opened).
    Fix safety: manual (install seabios / ipxe-qemu, or fix the path/mode)."""
    host_needed(facts, "looking for ROM files")
    arch = dom.arch or fwfacts.host_arch(facts)[0] or ""
    roms = domain_roms(dom, arch)
    if not roms:
        return Pass("no device loads an option ROM")
    emu = dom.emulator
    if not emu:
        try:
            emu = fwfacts.emulator_for(facts, arch, dom.virt_type)
        except FactUnavailable:
            emu = None
    dirs, dirs_from = fwfacts.rom_search_dirs(facts, emu or f"/usr/bin/qemu-system-{arch}")
    ev = {"search_path": dirs, "search_path_from": dirs_from, "roms": [f"{d}: {r}" for d, r, _ in roms]}
    problems = []
    missing = []
    for device, rom, explicit in roms:
        if explicit and rom.startswith("/"):
            if facts.stat(rom) is None:
                problems.append(f"{device}: <rom file='{rom}'> does not exist")
                missing.append(rom)
                continue
            ok, why = fwfacts.qemu_can_read(facts, rom)
            if ok is False:
                problems.append(f"{device}: {why}")
            continue
        if fwfacts.find_rom(facts, rom, dirs) is None:
            problems.append(f"{device}: failed to find romfile \"{rom}\"")
            missing.append(rom)
    ev["missing"] = missing
    pkgs = ev["packages"] = sorted({rom_package(r) for r in missing if not r.startswith("/")})
    if problems:
        return Fail("; ".join(problems), ev, plan=romfile_advice(dom, pkgs))
    return Pass(f"{len(roms)} ROM file(s) found", ev)


@planner
def romfile_advice(dom, pkgs: list[str]):
    if pkgs:
        return plan(f"Install {' '.join(pkgs)}", Auto.MANUAL, RunCommand(["apt-get", "install", "-y", *pkgs]))
    return plan("Fix the <rom file> path or its permissions (QEMU's account must read it)", Auto.MANUAL,
                RunCommand(["virsh", "edit", dom.name or dom.label]))


@hookimpl
def virtdoctor_checks():
    return [qemu_emulator_missing_host, qemu_emulator_missing, romfile_missing_host, romfile_missing]
