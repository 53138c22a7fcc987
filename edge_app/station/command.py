"""``camtrap station [run|check|adduser] --config station.toml``: the base station's command."""

from __future__ import annotations

import argparse
import sys


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = ("The base station: store every unit's events and media, serve the "
                     "rangers' page, send notifications (station.toml: README, 'The station').")
    p.add_argument("action", nargs="?", default="run", choices=["run", "check", "adduser"],
                   help="run the station (default); check the config as run would; add or "
                   "change a page account")
    p.add_argument("name", nargs="?", help="adduser: the account name")
    p.add_argument("--config", required=True, metavar="FILE", help="station.toml")
    p.add_argument("--role", choices=["ranger", "admin"], default="ranger",
                   help="adduser: ranger (view, acknowledge) or admin (also review, send "
                   "heads and commands)")
    p.add_argument("--password-file", metavar="FILE",
                   help="adduser: read the password from FILE (else asked twice on the "
                   "terminal)")


def main(args: argparse.Namespace) -> int:
    from edge_app.core.errors import ConfigError
    from edge_app.station import config, service

    cfg = config.load(args.config)  # a ConfigError: exit 2 naming the key (cli.py)
    if args.action == "check":
        for line in service.check(cfg):
            print(f"{args.config}: {line}")
        print(f"{args.config}: ok")
        return 0
    if args.action == "adduser":
        if not args.name:
            raise ConfigError("name", "adduser needs the account name")
        return _adduser(cfg, args)
    service.check(cfg)
    return service.run_station(cfg)


def _adduser(cfg: object, args: argparse.Namespace) -> int:
    import getpass
    from pathlib import Path

    from edge_app.core.errors import ConfigError
    from edge_app.station.config import StationConfig
    from edge_app.station.store import DB_NAME
    from edge_app.station.web.accounts import add_user

    assert isinstance(cfg, StationConfig)
    if args.password_file:
        password = Path(args.password_file).read_text(encoding="utf-8").strip()
    else:
        password = getpass.getpass(f"password for {args.name}: ")
        if getpass.getpass("again: ") != password:
            print("camtrap station: the two passwords differ", file=sys.stderr)
            return 1
    Path(cfg.store).mkdir(parents=True, exist_ok=True)
    try:
        add_user(Path(cfg.store) / DB_NAME, args.name, password, args.role)
    except ValueError as e:
        raise ConfigError("adduser", str(e)) from e
    print(f"account {args.name} ({args.role}) saved in {Path(cfg.store) / DB_NAME}")
    return 0
