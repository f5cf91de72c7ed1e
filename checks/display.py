"""Graphics and video: what the guest's console can show."""
from __future__ import annotations

import re

from virtdoctor.api import (Auto, FactUnavailable, Fail, Pass, Warn, check, element, enum_values, hookimpl,
                            insert_before, is_q35, plan, planner, redefine_plan, remove_element)

X86 = ("x86_64", "i686")


def domain_plan(dom, summary: str, auto: Auto, edit, notes=()):
    """redefine_plan for this module's edits, which take the root element."""
    return redefine_plan(dom, lambda d: edit(d.root), auto=auto, summary=summary, notes=notes)

# tokens in install-media file names and the arch family they name
MEDIA_ARCH = (
    (re.compile(r"(?<![a-z0-9])(aarch64|arm64|armv8)(?![a-z0-9])", re.I), "aarch64"),
    (re.compile(r"(?<![a-z0-9])(x86[_-]64|amd64|x64|intel64)(?![a-z0-9])", re.I), "x86"),
    (re.compile(r"(?<![a-z0-9])(i[3-6]86|x86)(?![a-z0-9_-])", re.I), "x86"),
    (re.compile(r"(?<![a-z0-9])(ppc64le|ppc64el|ppc64)(?![a-z0-9])", re.I), "ppc64"),
    (re.compile(r"(?<![a-z0-9])(s390x)(?![a-z0-9])", re.I), "s390x"),
    (re.compile(r"(?<![a-z0-9])(riscv64)(?![a-z0-9])", re.I), "riscv64"),
    (re.compile(r"(?<![a-z0-9])(armhf|armv7l?|armv7hl)(?![a-z0-9])", re.I), "arm"),
)
ARCH_FAMILY = {"x86_64": "x86", "i686": "x86", "aarch64": "aarch64", "ppc64": "ppc64", "ppc64le": "ppc64",
               "s390x": "s390x", "riscv64": "riscv64", "armv7l": "arm", "armv6l": "arm"}


def media_arch(path: str) -> str | None:
    """The arch family an install image's file name names, None when it names none.

    >>> media_arch("/isos/ubuntu-20.04-live-server-arm64.iso"), media_arch("/isos/debian-12-amd64-netinst.iso")
    ('aarch64', 'x86')
    """
    name = path.rsplit("/", 1)[-1]
    for rx, family in MEDIA_ARCH:
        if rx.search(name):
            return family
    return None


def _install_media(root) -> list[str]:
    out = []
    for disk in root.iterfind("devices/disk"):
        src = disk.find("source")
        path = (src.get("file") or src.get("dev") or src.get("name") or "") if src is not None else ""
        if path and (disk.get("device") == "cdrom" or path.lower().endswith(".iso")):
            out.append(path)
    for tag in ("kernel", "initrd"):
        text = (root.findtext(f"os/{tag}") or "").strip()
        if text:
            out.append(text)
    return out


def _secure_boot(root) -> bool:
    loader = root.find("os/loader")
    if loader is not None and loader.get("secure") == "yes":
        return True
    return any(f.get("name") == "secure-boot" and f.get("enabled") == "yes"
               for f in root.iterfind("os/firmware/feature"))


def _uefi(root) -> bool:
    os_el = root.find("os")
    if os_el is None:
        return False
    loader = os_el.find("loader")
    return os_el.get("firmware") == "efi" or (loader is not None and loader.get("type") == "pflash")


def _video_models(root) -> list:
    return [m for m in root.iterfind("devices/video/model")]


def _display_causes(dom) -> list[tuple[str, str, bool]]:
    """(cause key, message, auto-fixable) of each reason the console may stay at
    "Guest has not initialized the display (yet)"."""
    causes = []
    root = dom.root
    if dom.arch in X86 and _secure_boot(root) and not is_q35(dom.machine):
        causes.append(("secure-boot-on-i440fx",
                       f"secure-boot UEFI on machine {dom.machine or 'pc (default)'}: i440fx is BIOS-only for "
                       "secure boot (\"Secure boot is supported with q35 machine types only\"); use q35", True))
    guest = ARCH_FAMILY.get(dom.arch)
    for path in _install_media(root):
        fam = media_arch(path)
        if guest and fam and fam != guest:
            causes.append(("media-arch",
                           f"install media {path} is for {fam}, the guest is {dom.arch}: its firmware never "
                           "boots it and the display stays blank; use media of the guest's arch", False))
    if dom.arch == "aarch64" and any(m.get("type") == "vga" for m in _video_models(root)):
        causes.append(("aarch64-vga", "aarch64 UEFI guest with 'vga' video: the firmware drives it badly or "
                                      "not at all (slow, garbled, blank); use virtio", True))
    return causes


@check("display-not-initialized", scope="domain", area="display", severity="warning",
       title="The firmware, machine, media and video let the guest draw its console", plans=True)
def display_not_initialized(facts, dom):
    """Looks at the seed's causes of a console stuck at "Guest has not
    initialized the display (yet).": secure-boot UEFI on an i440fx machine,
    install media (cdrom/ISO/kernel file names) of another arch than the guest,
    an aarch64 UEFI guest with 'vga' video.
    Why: the text is QEMU's placeholder, never logged: the guest's firmware
    never programmed the display, so nothing else tells the user why.
    Fix safety: unsafe: q35 for secure-boot UEFI (PCI addresses are
    re-assigned, IDE disks move to SATA), virtio video; other media is manual."""
    causes = _display_causes(dom)
    evidence = {"machine": dom.machine, "arch": dom.arch, "media": _install_media(dom.root),
                "video": [m.get("type") for m in _video_models(dom.root)], "causes": [c[0] for c in causes]}
    if not causes:
        return Pass("firmware, machine, media and video agree", evidence)
    return Warn("the console may stay at \"Guest has not initialized the display (yet)\": "
                + "; ".join(c[1] for c in causes), evidence, plan=fix_display(facts, dom))


def to_q35(root) -> None:
    """Move an i440fx guest to q35: machine, PCI controllers and addresses left
    to libvirt, IDE disks on SATA."""
    type_el = root.find("os/type")
    machine = type_el.get("machine", "")
    type_el.set("machine", re.sub(r"^pc-i440fx-", "pc-q35-", machine) if machine.startswith("pc-i440fx-") else "q35")
    devices = root.find("devices")
    if devices is None:
        return
    for ctl in list(devices.iterfind("controller")):
        if ctl.get("type") in ("pci", "ide"):
            remove_element(ctl)
        elif ctl.get("type") == "usb" and (ctl.get("model") or "").startswith(("piix", "ich9-uhci")):
            remove_element(ctl)
    for addr in list(root.iterfind("devices/*/address")):
        if addr.get("type") == "pci":
            remove_element(addr)
    for disk in devices.iterfind("disk"):
        target = disk.find("target")
        if target is not None and target.get("bus") == "ide":
            target.set("bus", "sata")
            target.set("dev", "sd" + target.get("dev", "hda")[2:])
            addr = disk.find("address")
            if addr is not None and addr.get("type") == "drive":
                remove_element(addr)


def _virtio_video(root) -> None:
    for model in root.iterfind("devices/video/model"):
        if model.get("type") in ("vga", "qxl", "cirrus", "vmvga"):
            model.set("type", "virtio")
            for attr in ("ram", "vram", "vram64", "vgamem"):
                model.attrib.pop(attr, None)


@planner
def fix_display(facts, dom):
    causes = _display_causes(dom)
    keys = {c[0] for c in causes}

    def edit(root):
        if "secure-boot-on-i440fx" in keys and not is_q35(root.find("os/type").get("machine", "")):
            to_q35(root)
        if "aarch64-vga" in keys:
            for model in root.iterfind("devices/video/model"):
                if model.get("type") == "vga":
                    model.set("type", "virtio")
                    model.attrib.pop("vgamem", None)

    manual = [c[1] for c in causes if not c[2]]
    what = []
    if "secure-boot-on-i440fx" in keys:
        what.append("move to a q35 machine")
    if "aarch64-vga" in keys:
        what.append("use virtio video")
    if manual and not what:
        return plan("Use install media built for the guest's arch", Auto.MANUAL, notes=manual)
    p = domain_plan(dom, "; ".join(what).capitalize(), Auto.MANUAL if manual else Auto.UNSAFE, edit,
                    notes=manual)
    return p


# -- video-model-unsuitable ---------------------------------------------------------------
def _caps_video(facts, dom) -> tuple[list[str] | None, str | None]:
    try:
        return enum_values(facts.domain_caps(dom), "devices/video/enum[@name='modelType']"), None
    except FactUnavailable as exc:
        return None, str(exc)


@check("video-model-unsuitable", scope="domain", area="display", severity="error",
       title="The video model is one this guest's QEMU drives well", plans=True)
def video_model_unsuitable(facts, dom):
    """Looks at each <video><model type> against the arch (aarch64: no 'qxl',
    and 'vga' is slow or garbled under UEFI) and, when libvirt answers, against
    the emulator's domcapabilities <video><enum name='modelType'>.
    Why: libvirt 9.0.0 refuses unknown models with "domain configuration does
    not support video model 'qxl'" (older: "this QEMU does not support 'qxl'
    video device"); aarch64 with vga boots to a slow, garbled console.
    Fix safety: unsafe (guest hardware): virtio video."""
    models = [m.get("type") for m in _video_models(dom.root)]
    offered, why = _caps_video(facts, dom)
    evidence = {"arch": dom.arch, "video": models, "domcapabilities": offered}
    if why:
        evidence["domcapabilities_unavailable"] = why
    problems = []
    for m in models:
        if m is None or m == "none":
            continue
        if offered is not None and m not in offered:
            problems.append((f"'{m}' is not offered by this emulator (\"domain configuration does not support "
                             f"video model '{m}'\")", "error"))
        elif dom.arch == "aarch64" and m == "qxl":
            problems.append(("'qxl' on aarch64: \"domain configuration does not support video model 'qxl'\" "
                             "(older: \"this QEMU does not support 'qxl' video device\")", "error"))
        elif dom.arch == "aarch64" and m == "vga":
            problems.append(("'vga' on aarch64: the UEFI console is very slow or garbled", "warning"))
    if not problems:
        return Pass(f"video {', '.join(models) or 'none'}", evidence)
    text = "; ".join(p[0] for p in problems)
    if all(p[1] == "warning" for p in problems):
        return Warn(text, evidence, plan=use_virtio_video(facts, dom))
    return Fail(text, evidence, plan=use_virtio_video(facts, dom))


def _replacement(offered: list[str] | None, arch: str) -> str | None:
    for cand in ("virtio", "bochs", "vga", "ramfb"):
        if arch == "aarch64" and cand == "vga":
            continue
        if offered is None or cand in offered:
            return cand
    return None


@planner
def use_virtio_video(facts, dom):
    offered, _ = _caps_video(facts, dom)
    new = _replacement(offered, dom.arch)
    if new is None:
        return None

    def edit(root):
        for model in root.iterfind("devices/video/model"):
            m = model.get("type")
            bad = (offered is not None and m not in offered and m != "none") or \
                (root.find("os/type") is not None and root.find("os/type").get("arch") == "aarch64"
                 and m in ("qxl", "vga"))
            if bad:
                model.set("type", new)
                for attr in ("ram", "vram", "vram64", "vgamem"):
                    model.attrib.pop(attr, None)

    return domain_plan(dom, f"Use <video><model type='{new}'/>", Auto.UNSAFE, edit)


# -- spice-unsupported -----------------------------------------------------------------------
@check("spice-unsupported", scope="domain", area="display", severity="error",
       title="SPICE graphics only where this QEMU has SPICE", needs=("libvirt",), plans=True)
def spice_unsupported(facts, dom):
    """Looks at <graphics type='spice'> against the emulator's domcapabilities
    <graphics><enum name='type'> (a QEMU built without SPICE lacks it).
    Why: libvirt refuses the start with "spice graphics are not supported with
    this QEMU".
    Fix safety: unsafe: VNC graphics in place of SPICE (SPICE channels,
    redirection and audio go too); or install a QEMU built with SPICE."""
    spice = [g for g in dom.root.iterfind("devices/graphics") if g.get("type") == "spice"]
    if not spice:
        return Pass("no SPICE graphics", {"graphics": [g.get("type") for g in dom.root.iterfind("devices/graphics")]})
    types = enum_values(facts.domain_caps(dom), "devices/graphics/enum[@name='type']")
    evidence = {"graphics": [g.get("type") for g in dom.root.iterfind("devices/graphics")],
                "domcapabilities": types, "emulator": dom.emulator}
    if types is None:
        return Pass("the domain capabilities do not list graphics types", evidence)
    if "spice" in types:
        return Pass("this QEMU offers SPICE", evidence)
    return Fail("SPICE graphics but this QEMU has no SPICE (domcapabilities graphics types: "
                f"{', '.join(types) or 'none'}): \"spice graphics are not supported with this QEMU\"", evidence, plan=use_vnc(facts, dom))


def _spice_to_vnc(root) -> None:
    devices = root.find("devices")
    has_vnc = any(g.get("type") == "vnc" for g in devices.iterfind("graphics"))
    for g in list(devices.iterfind("graphics")):
        if g.get("type") != "spice":
            continue
        if has_vnc:
            remove_element(g)
            continue
        vnc = element("graphics", type="vnc", port="-1", autoport="yes")
        for attr in ("listen", "passwd", "keymap", "passwdValidTo", "connected"):
            if g.get(attr) is not None and not (attr == "connected" and g.get(attr) not in ("keep", "fail")):
                vnc.set(attr, g.get(attr))
        for listen in g.iterfind("listen"):
            if listen.get("type") in ("address", "network", "none"):
                vnc.append(element("listen", **{k: v for k, v in listen.attrib.items()}))
        if len(vnc):
            vnc.text = (g.text or "\n")
            for child in vnc:
                child.tail = g.text
            vnc[-1].tail = g[-1].tail if len(g) else "\n"
        insert_before(g, vnc)
        remove_element(g)
        has_vnc = True
    for el in list(devices):
        if (el.tag == "channel" and el.get("type") == "spicevmc") or \
                (el.tag == "redirdev" and el.get("type") == "spicevmc") or \
                (el.tag == "audio" and el.get("type") == "spice") or \
                (el.tag == "smartcard" and el.get("type") == "spicevmc"):
            remove_element(el)


@planner
def use_vnc(facts, dom):
    return domain_plan(dom, "Use VNC graphics in place of SPICE", Auto.UNSAFE, _spice_to_vnc,
                       ["or install a QEMU built with SPICE and keep the configuration"])


@hookimpl
def virtdoctor_checks():
    return [display_not_initialized, video_model_unsuitable, spice_unsupported]
