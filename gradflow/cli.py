"""The `gradflow` command line: `gradflow demo`, `gradflow study <name>`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gradflow",
        description="Policy-gradient dynamics under imperfect rewards. Start with `gradflow demo`.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser(
        "demo",
        help="the stalling study: a wrong proxy beats the true reward (start here)",
        description="Run the stalling study (same as `gradflow study stalling`): print a table "
        "and write figures under --out.",
    )
    demo.add_argument("--out", type=Path, default=None, help="output folder (default gradflow-results/stalling/)")
    demo.add_argument("--quick", action="store_true", help="a reduced run (seconds)")

    study = sub.add_parser(
        "study",
        help="run one study from experiments/<name>.toml",
        description="Run a study: each reproduces one scientific claim from its config.",
    )
    study.add_argument("name", nargs="?", help="study name (see --list)")
    study.add_argument("--list", action="store_true", help="list the studies and exit")
    study.add_argument("--out", type=Path, default=None, help="output folder (default gradflow-results/<name>/)")
    study.add_argument("--quick", action="store_true", help="a reduced grid that runs in well under a minute")
    study.add_argument("--config", type=Path, default=None, help="a config file to use instead of the packaged one")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from ._studies import STUDIES, run_study

    try:
        if args.command == "demo":
            run_study("stalling", args.out, args.quick)
        elif args.list or args.name is None:
            if args.name is None and not args.list:
                print("gradflow study: give a study name, or --list.", file=sys.stderr)
            width = max(len(n) for n in STUDIES)
            for name, s in STUDIES.items():
                print(f"{name.ljust(width)}  {s.summary}")
            return 0 if args.list else 2
        else:
            run_study(args.name, args.out, args.quick, args.config)
    except ValueError as e:
        print(f"gradflow: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
