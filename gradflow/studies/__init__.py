"""Studies: each scientific claim is one command, `gradflow study <name>`.

A study is one module of this package (see [`Study`][gradflow.studies._base.Study]): a
typed `Config` read from its TOML file (`experiments/<name>.toml` in the repository, the
one copy, which packaging ships as `gradflow/experiments/`), a `compute(config)` that returns its
tables, a `report(tables, config, out)` that writes them with the figures and prints the
summary, and a `plot(out)` that redraws the figures. [`STUDIES`][gradflow.studies.STUDIES]
lists them; adding a study is one module, its config, its tests and one line there.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from . import (
    categorization_map,
    estimators,
    feature_similarity,
    neural_policy,
    partial_credit,
    proxy_design,
    reinforce_seeds,
    rm_metrics,
    stalling,
    token_credit,
)
from ._base import Study, StudyConfig, load, packaged_config, to_dict

STUDIES: dict[str, Study] = {m.NAME: m for m in (
    stalling, reinforce_seeds, estimators, categorization_map, partial_credit, rm_metrics, feature_similarity,
    token_credit, neural_policy, proxy_design,
)}
"""Every study, by its command-line name, in the order `gradflow study --list` shows them."""


def study(name: str) -> Study:
    """The study called `name`; a `ValueError` listing the known ones otherwise."""
    if name not in STUDIES:
        raise ValueError(f"unknown study {name!r}; available: {', '.join(sorted(STUDIES))}.")
    return STUDIES[name]


def load_config(name: str, config: str | Path | None = None, *, quick: bool = False) -> StudyConfig:
    """The config of study `name`: its packaged file, or the file `config`, checked, with
    the `[quick.<section>]` values applied when `quick`."""
    s = study(name)
    return load(s.Config, config if config is not None else packaged_config(name), quick=quick)


def run_study(
    name: str, out: Path | None = None, quick: bool = False, config: Path | None = None, force: bool = False
) -> dict:
    """Run study `name` from its packaged config (or `config`), writing under `out`
    (default `gradflow-results/<name>/`, or `<name>-quick/` with `quick`).

    The config is checked and `out` claimed (see `gradflow._util.results.result_folder`) before
    any work; the folder records the run's provenance in `run.json`.

    **Returns:** the study's tables (the fields of its `Tables`) and, under `"figures"`,
    the paths of the figures written.
    """
    from .._util.results import default_out, result_folder

    s = study(name)
    cfg = load_config(name, config, quick=quick)
    out = default_out(name, quick) if out is None else Path(out)
    with result_folder(out, kind="study", name=name, config=to_dict(cfg), quick=quick, force=force):
        tables = s.compute(cfg, out) if getattr(s, "COMPUTE_WRITES", False) else s.compute(cfg)
        figures = s.report(tables, cfg, out)
    return {**{f.name: getattr(tables, f.name) for f in dataclasses.fields(tables)}, "figures": figures}


def redraw(folder: str | Path, by: str | None = None) -> list[Path]:
    """Redraw the figures of a result folder from the data saved in it (`gradflow plot DIR`).

    **Arguments:**

    - `folder`: a study's result folder (its `run.json` says which study; a folder without
      one is recognised by the study named in its `figures.npz`) or a sweep folder (with
      `sweep.json`).
    - `by`: a sweep with trajectories: the column that groups its bands of true reward.

    **Returns:** the paths of the figures written.

    **Raises:** `ValueError` when the folder holds neither.
    """
    from .._util.results import read_record
    from ..plotting import FIGURE_DATA, load_figure_data

    folder = Path(folder)
    record = read_record(folder) or {}
    name = record.get("name") if record.get("kind") == "study" else None
    if name is None and record.get("kind") != "sweep" and not (folder / "sweep.json").is_file() \
            and (folder / FIGURE_DATA).is_file():
        name = load_figure_data(folder).get("study")
    if name is not None:
        if by is not None:
            raise ValueError(f"`--by` is for sweeps with trajectories; {folder} holds study {name!r}.")
        if name not in STUDIES:
            raise ValueError(f"{folder} holds the results of study {name!r}, which has no figures to redraw; "
                             f"known studies: {', '.join(sorted(STUDIES))}.")
        return STUDIES[name].plot(folder)
    if (folder / "sweep.json").is_file():
        return categorization_map.plot(folder, by=by)
    raise ValueError(f"{folder} holds neither a study's results (run.json) nor a sweep (sweep.json); "
                     "nothing to redraw.")


__all__ = ["STUDIES", "Study", "StudyConfig", "load_config", "redraw", "run_study", "study"]
