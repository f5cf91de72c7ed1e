"""virtdoctor's built-in checks, one module per area. Each module is a pluggy
plugin implementing ``virtdoctor_checks``, exactly as a third-party plugin does.
The order here is the order of areas in the report."""

BUILTIN_PLUGINS = (
    "virtdoctor.checks.daemon",
    "virtdoctor.checks.kvm",
)
