"""virtdoctor: a doctor for libvirt/KVM hosts."""

__version__ = "0.1.0"
