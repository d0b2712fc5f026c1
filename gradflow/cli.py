"""The `gradflow` command line: `gradflow demo`, `gradflow study <name>`, `gradflow sweep`,
`gradflow plot`, `gradflow status`, `gradflow rm-eval`.

Building the parser imports nothing heavy, so `--help` and `--version` answer at once.
Every command that computes runs in a worker thread: Ctrl-C then stops it within a
second, says what was kept and how to resume, and exits with status 130. Its results were
written atomically, so what is on disk is complete.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
import threading
from pathlib import Path

from . import __version__

_RM_EVAL_DESCRIPTION = """\
Evaluate reward models from a file of per-response records (one row per response):

  prompt_id, response_id, logprob, true_reward, <one column per reward model>

where logprob is the policy's sequence log-likelihood (<= 0). The policy over a
prompt's listed responses is logprob renormalised with a log-softmax. Preference
pairs are all pairs of a prompt's responses with different true_reward (ties
dropped), unless --pairs gives them. A malformed file is reported with the line
(or Parquet row) and column at fault, and the command exits with status 2.

With --outcomes OUTCOMES.csv (a column 'model' naming each reward model, then one
numeric column per measured outcome of training on it, e.g. a win rate), every
metric is also correlated with every outcome across the reward models (Pearson,
Spearman, Kendall, with 95% percentile-bootstrap intervals), written to
correlations.csv and drawn in correlations.png. The outcomes file must list exactly
the evaluated reward models, at least 3; it is checked before anything is computed."""


def _common(p: argparse.ArgumentParser, *, out_help: str, quick: bool = True) -> None:
    p.add_argument("--out", type=Path, default=None, metavar="DIR", help=out_help)
    if quick:
        p.add_argument("--quick", action="store_true", help="a reduced run (seconds to a minute)")
    p.add_argument("--force", action="store_true",
                   help="write into DIR even if it holds the results of another run or config")
    p.add_argument("--quiet", action="store_true", help="no progress bars or phase lines (stderr)")
    p.add_argument("--json", action="store_true",
                   help="print the summary as JSON on stdout (the tables go to stderr)")


def _shard(text: str):
    """`--shard`: `I/N`, or where to read it from (`array`, `jax`)."""
    if text in ("array", "jax"):
        return text
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if match is None:
        raise argparse.ArgumentTypeError(f"expected I/N (the I-th of N shares, e.g. 0/4), 'array' or 'jax'; got {text!r}")
    index, count = int(match[1]), int(match[2])
    if count < 1 or index >= count:
        raise argparse.ArgumentTypeError(f"I/N needs N >= 1 and 0 <= I < N; got {text!r}")
    return index, count


def _resolve_shard(spec) -> tuple[int, int] | None:
    """The share `(I, N)` of this process: as given, from a SLURM job array's task index,
    or from `jax.distributed` (initialised here, from the environment)."""
    if spec is None or isinstance(spec, tuple):
        return spec
    if spec == "array":
        task, count = os.environ.get("SLURM_ARRAY_TASK_ID"), os.environ.get("SLURM_ARRAY_TASK_COUNT")
        if task is None or count is None:
            raise ValueError("`--shard array`: SLURM_ARRAY_TASK_ID and SLURM_ARRAY_TASK_COUNT are not set (this "
                             "is not a task of a SLURM job array); give the share as --shard I/N.")
        index = int(task) - int(os.environ.get("SLURM_ARRAY_TASK_MIN", "0"))
        if not 0 <= index < int(count):
            raise ValueError(f"`--shard array`: task {task} is not one of {count} tasks numbered from "
                             f"{os.environ.get('SLURM_ARRAY_TASK_MIN', '0')} in steps of 1 (use --array=0-{int(count) - 1}).")
        return index, int(count)
    import jax

    def number(name):
        return int(os.environ[name]) if os.environ.get(name) else None

    try:
        jax.distributed.initialize(num_processes=number("JAX_NUM_PROCESSES"), process_id=number("JAX_PROCESS_ID"))
    except (RuntimeError, ValueError) as e:
        raise ValueError(f"`--shard jax`: jax.distributed.initialize() failed ({e}); set JAX_COORDINATOR_ADDRESS, "
                         "JAX_NUM_PROCESSES and JAX_PROCESS_ID, or run under a cluster that JAX detects.") from None
    return jax.process_index(), jax.process_count()


def add_rm_eval_parser(subparsers) -> argparse.ArgumentParser:
    """Add the `rm-eval` subcommand to an `argparse` subparsers object.

    **Returns:** the subcommand's parser.
    """
    p = subparsers.add_parser(
        "rm-eval", help="evaluate reward models from a file of per-response records",
        description=_RM_EVAL_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("file", type=Path, metavar="FILE", help="the records: .jsonl, .csv or .parquet (columns above)")
    p.add_argument("--pairs", type=Path, default=None, metavar="FILE",
                   help="explicit preference pairs, columns prompt_id, chosen_id, rejected_id "
                   "(default: formed from true_reward, ties dropped)")
    p.add_argument("--models", default=None, metavar="NAMES",
                   help="comma-separated reward-model columns to evaluate (default: every column "
                   "besides the four required ones)")
    p.add_argument("--outcomes", type=Path, default=None, metavar="OUTCOMES.csv",
                   help="measured outcomes per reward model: a column 'model' and one numeric column "
                   "per outcome (.csv, .jsonl or .parquet); correlate every metric with every outcome "
                   "across the models and write correlations.csv and correlations.png")
    _common(p, out_help="output folder (default gradflow-results/rm-eval/)", quick=False)
    return p


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gradflow",
        description="Policy-gradient dynamics under imperfect rewards. Start with `gradflow demo`.",
    )
    parser.add_argument("--version", action="version", version=f"gradflow {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser(
        "demo", help="the stalling study: a wrong proxy beats the true reward (start here)",
        description="Run the stalling study (same as `gradflow study stalling`): print a table "
        "and write figures under --out.",
    )
    _common(demo, out_help="output folder (default gradflow-results/stalling/, or stalling-quick/ with --quick)")

    study = sub.add_parser(
        "study", help="run one study from experiments/<name>.toml",
        description="Run a study: each reproduces one scientific claim from its config.",
    )
    study.add_argument("name", nargs="?", help="study name (see --list)")
    study.add_argument("--list", action="store_true", help="list the studies and exit")
    study.add_argument("--config", type=Path, default=None, help="a config file to use instead of the packaged one")
    study.add_argument("--print-config", action="store_true",
                       help="print the study's packaged config (to edit and pass with --config) and exit")
    _common(study, out_help="output folder (default gradflow-results/NAME/, or NAME-quick/ with --quick)")

    sw = sub.add_parser(
        "sweep", help="train on every proxy reward of a family; results written incrementally, resumable",
        description="Run the sweep described by CONFIG (see experiments/categorization-map.toml): one row "
        "per proxy reward written to OUT/summary.parquet/ as chunks finish. Running the same command on "
        "the same OUT resumes without recomputing finished chunks.",
    )
    sw.add_argument("config", type=Path, help="sweep config (TOML)")
    sw.add_argument("--no-plot", action="store_true", help="do not draw the figures at the end")
    sw.add_argument("--shard", type=_shard, default=None, metavar="I/N",
                    help="compute only the I-th of N shares of the rows (N processes may sweep one DIR at "
                    "once); 'array': from a SLURM job array's task index; 'jax': from jax.distributed")
    sw.add_argument("--trajectories", action="store_true",
                    help="also write every run's true and proxy reward over time to DIR/trajectories.zarr")
    _common(sw, out_help="output folder (default gradflow-results/CONFIG-NAME/, or CONFIG-NAME-quick/)")

    plot = sub.add_parser(
        "plot", help="redraw the figures of a result folder (a study or a sweep, finished or not)",
        description="Redraw the figures of a folder written by `gradflow study`, `gradflow demo` or "
        "`gradflow sweep` from the data saved in it.",
    )
    plot.add_argument("dir", type=Path, help="the result folder")
    plot.add_argument("--by", default=None, metavar="COLUMN",
                      help="a sweep with trajectories: group the bands of true reward by this column of its "
                      "table (default: label)")

    status = sub.add_parser(
        "status", help="what made a result folder, and how far a sweep has got",
        description="Print a result folder's provenance (run.json) and, for a sweep, the rows done, per "
        "shard and in all, the rows missing and the sweep's fingerprint.",
    )
    status.add_argument("dir", type=Path, help="the result folder")
    status.add_argument("--json", action="store_true", help="print it as JSON")

    add_rm_eval_parser(sub)
    return parser


def _run_study(args) -> dict:
    from ._util.results import default_out
    from .studies import run_study

    name = "stalling" if args.command == "demo" else args.name
    out = args.out if args.out is not None else default_out(name, args.quick)
    result = run_study(name, out, args.quick, getattr(args, "config", None), force=args.force)
    return {"study": name, "mode": "quick" if args.quick else "full", "out": str(out), **result}


def _run_sweep(args) -> dict:
    if args.shard is not None and args.force:
        raise ValueError("`--force` with `--shard` would delete the rows of the other shares; empty the folder "
                         "first, or use a new --out.")
    # First, before gradflow's modules touch JAX: jax.distributed must start before any JAX call.
    shard = _resolve_shard(args.shard)
    from ._util import progress as _progress
    from ._util.results import default_out, result_folder
    from .studies import categorization_map as sweeps
    from .studies._base import load, to_dict

    cfg = load(sweeps.Config, args.config, quick=args.quick)
    out = args.out if args.out is not None else default_out(args.config.stem, args.quick)
    with result_folder(out, kind="sweep", name=args.config.stem, config=to_dict(cfg), quick=args.quick,
                       force=args.force, shared=shard is not None):
        tables = sweeps.compute(cfg, out, force=args.force, shard=shard, trajectories=args.trajectories)
        sweeps.print_summary(tables, cfg)
        summary = tables.summary()
        if not args.no_plot and summary["rows"]:
            with _progress.phase("figures"):
                summary["figures"] = sweeps.plot(out)
            for path in summary["figures"]:
                print(f"  {path}")
    return summary


def _run_rm_eval(args) -> dict:
    from . import rm_eval
    from ._util.results import default_out, result_folder

    out = args.out if args.out is not None else default_out("rm-eval")
    models = None if args.models is None else [m.strip() for m in args.models.split(",") if m.strip()]
    config = {"file": str(args.file.resolve()), "pairs": None if args.pairs is None else str(args.pairs.resolve()),
              "models": models}
    outcomes = None
    if args.outcomes is not None:
        # Checked before the folder is claimed; its models are matched after the records load,
        # before the evaluation. Recorded only when given, so that a folder written without
        # --outcomes by an earlier version keeps its identity.
        outcomes = rm_eval.load_outcomes(args.outcomes)
        config["outcomes"] = str(args.outcomes.resolve())
    with result_folder(out, kind="rm-eval", name=args.file.stem, config=config, quick=False, force=args.force):
        return rm_eval.run(args.file, out, pairs=args.pairs, reward_models=models, outcomes=outcomes)


def _plot(args) -> dict:
    from .studies import redraw

    paths = redraw(args.dir, by=args.by)
    for path in paths:
        print(f"Wrote {path}")
    return {"figures": paths}


def _status(args) -> dict:
    from . import sweep
    from ._util.results import read_record

    folder = args.dir
    record, progress = read_record(folder), sweep.status(folder)
    if record is None and progress is None:
        raise ValueError(f"{folder} is not a gradflow result folder (no run.json, no sweep.json).")
    lines = [f"{folder}:"]
    if record is not None:
        versions = record.get("versions", {})
        backend = record.get("backend", {})
        lines += [
            f"  {record.get('kind')} {record.get('name')!r}, {record.get('mode')} mode",
            f"  made by: {' '.join(record.get('command', []))}",
            f"  gradflow {versions.get('gradflow')}, jax {versions.get('jax')} on {backend.get('platform')} "
            f"({_count(backend.get('devices'), 'device')}, {_count(backend.get('processes'), 'process')})",
        ]
        shards = progress is not None and progress["shards"]
        end = record.get("finished") or ("each shard's below" if shards else "not (running, or stopped)")
        lines.append(f"  started {record.get('started')}, finished: {end}")
    if progress is not None:
        missing = progress["missing"]
        gaps = ", ".join(f"{a}-{b}" for a, b in missing[:5]) + (", ..." if len(missing) > 5 else "")
        lines += [f"  rows: {progress['done']} of {progress['rows']} done; "
                  + (f"missing: {progress['rows'] - progress['done']} (rows {gaps})" if missing else "none missing"),
                  f"  fingerprint: {progress['fingerprint'][:16]}"]
        for sh in progress["shards"]:
            when = (f"finished {sh['finished']}" if sh.get("finished")
                    else f"started {sh.get('started')}, not finished (running, or stopped)")
            lines.append(f"  shard {sh['index']}/{sh['count']}: rows {sh['rows'][0]}-{sh['rows'][1]}, "
                         f"{sh['done']} of {sh['size']} done; {when} (host {sh.get('host')}, pid {sh.get('pid')})")
        if progress["trajectories"]:
            lines.append(f"  trajectories: {folder / 'trajectories.zarr'}")
    if not args.json:
        print("\n".join(lines))
    return {"folder": str(folder), "record": record, "sweep": progress}


def _count(n, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}es" if word.endswith("s") else f"{n} {word}s"


def _interrupted(args) -> str:
    """One line: what an interrupted command kept and how to resume."""
    from ._util.results import default_out, read_record

    out = getattr(args, "out", None)
    if args.command == "sweep":
        out = out if out is not None else default_out(args.config.stem, args.quick)
        from . import sweep

        record = sweep.read_manifest(out)
        if record is not None:
            done = int(sweep.done_rows(out, record["rows"]).sum())
            return (f"gradflow: interrupted; {done} of {record['rows']} rows are kept in {out}. Rerun the "
                    "same command to resume (finished rows are not recomputed).")
    if out is not None and read_record(out) is not None:
        return f"gradflow: interrupted; nothing more was written to {out}. Rerun the same command to start again."
    return "gradflow: interrupted before any results were written."


def _in_worker(fn, args):
    """Run `fn(args)` in a thread so that Ctrl-C is handled at once (a compiled call does
    not return to Python until it finishes)."""
    box: dict = {}

    def target():
        try:
            box["value"] = fn(args)
        except BaseException as e:  # noqa: BLE001 - handed to the main thread
            box["error"] = e

    worker = threading.Thread(target=target, daemon=True, name="gradflow-command")
    worker.start()
    try:
        while worker.is_alive():
            worker.join(0.1)
    except KeyboardInterrupt:
        print(file=sys.stderr)
        print(_interrupted(args), file=sys.stderr)
        sys.stderr.flush()
        sys.stdout.flush()
        os._exit(130)  # the worker may be inside a compiled call; files on disk are complete
    if "error" in box:
        raise box["error"]
    return box["value"]


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "study" and (args.list or args.name is None):
        from .studies import STUDIES

        if args.name is None and not args.list:
            print("gradflow study: give a study name, or --list.", file=sys.stderr)
        width = max(len(n) for n in STUDIES)
        for name, s in STUDIES.items():
            print(f"{name.ljust(width)}  {s.SUMMARY}")
        return 0 if args.list else 2
    if args.command == "study" and args.print_config:
        from .studies import STUDIES, packaged_config

        if args.name not in STUDIES:
            print(f"gradflow: error: unknown study {args.name!r}; available: {', '.join(sorted(STUDIES))}.",
                  file=sys.stderr)
            return 2
        sys.stdout.write(packaged_config(args.name).read_text(encoding="utf-8"))
        return 0
    run = {"demo": _run_study, "study": _run_study, "sweep": _run_sweep, "plot": _plot, "status": _status,
           "rm-eval": _run_rm_eval}[args.command]
    from ._util import progress as _progress
    from ._util.results import dumps

    _progress.set_enabled(not getattr(args, "quiet", False))
    as_json = getattr(args, "json", False)
    try:
        with contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext():
            summary = _in_worker(run, args) if threading.current_thread() is threading.main_thread() else run(args)
    except (ValueError, OSError) as e:
        print(f"gradflow: error: {e}", file=sys.stderr)
        return 2
    finally:
        _progress.set_enabled(True)
    if as_json:
        print(dumps(_jsonable(summary), indent=2))
    return 0


def _jsonable(x):
    """The parts of a command's result that are data (tables, numbers, paths); arrays of
    solutions and other objects are left out."""
    import numpy as np

    if isinstance(x, dict):
        out = {}
        for k, v in x.items():
            with contextlib.suppress(TypeError):
                out[str(k)] = _jsonable(v)
        return out
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, Path):
        return str(x)
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    if isinstance(x, (np.generic, np.ndarray)) and x.dtype.kind in "biufU" and x.size <= 1000:
        return x.tolist()
    raise TypeError(type(x).__name__)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
