"""RegMix's main regressor (Liu et al., arXiv 2407.01492): LightGBM trees from the mixture to the loss, per eval domain.

Fitted at one step on the runs measured there, like the other regression laws (`regression.py`). Settings are
RegMix's (`regression_fitting/regression.ipynb`: gbdt, L2 regression, learning rate 0.01, at most 1000 rounds,
seed 42), except how the number of rounds is chosen: RegMix early-stops on its held-out mixtures; here it and
`num_leaves` (`LEAVES_GRID`) are chosen by 5-fold cross-validation over the fitting runs only (`lightgbm.cv`,
early stopping after `PATIENCE` rounds without improvement of the mean fold L2), then one model is trained on
all fitting runs. `min_data_in_leaf` is LightGBM's 20, lowered to N/10 (at least 2) for tables of fewer than 200
runs. The target is log loss (as for the kernel law), which does not change a ranking.

The trees are stored as arrays (`FittedLaw.params`: split feature, threshold, children, leaf values per tree,
padded), so a fit file needs no LightGBM to be read; `predict` evaluates them on the host through
`jax.pure_callback` (jit and vmap work). The law is piecewise constant: it has no gradient, so
`regression.regmix_optimize` (RegMix's Dirichlet search) is its optimiser, and asking for a gradient raises a
one-line error. LightGBM is an optional dependency (`pip install -e '.[regmix]'`): the library imports without
it, and fitting without it is a one-line error saying how to install it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from bimix_jax.errors import InputError
from bimix_jax.laws.base import register
from bimix_jax.laws.regression import _Regression

SETTINGS = {"objective": "regression", "boosting_type": "gbdt", "learning_rate": 0.01, "seed": 42,
            "deterministic": True, "verbosity": -1, "num_threads": 2}
MAX_ROUNDS = 1000
PATIENCE = 50
LEAVES_GRID = (7, 31)
FOLDS = 5
INSTALL = "pip install -e '.[regmix]' (or pip install lightgbm)"


def _lightgbm():
    try:
        import lightgbm
    except ImportError:
        raise InputError(f"the lightgbm law needs the LightGBM package, which is not installed; {INSTALL}") from None
    return lightgbm


def _arrays(dump: Mapping) -> dict[str, np.ndarray]:
    """Tree arrays of one model: feature, threshold, left, right [T, M]; value [T, L]; root [T]. A child < 0 is
    leaf ~child; a root < 0 is a single-leaf tree."""
    trees = dump["tree_info"]
    feats, thr, left, right, values, roots = [], [], [], [], [], []
    for t in trees:
        f, th, lc, rc, lv = [], [], [], [], []

        def walk(node):
            if "leaf_value" in node:
                lv.append(float(node["leaf_value"]))
                return -len(lv)  # ~(leaf index)
            if node.get("decision_type", "<=") != "<=":
                raise InputError("the lightgbm law supports numeric '<=' splits only")
            i = len(f)
            f.append(int(node["split_feature"]))
            th.append(float(node["threshold"]))
            lc.append(0)
            rc.append(0)
            lc[i] = walk(node["left_child"])
            rc[i] = walk(node["right_child"])
            return i

        roots.append(walk(t["tree_structure"]))
        feats.append(f)
        thr.append(th)
        left.append(lc)
        right.append(rc)
        values.append(lv)
    m = max(1, max(len(f) for f in feats))
    n_leaf = max(len(v) for v in values)

    def pad(rows, width, fill):
        return np.array([r + [fill] * (width - len(r)) for r in rows], float)

    return {"feature": pad(feats, m, 0), "threshold": pad(thr, m, 0.0), "left": pad(left, m, -1),
            "right": pad(right, m, -1), "value": pad(values, n_leaf, 0.0), "root": np.array(roots, float)}


def evaluate(arrays: Mapping[str, np.ndarray], x_BxD: np.ndarray) -> np.ndarray:
    """Sum of the trees' leaf values at each row [B] (numpy; one pass per tree, vectorised over rows)."""
    feature, thr = arrays["feature"].astype(int), arrays["threshold"]
    left, right = arrays["left"].astype(int), arrays["right"].astype(int)
    value, root = arrays["value"], arrays["root"].astype(int)
    out = np.zeros(len(x_BxD))
    rows = np.arange(len(x_BxD))
    for t in range(len(root)):
        if root[t] < 0:
            out += value[t, ~root[t]]
            continue
        node = np.full(len(x_BxD), root[t])
        live = np.ones(len(x_BxD), bool)
        while live.any():
            n = node[live]
            go = x_BxD[rows[live], feature[t, n]] <= thr[t, n]
            node[live] = np.where(go, left[t, n], right[t, n])
            live = node >= 0
        out += value[t, ~node]
    return out


def _cv_fit(x_NxD: np.ndarray, z_N: np.ndarray) -> tuple[dict, dict]:
    lgb = _lightgbm()
    n = len(z_N)
    params = {**SETTINGS, "min_data_in_leaf": 20 if n >= 200 else max(2, n // 10),
              "min_data_in_bin": 1, "feature_pre_filter": False}
    best = None
    for leaves in LEAVES_GRID:
        p = {**params, "num_leaves": leaves, "metric": "l2"}
        cv = lgb.cv(p, lgb.Dataset(x_NxD, z_N, params={"verbosity": -1}), num_boost_round=MAX_ROUNDS,
                    nfold=min(FOLDS, n), stratified=False, shuffle=True, seed=SETTINGS["seed"],
                    callbacks=[lgb.early_stopping(PATIENCE, verbose=False)])
        curve = np.asarray(cv["valid l2-mean"])
        rounds = int(np.argmin(curve)) + 1
        if best is None or curve[rounds - 1] < best[0]:
            best = (float(curve[rounds - 1]), leaves, rounds)
    cv_l2, leaves, rounds = best
    booster = lgb.train({**params, "num_leaves": leaves}, lgb.Dataset(x_NxD, z_N, params={"verbosity": -1}),
                        num_boost_round=rounds)
    return _arrays(booster.dump_model()), {"num_leaves": leaves, "rounds": rounds,
                                           "cv_rmse_log": float(np.sqrt(cv_l2)),
                                           "min_data_in_leaf": params["min_data_in_leaf"]}


def _pad_stack(per: Sequence[Mapping[str, np.ndarray]], key: str) -> np.ndarray:
    shape = tuple(max(np.shape(p[key])[i] for p in per) for i in range(np.ndim(per[0][key])))
    fill = -1.0 if key in ("left", "right") else 0.0
    out = np.full((len(per), *shape), fill)
    for e, p in enumerate(per):
        out[(e, *map(slice, np.shape(p[key])))] = p[key]
    return out


@jax.custom_jvp
def _trees(params: dict, r_BxD: jax.Array) -> jax.Array:
    def host(p, r):
        p = {k: np.asarray(v) for k, v in p.items()}
        r = np.asarray(r, float)
        cols = []
        for e in range(p["root"].shape[0]):
            n_t = int(p["n_trees"][e])
            arrays = {k: p[k][e][:n_t] for k in ("feature", "threshold", "left", "right", "value", "root")}
            cols.append(p["init"][e] + evaluate(arrays, r))
        return np.stack(cols, axis=-1).astype(np.result_type(float))

    out = jax.ShapeDtypeStruct((r_BxD.shape[0], params["root"].shape[0]), r_BxD.dtype)
    return jax.pure_callback(host, out, params, r_BxD, vmap_method="sequential")


@_trees.defjvp
def _trees_jvp(primals, tangents):
    raise InputError("the lightgbm law is piecewise constant and has no gradient; optimise it with RegMix's search "
                     "(experiments.fit_law --search_samples=100000) instead of a gradient-based optimizer")


@register
class LightGBM(_Regression):
    """log L_e(r) = init_e + sum_t tree_et(r): LightGBM per eval domain (see the module doc)."""

    name = "lightgbm"
    param_names = ("feature", "threshold", "left", "right", "value", "root", "n_trees", "init")
    min_runs = 10

    def fit_domain(self, x_NxD, y_N):
        arrays, info = _cv_fit(np.asarray(x_NxD, float), np.log(np.asarray(y_N, float)))
        return {**arrays, "n_trees": float(len(arrays["root"])), "init": 0.0, **info}

    def stack(self, per):
        out = {k: _pad_stack(per, k) for k in ("feature", "threshold", "left", "right", "value")}
        out["root"] = _pad_stack(per, "root")
        out["n_trees"] = np.array([p["n_trees"] for p in per], float)
        out["init"] = np.array([p["init"] for p in per], float)
        return out

    def predict(self, params, r_D, s):
        del s
        r = jnp.asarray(r_D)
        flat = r.reshape(-1, r.shape[-1])
        out = jnp.exp(_trees({k: jnp.asarray(v) for k, v in params.items()}, flat))
        return out.reshape(*r.shape[:-1], out.shape[-1])
