"""``camtrap lorawan encode|decode``: the payload codec for technicians and scripts.

``camtrap lorawan encode --port 10 '{"label": "animal", ...}'`` prints the payload as hex;
``camtrap lorawan decode --port 10 2A5B...`` prints the decoded fields as one JSON object (the
``data`` of ``decodeUplink``; fPort 20 is a downlink command). Scripts rely on both: output is
exactly one line on stdout; warnings and errors go to stderr. Exit codes: 0 ok, 1 the codec
refused the input, 2 the input is not JSON / not hex.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="lorawan_action", required=True)
    enc = sub.add_parser("encode", help="JSON fields → payload hex")
    enc.add_argument("--port", type=int, required=True,
                     help="10 alert, 11 status, 20 downlink command")
    enc.add_argument("json", metavar="JSON", help="the fields as JSON ('-' reads stdin)")
    enc.add_argument("--base64", action="store_true", help="print base64 instead of hex")
    dec = sub.add_parser("decode", help="payload hex → JSON fields")
    dec.add_argument("--port", type=int, required=True,
                     help="10 alert, 11 status, 20 downlink command")
    dec.add_argument("payload", metavar="HEX", help="the payload as hex (spaces and ':' allowed)")
    dec.add_argument("--base64", action="store_true", help="the payload is base64")
    dec.add_argument("--full", action="store_true",
                     help="print {data, warnings, errors} instead of data only")


def main(args: argparse.Namespace) -> int:
    from edge_app.core import lora_codec as codec

    if args.lorawan_action == "encode":
        text = sys.stdin.read() if args.json == "-" else args.json
        try:
            data = json.loads(text)
        except ValueError as e:
            print(f"camtrap lorawan encode: not JSON: {e}", file=sys.stderr)
            return 2
        res = (codec.encode_downlink(data) if args.port == codec.PORT_COMMAND
               else codec.encode_uplink(args.port, data))
        for w in res.warnings:
            print(f"warning: {w}", file=sys.stderr)
        if not res.ok:
            for err in res.errors:
                print(f"error: {err}", file=sys.stderr)
            return 1
        print(base64.b64encode(res.payload).decode() if args.base64 else res.payload.hex().upper())
        return 0
    try:
        if args.base64:
            raw = base64.b64decode(args.payload, validate=True)
        else:
            raw = bytes.fromhex(args.payload.replace(":", "").replace(" ", ""))
    except (ValueError, binascii.Error) as e:
        print(f"camtrap lorawan decode: not {'base64' if args.base64 else 'hex'}: {e}",
              file=sys.stderr)
        return 2
    dres = (codec.decode_downlink(args.port, raw) if args.port == codec.PORT_COMMAND
            else codec.decode_uplink(args.port, raw))
    if args.full:
        print(json.dumps(dres.to_json(), ensure_ascii=False))
        return 0 if dres.ok else 1
    for w in dres.warnings:
        print(f"warning: {w}", file=sys.stderr)
    if not dres.ok:
        for err in dres.errors:
            print(f"error: {err}", file=sys.stderr)
        return 1
    print(json.dumps(dres.data, ensure_ascii=False))
    return 0
