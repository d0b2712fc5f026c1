"""The `gradflow` command line: `gradflow demo`, `gradflow study <name>`, `gradflow sweep`,
`gradflow plot`, `gradflow rm-eval`."""

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

    sw = sub.add_parser(
        "sweep",
        help="train on every proxy reward of a family; results written incrementally, resumable",
        description="Run the sweep described by CONFIG (see experiments/categorization-map.toml): one row "
        "per proxy reward written to OUT/summary.parquet/ as chunks finish. Running the same command on "
        "the same OUT resumes without recomputing finished chunks.",
    )
    sw.add_argument("config", type=Path, help="sweep config (TOML)")
    sw.add_argument("--out", type=Path, default=None, help="output folder (default gradflow-results/<config name>/)")
    sw.add_argument("--quick", action="store_true", help="the reduced sweep of the config's [quick] section")
    sw.add_argument("--no-plot", action="store_true", help="do not draw the figures at the end")

    plot = sub.add_parser(
        "plot",
        help="draw the figures of a sweep folder",
        description="Draw the figures of a (finished or partial) sweep folder written by `gradflow sweep`.",
    )
    plot.add_argument("dir", type=Path, help="the sweep's output folder")

    from . import rm_eval

    rm_eval.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "rm-eval":
        from . import rm_eval

        return rm_eval.main(args)
    from ._studies import STUDIES, run_study

    try:
        if args.command == "demo":
            run_study("stalling", args.out, args.quick)
        elif args.command == "study" and (args.list or args.name is None):
            if args.name is None and not args.list:
                print("gradflow study: give a study name, or --list.", file=sys.stderr)
            width = max(len(n) for n in STUDIES)
            for name, s in STUDIES.items():
                print(f"{name.ljust(width)}  {s.summary}")
            return 0 if args.list else 2
        elif args.command == "sweep":
            from ._sweeps import load_config, plot_dir, run_sweep

            cfg = load_config(args.config)
            out = args.out if args.out is not None else Path("gradflow-results") / args.config.stem
            run_sweep(cfg, out, args.quick)
            if not args.no_plot:
                for path in plot_dir(out):
                    print(f"  {path}")
        elif args.command == "plot":
            from ._sweeps import plot_dir

            for path in plot_dir(args.dir):
                print(f"Wrote {path}")
        else:
            run_study(args.name, args.out, args.quick, args.config)
    except ValueError as e:
        print(f"gradflow: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
