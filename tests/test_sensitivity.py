"""`gf.sensitivity`: gradients through the solver against finite differences."""

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import optax
import pytest

import gradflow as gf
import gradflow.plotting

matplotlib.use("Agg")

_P = jnp.array([0.10, 0.5, 0.4 / 3, 0.4 / 3, 0.4 / 3])
_R = jnp.array([1.0, 0.8, -1.0, -1.0, -1.0])
_PROXY = _R.at[1].set(-1.0)  # y_med demoted: reaches 0.9 at flow time ~10


def _central(f, r, h):
    return np.array([(f(r.at[j].add(h)) - f(r.at[j].add(-h))) / (2 * h) for j in range(r.size)])


def test_flow_sensitivities_match_finite_differences():
    """Forward mode through diffeqsolve (d V_G(T)/d r, `autodiff="auto"` on 5 outputs)
    and the implicit-function-theorem time gradient (d t*/d r) agree with central
    differences of independent solves (float64, tight tolerances: the differences are
    O(h^2) = 1e-10 accurate)."""
    with jax.enable_x64(True):
        policy = gf.TabularSoftmax.from_probs(_P.astype(jnp.float64))
        r, g = _PROXY.astype(jnp.float64), _R.astype(jnp.float64)
        flow = gf.GradientFlow(rtol=1e-10, atol=1e-12, max_steps=256)
        t1, target, h = 40.0, 0.9, 1e-5

        def run(rr):  # one compiled solve serves both finite differences
            return gf.solve(policy, reward=rr, true_reward=g, method=flow, t1=t1, saveat=gf.SaveAt(n=2),
                            targets=(target,))

        def final(rr):
            return float(run(rr).final_true_reward)

        def hit(rr):
            return float(run(rr).target_times[0])

        dv = np.asarray(gf.sensitivity(policy, r, g, method=flow, t1=t1))[0]
        np.testing.assert_allclose(dv, _central(final, r, h), rtol=1e-5, atol=1e-10)
        dt = np.asarray(gf.sensitivity(policy, r, g, method=flow, t1=t1, target=target))[0]
        np.testing.assert_allclose(dt, _central(hit, r, h), rtol=1e-4)
        # The signs carry the theory: raising y*'s reward brings the target sooner.
        assert dt[0] < 0

        # Past the horizon, the design objective (whose gradient this is) continues the
        # time by `T (1 + (gamma - V(T)) / (gamma - V(0)))`: continuous where the
        # crossing reaches the horizon, and with a gradient.
        t_star = hit(r)

        def objective(rr, horizon):
            return gf.proxy_objective(policy, g, rr, method=flow, target=target, t1=horizon)

        for eps in (1e-6, -1e-6):
            np.testing.assert_allclose(float(objective(r, t_star * (1 + eps))), t_star, rtol=1e-5)
        # The fallback's gradient, in forward mode (reverse mode through the flow: the
        # area objective in test_design_proxy.py).
        forward = flow.differentiable("forward")
        short = np.asarray(jax.jacfwd(lambda rr: gf.proxy_objective(policy, g, rr, method=forward, target=target,
                                                                    t1=t_star / 2))(r))
        assert np.all(np.isfinite(short)) and short[0] < 0  # raising y* helps


_SGD = gf.GradientAscent(optax.sgd(0.1), 200)


def test_discrete_sensitivity_matches_finite_differences():
    with jax.enable_x64(True):
        policy = gf.TabularSoftmax.from_probs(_P.astype(jnp.float64))
        r, g = _PROXY.astype(jnp.float64), _R.astype(jnp.float64)

        def final(rr):
            return float(gf.solve(policy, reward=rr, true_reward=g, method=_SGD,
                                  saveat=gf.SaveAt(every=200)).final_true_reward)

        dv = np.asarray(gf.sensitivity(policy, r, g, method=_SGD))[0]
        np.testing.assert_allclose(dv, _central(final, r, 1e-6), rtol=1e-5, atol=1e-10)


def test_sensitivity_bad_input_and_not_reached():
    policy = gf.TabularSoftmax.from_probs(_P)
    with pytest.raises(ValueError, match="target"):
        gf.sensitivity(policy, _PROXY, _R, method=_SGD, target=0.9)
    with pytest.raises(ValueError, match="method"):
        gf.sensitivity(policy, _PROXY, _R, method=gf.Reinforce(optax.sgd(0.1), 10))
    with pytest.raises(ValueError, match="`autodiff`"):
        gf.sensitivity(policy, _PROXY, _R, method=_SGD, autodiff="backward")
    never = gf.sensitivity(policy, _R, _R, method=gf.GradientFlow(max_steps=256), t1=5.0, target=0.99)
    assert np.all(np.isnan(np.asarray(never)))


def test_plot_sensitivity(tmp_path):
    fig = gradflow.plotting.plot_sensitivity(np.array([-1.0, 2.0, 0.5]), output_names=["a", "b", "c"])
    ax = fig.axes[0]
    assert ax.get_ylabel() and ax.get_xlabel() and ax.get_legend() is not None
    fig.savefig(tmp_path / "s.png")
    matplotlib.pyplot.close(fig)
    with pytest.raises(ValueError, match="kind"):
        gradflow.plotting.plot_sensitivity(np.zeros(3), kind="speed")
