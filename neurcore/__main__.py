"""Command line: ``neurcore demo`` and ``neurcore backends``."""

from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="neurcore", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="explain planted units of a synthetic concept set with the mask engine")
    demo.add_argument("--images", type=int, default=2000, help="probe images (default 2000)")
    demo.add_argument("--concepts", type=int, default=300, help="concepts (default 300, at least 13)")
    demo.add_argument("--side", type=int, default=56, help="mask side in pixels (default 56)")
    demo.add_argument("--seed", type=int, default=0)
    sub.add_parser("backends", help="print which native backends are built and usable, as JSON")
    args = parser.parse_args(argv)

    if args.command == "backends":
        from . import backends

        print(json.dumps(backends(), indent=2))
        return 0
    if args.concepts < 13 or args.images < 1 or args.side < 1:
        parser.error("demo needs --concepts >= 13 (the planted units use c0..c12), --images >= 1, --side >= 1")
    from . import _demo

    result = _demo.run(n_images=args.images, n_concepts=args.concepts, side=args.side, seed=args.seed)
    return 0 if result["found"] == result["planted"] else 1


if __name__ == "__main__":
    sys.exit(main())
