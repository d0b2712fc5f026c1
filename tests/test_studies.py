"""The study runner, its configs and the command line."""

import math
import tomllib
from pathlib import Path

import pytest

from gradflow import _config as C, cli
from gradflow._studies import STALLING_SCHEMA, STUDIES, run_study

ROOT = Path(__file__).resolve().parents[1]


def test_packaged_configs_mirror_experiments_folder():
    packaged = sorted(p.name for p in C.packaged_config("stalling").parent.glob("*.toml"))
    mirrored = sorted(p.name for p in (ROOT / "experiments").glob("*.toml"))
    assert packaged == mirrored
    for name in packaged:
        assert (ROOT / "experiments" / name).read_bytes() == (
            C.packaged_config("stalling").parent / name
        ).read_bytes(), f"experiments/{name} drifted from gradflow/experiments/{name}"


def test_every_study_has_a_valid_packaged_config():
    for name, study in STUDIES.items():
        cfg = C.load(C.packaged_config(name), study.schema)
        assert set(cfg) == set(study.schema)


def _raw():
    return tomllib.loads(C.packaged_config("stalling").read_text())


@pytest.mark.parametrize(
    "edit, key",
    [
        (lambda r: r["sgd"].update(learnin_rate=0.1), "sgd.learnin_rate"),
        (lambda r: r.update(extra={}), "extra"),
        (lambda r: r["sgd"].update(steps=1.5), "sgd.steps"),
        (lambda r: r["sgd"].update(learning_rate=-0.1), "sgd.learning_rate"),
        (lambda r: r["problem"].update(p_best=[0.05, 1.5]), "problem.p_best"),
        (lambda r: r["problem"].update(true_reward=[1.0, float("nan")]), "problem.true_reward"),
        (lambda r: r["flow"].pop("t1"), "flow.t1"),
    ],
)
def test_config_errors_name_the_key(edit, key):
    raw = _raw()
    edit(raw)
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        C.validate(raw, STALLING_SCHEMA)


@pytest.fixture(scope="module")
def quick_stalling(tmp_path_factory):
    out = tmp_path_factory.mktemp("stalling")
    return out, run_study("stalling", out=out, quick=True)


def test_stalling_study_quick_writes_table_and_figures(quick_stalling):
    out, result = quick_stalling
    for name in ("summary.csv", "true_reward.png", "probs.png"):
        assert (out / name).stat().st_size > 0
    lines = (out / "summary.csv").read_text().splitlines()
    assert len(lines) == 1 + len(result["rows"]) == 1 + 12


def test_stalling_study_shows_the_claim(quick_stalling):
    """Proxy reaches 0.9 >= 5x sooner for p(y*) = 0.05; the true-reward run stalls near 0.8."""
    _, result = quick_stalling
    rows = {(r["p_best"], r["trained_on"], r["method"]): r for r in result["rows"]}
    for method in ("flow", "SGD"):
        t_true = rows[(0.05, "true", method)]["time_to_0.9"]
        t_proxy = rows[(0.05, "proxy", method)]["time_to_0.9"]
        assert math.isfinite(t_proxy) and t_true >= 5 * t_proxy
        assert abs(rows[(0.05, "true", method)]["stall_level"] - 0.8) < 0.05
        assert math.isnan(rows[(0.05, "proxy", method)]["stall_level"])
        assert all(r["status"] == "ok" for r in result["rows"])


def test_cli_list_and_errors(capsys, tmp_path):
    assert cli.main(["study", "--list"]) == 0
    assert "stalling" in capsys.readouterr().out
    assert cli.main(["study", "no-such-study", "--out", str(tmp_path)]) == 2
    assert "unknown study 'no-such-study'" in capsys.readouterr().err
    bad = tmp_path / "bad.toml"
    bad.write_text(C.packaged_config("stalling").read_text().replace("steps = 50000", "stepz = 50000"))
    assert cli.main(["study", "stalling", "--config", str(bad), "--out", str(tmp_path)]) == 2
    assert "sgd.stepz" in capsys.readouterr().err
