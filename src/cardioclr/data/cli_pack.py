"""``cardioclr pack WORK OUT``: a prepared work directory -> one travelling file (see
:mod:`cardioclr.data.pack`); ``cardioclr pack --verify OUT`` checks a pack's checksums."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``pack`` subcommand."""
    p = sub.add_parser("pack", help="pack a prepared work directory (ED/ES images, expert masks, "
                       "splits) into one compressed file with checksums",
                       description="Write WORK's ED/ES images (uint8), expert masks, geometry, "
                       "manifest and splits into the file OUT (zip, with OUT.sha256). "
                       "`cardioclr prepare OUT --out WORK2` or `cardioclr study --data OUT` "
                       "read it in place.")
    p.add_argument("work", help="prepared work directory (or, with --verify, the pack)")
    p.add_argument("out", nargs="?", default=None, help="pack file to write")
    p.add_argument("--verify", action="store_true", help="check the pack WORK's checksums")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from cardioclr.data.pack import PackReader
    from cardioclr.data.packing import pack
    from cardioclr.errors import CardioclrError

    if args.verify:
        print(json.dumps(PackReader(args.work).verify()))
        return 0
    if args.out is None:
        raise CardioclrError("give the pack file to write: cardioclr pack WORK OUT")
    s = pack(args.work, args.out)
    print(f"packed {s['patients']} patients ({s['image_size']} px at {s['spacing_mm']} mm) into "
          f"{s['pack']}: {s['bytes'] / 2**20:.1f} MiB, sha256 {s['sha256']} ({s['seconds']} s)")
    return 0
