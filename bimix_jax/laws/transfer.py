"""Does a ranking of mixtures at one model size hold at a larger one? Transfer across scale, from a loss table.

For every pair of model sizes (smaller, larger) of a table, the mixtures measured at both (matched by their
proportions) at one common step (the largest step at which at least `MIN_MIXTURES` of them were measured at
both sizes, or a given step): per eval domain, the Spearman correlation of the two sizes' losses over those
mixtures, and of the mean loss over eval domains, each with a 95% percentile bootstrap interval over mixtures.
A high correlation means the small size would have picked the same mixtures.

`proxy_note` states the proxy size a recommendation rests on against published evidence on how small a proxy
may be: Olmix (arXiv 2602.12237; as summarised in ../shared/docs/peers.md) finds proxies of at least ~15M
parameters rank mixtures like 1B models (Spearman > 0.89) and 1M-parameter proxies do not (0.73).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bimix_jax import loss_table as lt
from bimix_jax.errors import InputError
from bimix_jax.laws import select

MIN_MIXTURES = 3
RELIABLE_PROXY_PARAMS = 15e6  # Olmix (arXiv 2602.12237): rankings of >= ~15M-parameter proxies transfer to 1B
EVIDENCE = ("Olmix (arXiv 2602.12237) finds proxies of at least ~15M parameters rank mixtures like 1B models "
            "(Spearman > 0.89) and 1M-parameter proxies do not (0.73)")


def _key(p_D: np.ndarray) -> str:
    return "-".join(f"{round(float(p), 6):g}" for p in p_D)


def _losses(table: lt.LossTable, size: str) -> dict[tuple[str, float, str], float]:
    sub = table.for_model_size(size)
    mixes = {r: _key(p) for r, p in sub.mixtures().items()}
    return {(mixes[r], float(s), str(e)): float(y) for r, s, e, y in zip(sub.run, sub.step, sub.eval_domain, sub.loss)}


def _interval(a: np.ndarray, b: np.ndarray, n_boot: int, rng: np.random.Generator) -> list[float] | None:
    vals = []
    for _ in range(n_boot):
        i = rng.integers(0, len(a), len(a))
        v = select.spearman(a[i], b[i])
        if v is not None:
            vals.append(v)
    return [float(np.percentile(vals, 2.5)), float(np.percentile(vals, 97.5))] if len(vals) >= 10 else None


def permutation_p(a: np.ndarray, b: np.ndarray, n_perm: int = 5000, seed: int = 0) -> float | None:
    """One-sided p-value of the Spearman correlation under random orderings (exact for up to 8 mixtures):
    with few mixtures a perfect ranking is likely by chance (3 mixtures: 1/6)."""
    import itertools

    obs = select.spearman(a, b)
    if obs is None:
        return None
    if len(b) <= 8:
        perms = [np.asarray(q) for q in itertools.permutations(range(len(b)))]
    else:
        rng = np.random.default_rng(seed)
        perms = [rng.permutation(len(b)) for _ in range(n_perm)]
    vals = [select.spearman(a, b[q]) for q in perms]
    return float(np.mean([v is not None and v >= obs - 1e-12 for v in vals]))


def pair(table: lt.LossTable, small: str, large: str, *, step: float | None = None, n_boot: int = 200,
         seed: int = 0) -> dict[str, Any]:
    """Spearman of the losses at `small` and `large` over the mixtures both measured (see the module doc)."""
    a, b = _losses(table, small), _losses(table, large)
    common = {(k, s) for k, s, _ in a} & {(k, s) for k, s, _ in b}
    steps = sorted({s for _, s in common}, reverse=True) if step is None else [float(step)]
    for s in steps:
        keys = sorted({k for k, t in common if t == s})
        if len(keys) >= MIN_MIXTURES:
            break
    else:
        raise InputError(f"model sizes {small} and {large} share fewer than {MIN_MIXTURES} mixtures measured at "
                         f"{'one step' if step is None else f'step {step:g}'}; transfer needs the same mixtures at "
                         "both sizes")
    domains = sorted({e for k, t, e in a if t == s} & {e for k, t, e in b if t == s})
    rng = np.random.default_rng(seed)
    out = {"small": small, "large": large, "step": s, "mixtures": len(keys), "per_domain": {}}
    agg_a, agg_b = [], []
    for e in domains:
        ks = [k for k in keys if (k, s, e) in a and (k, s, e) in b]
        ya, yb = np.array([a[(k, s, e)] for k in ks]), np.array([b[(k, s, e)] for k in ks])
        out["per_domain"][e] = {"mixtures": len(ks), "spearman": select.spearman(ya, yb),
                                "ci95": _interval(ya, yb, n_boot, rng) if len(ks) >= MIN_MIXTURES else None,
                                "p_value": permutation_p(ya, yb, seed=seed)}
    full = [k for k in keys if all((k, s, e) in a and (k, s, e) in b for e in domains)]
    agg_a = np.array([np.mean([a[(k, s, e)] for e in domains]) for k in full])
    agg_b = np.array([np.mean([b[(k, s, e)] for e in domains]) for k in full])
    out["mean_loss"] = {"mixtures": len(full), "spearman": select.spearman(agg_a, agg_b),
                        "ci95": _interval(agg_a, agg_b, n_boot, rng) if len(full) >= MIN_MIXTURES else None,
                        "p_value": permutation_p(agg_a, agg_b, seed=seed)}
    return out


def transfer(table: lt.LossTable, *, step: float | None = None, n_boot: int = 200, seed: int = 0) -> dict[str, Any]:
    """`pair` for every (smaller, larger) pair of the table's model sizes that share enough mixtures."""
    if not table.has_model_size or len(table.model_sizes) < 2:
        raise InputError(f"loss table {table.source} has {len(table.model_sizes) if table.has_model_size else 0} "
                         "model size(s); transfer across scale needs the same mixtures at two sizes or more")
    sizes = sorted(table.model_sizes, key=lt.parse_model_size)
    pairs, skipped = [], {}
    for i, small in enumerate(sizes):
        for large in sizes[i + 1:]:
            try:
                pairs.append(pair(table, small, large, step=step, n_boot=n_boot, seed=seed))
            except InputError as e:
                skipped[f"{small}->{large}"] = str(e)
    if not pairs:
        raise InputError(f"no two model sizes of {table.source} share {MIN_MIXTURES} mixtures at one step: "
                         + "; ".join(skipped.values()))
    return {"pairs": pairs, "skipped": skipped}


def markdown(res: dict[str, Any]) -> str:
    def cell(d):
        v, ci, p = d["spearman"], d.get("ci95"), d.get("p_value")
        if v is None:
            return "-"
        return f"{v:.2f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "") + (f" p={p:.3f}" if p is not None else "")

    domains = sorted({e for p in res["pairs"] for e in p["per_domain"]})
    lines = ["| sizes | step | mixtures | mean loss | " + " | ".join(domains) + " |",
             "|" + "---|" * (4 + len(domains))]
    for p in res["pairs"]:
        cells = [cell(p["per_domain"][e]) if e in p["per_domain"] else "-" for e in domains]
        lines.append(f"| {p['small']} -> {p['large']} | {p['step']:g} | {p['mixtures']} | {cell(p['mean_loss'])} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


def proxy_note(model_size: str | float) -> dict[str, Any]:
    """The proxy size a recommendation rests on, and whether it is below the published reliable size."""
    n = float(model_size) if isinstance(model_size, (int, float)) else lt.parse_model_size(str(model_size))
    below = n < RELIABLE_PROXY_PARAMS
    text = (f"The recommendation rests on proxies of {n:,.0f} non-embedding parameters. " + EVIDENCE + "; "
            + ("these proxies are below that size, so the ranking of mixtures they give may not hold for a large "
               "model: check it at a larger size before a large run." if below else
               "these proxies are at or above that size."))
    return {"proxy_params": n, "reliable_params": RELIABLE_PROXY_PARAMS, "below_reliable": below, "text": text}
