"""``camtrap doctor``: the argument parser and the printing (cheap to import)."""

from __future__ import annotations

import argparse

DEFAULT_CONFIG = "/etc/camtrap/camtrap.toml"


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--config", default=DEFAULT_CONFIG, help="the unit's config file "
                    f"(default {DEFAULT_CONFIG})")
    ap.add_argument("--models", default=None, help="models folder (default: the config's)")
    ap.add_argument("--json", action="store_true", help='{"ok", "checks": [{"name", '
                    '"status", "detail", "fix"}]}')
    ap.add_argument("--timeout", type=float, default=20.0, metavar="S",
                    help="give up on any one check after S seconds (default 20)")
    ap.add_argument("--pir-window", type=float, default=2.0, metavar="S",
                    help="watch the PIR pin this long for a stuck sensor (default 2)")


def main(args: argparse.Namespace) -> int:
    """Exit 0 when no line fails (warnings allowed), 1 otherwise."""
    from edge_app.trap.doctor.report import as_json, exit_code, table
    from edge_app.trap.doctor.run import run_doctor

    if not (0 < args.timeout <= 600) or not (0 < args.pir_window <= 60):
        print("doctor: --timeout must be in (0, 600] and --pir-window in (0, 60]")
        return 2
    checks = run_doctor(args.config, args.models, timeout_s=args.timeout,
                        pir_window_s=args.pir_window)
    print(as_json(checks) if args.json else table(checks))
    return exit_code(checks)
