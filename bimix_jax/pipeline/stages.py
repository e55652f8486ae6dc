"""The pipeline's analysis stages, from loss tables and laws to JSON-able results (no training here).

* `fixed_mixtures`, `corpus_mixtures`: the training-free mixtures of a prepared corpus (natural shares, uniform, the entropy
  proxies) with the entropy report;
* `candidate_mixtures`: the candidate list from the corpus's natural shares and entropy mixtures, with
  duplicates (equal to 1e-6) marked;
* `fit_stage`: BiMix fitted on every candidate's checkpoints from `min_step` on, scored by the
  `last_step` protocol and by leaving each candidate out in turn (fit on the others, predict the held-out
  run's whole curve in the fitted step range);
* `mixture_stage`: the best mixture under the fitted law (`bimix_jax.mixture.optimize`) and its bootstrap
  interval over runs (`bimix_jax.mixture.uncertainty`);
* `confirm_stage`: the law's prediction for the recommended run (the confirmation run) against what it measured, and the
  observed average validation loss of every run side by side.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

from bimix_jax.entropy import counts as entropy_counts
from bimix_jax.entropy.vne import EmbedConfig
from bimix_jax.errors import InputError
from bimix_jax.laws import protocols, select
from bimix_jax.laws.base import FittedLaw, get_law
from bimix_jax.laws.fit import fit_law
from bimix_jax.loss_table import LossTable
from bimix_jax.mixture import constraints, optimize, proportions, uncertainty

LAW = "bimix"
AUTO_CANDIDATES = ("bimix", "dml")  # pipeline.law = auto chooses among these (bimix_jax.laws.select)
DUPLICATE_ATOL = 1e-6
ENTROPY_PROXIES = ("se", "ce", "je", "vne")
SOURCES = {
    "natural": "natural token shares of the training split",
    "uniform": "equal shares",
    "se": "softmax of each domain's Shannon (unigram) entropy, BiMix Eq. 13",
    "ce": "softmax of each domain's conditional entropy H(X_t+1 | X_t), BiMix Eq. 12-13",
    "je": "softmax of each domain's joint (bigram) entropy, BiMix Eq. 13",
    "vne": "softmax of each domain's von Neumann entropy of document embeddings, BiMix Eq. 17-18",
}


def fixed_mixtures(tokens) -> dict[str, np.ndarray]:
    """The "natural" token shares of a corpus's training split and "uniform", in domain order."""
    return {proportions.NATURAL: proportions.natural(tokens.token_counts("train"), tokens.domains),
            proportions.UNIFORM: proportions.uniform(len(tokens.domains))}


def corpus_mixtures(prepared, *, temperature: float, sequence_length: int, max_docs: int
                    ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The entropy report of a corpus (`bimix_jax.data.source.open_data`: in memory or a token store) and its
    training-free mixtures ("natural" token shares, "uniform", and the entropy proxies "se", "ce", "je", "vne"),
    each in domain order."""
    domains, seed = prepared.domains, prepared.spec.seed
    rep = entropy_counts.entropy_report(
        prepared.entropy_streams(), prepared.vocab_size,
        {d: prepared.documents(d, "train", max_docs=max_docs, seed=seed) for d in domains}, proxy="ce",
        temperature=temperature, sequence_length=sequence_length, max_docs=max_docs,
        embed_config=EmbedConfig(seed=seed))
    named = fixed_mixtures(prepared)
    named.update({m: np.array([rep["mixtures"][m][d] for d in domains]) for m in ENTROPY_PROXIES})
    rep.pop("mixture")  # only the chosen proxy's copy of one of `mixtures`
    return rep, named


def candidate_mixtures(domains: Sequence[str], named: Mapping[str, np.ndarray], order: Sequence[str],
                       extras: Sequence[tuple[str, np.ndarray]]) -> list[dict[str, Any]]:
    """Candidates in order (`order` from `named`, then `extras`); `duplicate_of` names an earlier equal one."""
    out: list[dict[str, Any]] = []
    items = [(n, named[n], SOURCES[n]) for n in order] + [(n, r, "given in pipeline.extra_candidates")
                                                          for n, r in extras]
    for name, r_D, source in items:
        r_D = np.asarray(r_D, np.float64)
        dup = next((c["name"] for c in out if c["duplicate_of"] is None
                    and np.max(np.abs(np.array(list(c["mixture"].values())) - r_D)) <= DUPLICATE_ATOL), None)
        out.append({"name": name, "source": source, "mixture": dict(zip(domains, r_D.tolist())),
                    "duplicate_of": dup})
    return out


def _trim(report: dict[str, Any]) -> dict[str, Any]:
    """An evaluate report without the refitted laws' parameters (kept small; the points stay)."""
    return {k: v for k, v in report.items() if k != "fits"}


def fit_options(n_starts: int, loss: str, huber_delta: float) -> dict[str, Any]:
    return {"n_starts": int(n_starts), "loss": loss, "huber_delta": float(huber_delta)}


def fit_table(table: LossTable, min_step: float) -> LossTable:
    return table.subset(table.step >= min_step, what=f"fit window (steps >= {min_step:g})")


def choose_law(rows: LossTable) -> tuple[str, dict[str, Any]]:
    """`pipeline.law = auto`: the law of AUTO_CANDIDATES with the best leave-one-mixture-out R^2 on the checkpoints
    before each run's last one (so the last checkpoints, which the report scores as held out, never choose)."""
    last = np.max(rows.step)
    early = rows.subset(rows.step < last, what="checkpoints before the last")
    try:
        best, scores = select.choose(early, AUTO_CANDIDATES, protocol="leave_one_out")
    except InputError as e:
        return LAW, {"chosen": LAW, "reason": f"no candidate could be cross-validated ({e}); fell back to {LAW}"}
    return select.CANDIDATES[best][0], {"chosen": best, "protocol": "leave_one_out before the last checkpoint",
                                        "scores": {k: {m: v.get(m) for m in ("r2_log", "mre_pct", "folds_skipped")}
                                                   for k, v in scores.items()}}


def fit_stage(table: LossTable, *, min_step: float, options: Mapping[str, Any], leave_one_out: bool,
              law: str = LAW, target_step: float | None = None) -> dict:
    """Fits `law` (bimix, dml, or auto: `choose_law`) on the candidates' checkpoints from `min_step` on, with both
    held-out scores; a law without a step model (dml) is fitted at `target_step`."""
    rows = fit_table(table, min_step)
    choice = None
    if law == "auto":
        law, choice = choose_law(rows)
    at = {"target_step": float(target_step)} if target_step and not get_law(law).uses_step else {}
    fitted = fit_law(rows, law, **options, **at)
    last = protocols.last_step(rows, law, **options)
    fitted = protocols.attach(fitted, last)
    loco: dict[str, Any] = {}
    if leave_one_out:
        for run in rows.runs:
            try:
                loco[run] = _trim(protocols.mixtures(rows, law, holdout_runs=[run], **options))
            except InputError as e:  # e.g. the other runs leave a domain's exponent unidentifiable
                loco[run] = {"skipped": str(e)}
    return {"law": fitted.to_json(), "min_step": float(min_step), "rows": len(rows), "runs": list(rows.runs),
            "steps": sorted(set(rows.step.tolist())), "last_step": _trim(last), "leave_one_out": loco,
            "law_choice": choice}


def proportion_range(table: LossTable) -> dict[str, tuple[float, float]]:
    return {d: (float(table.p[:, i].min()), float(table.p[:, i].max())) for i, d in enumerate(table.domains)}


def mixture_stage(fitted: FittedLaw, table: LossTable, *, step: float, weights: Mapping[str, float] | None,
                  bounds: constraints.Bounds, n_boot: int, seed: int) -> dict:
    """The optimizer's report (see `optimize.optimize_mixture`) for the fitted law, with its bootstrap; the
    optimum is compared with uniform and, where `bounds` has the corpus's token counts, the natural mixture."""
    domains = fitted.train_domains
    with jax.enable_x64(True):  # The optimizer is tiny; float64 makes it exact (scoped: training stays float32).
        report = optimize.optimize_mixture(fitted, step=step, weights=weights, bounds=bounds,
                                           proportion_range=proportion_range(table))
        if n_boot:
            refs = {n: np.array([m[d] for d in domains]) for n, m in report["references"].items()}
            weights_E = np.array([report["weights"][e] for e in fitted.eval_domains])
            report["bootstrap"] = uncertainty.bootstrap_optimum(
                table, fitted, n_boot=n_boot, seed=seed, step=step, weights_E=weights_E, bounds=bounds,
                references=refs)
    return report


def _weighted(losses: Mapping[str, float], weights: Mapping[str, float]) -> float:
    return float(sum(w * losses[e] for e, w in weights.items() if w > 0))


def _observed_at(name: str, table: LossTable, last_step: float, weights: Mapping[str, float]) -> dict[str, float]:
    at = table.step == last_step
    observed = {str(e): float(x) for e, x in zip(table.eval_domain[at], table.loss[at])}
    if set(observed) != set(weights):
        raise InputError(f"run {name} has no evaluation of every domain at step {last_step:g}; rerun the "
                         "pipeline to finish it")
    return observed


def confirm_stage(fitted: FittedLaw, tables: Mapping[str, LossTable], *, recommended: str, last_step: float,
                     min_step: float, weights: Mapping[str, float],
                     noise_tables: Mapping[str, LossTable] | None = None,
                     recommended_noise_tables: Mapping[str, LossTable] | None = None) -> dict:
    """Predicted vs observed for the recommended run; every run's observed average loss at `last_step`.

    `tables` maps each run (candidates and the recommended one) to its loss table; `weights` are the
    objective's weights over the eval domains (their weighted mean is "the average validation loss").
    `noise_tables` are runs of the first candidate's mixture with other seeds: the spread of its average
    loss over seeds is reported as `seed_noise`. `recommended_noise_tables` are the recommended mixture with
    the same other seeds (in the same order): `paired` holds the per-seed differences (recommended minus
    reference) against the first candidate, `uniform` and the best candidate, over the seeds both have.
    """
    runs = {}
    for name, table in tables.items():
        observed = _observed_at(name, table, last_step, weights)
        sub = table.subset(table.step == last_step)
        try:
            predicted = dict(zip(sub.eval_domain.tolist(), protocols.predict_rows(fitted, sub).tolist()))
        except InputError:  # e.g. a candidate without some domain: BiMix cannot predict it
            predicted = None
        runs[name] = {"observed": observed, "observed_average": _weighted(observed, weights),
                      "observed_mean": float(np.mean(list(observed.values()))), "predicted": predicted,
                      "predicted_average": None if predicted is None else _weighted(predicted, weights)}
    order = sorted(runs, key=lambda n: runs[n]["observed_average"])
    for rank, name in enumerate(order, start=1):
        runs[name]["rank"] = rank
    rec = runs[recommended]
    table = tables[recommended]
    pred_all = np.asarray(protocols.predict_rows(fitted, table), np.float64)
    curve = {}
    for label, mask in (("fit_window", table.step >= min_step), ("all_steps", np.ones(len(table), bool))):
        per_domain = {e: protocols.metrics(table.loss[mask & (table.eval_domain == e)],
                                          pred_all[mask & (table.eval_domain == e)]) for e in fitted.eval_domains}
        curve[label] = {"per_domain": per_domain, **protocols.summarise(per_domain, table.loss[mask], pred_all[mask])}
    seed_noise = None
    if noise_tables:
        first = next(iter(tables))
        averages = {first: runs[first]["observed_average"]}
        for n, t in noise_tables.items():
            averages[n] = _weighted(_observed_at(n, t, last_step, weights), weights)
        values = np.array(list(averages.values()))
        seed_noise = {"mixture_of": first, "observed_average": averages, "mean": float(values.mean()),
                      "std": float(values.std(ddof=1)), "n": int(values.size)}
    best_candidate = min((n for n in runs if n != recommended), key=lambda n: runs[n]["observed_average"])
    first = next(iter(tables))
    per_seed = {n: [runs[n]["observed_average"]] for n in runs}
    for group, name in ((noise_tables, first), (recommended_noise_tables, recommended)):
        for n, t in (group or {}).items():
            per_seed[name].append(_weighted(_observed_at(n, t, last_step, weights), weights))
    paired = {}
    for ref in dict.fromkeys([first, "uniform", best_candidate]):
        if ref in per_seed and ref != recommended:
            n = min(len(per_seed[ref]), len(per_seed[recommended]))
            d = np.array(per_seed[recommended][:n]) - np.array(per_seed[ref][:n])
            paired[ref] = {"differences": d.tolist(), "mean": float(d.mean()),
                           "std": float(d.std(ddof=1)) if n > 1 else None, "seeds": n,
                           "recommended_wins": int(np.sum(d < 0))}
    return {
        "paired": paired,
        "last_step": float(last_step),
        "weights": dict(weights),
        "runs": runs,
        "ranking": order,
        "recommended": recommended,
        "recommended_rank": rec["rank"],
        "best_candidate": best_candidate,
        "gain_vs_best_candidate": runs[best_candidate]["observed_average"] - rec["observed_average"],
        "seed_noise": seed_noise,
        "prediction_error_at_last_step": {
            e: {"predicted": rec["predicted"][e], "observed": rec["observed"][e],
                "relative_error_pct": 100 * (rec["predicted"][e] - rec["observed"][e]) / rec["observed"][e]}
            for e in fitted.eval_domains},
        "average_prediction_error_pct": 100 * (rec["predicted_average"] - rec["observed_average"])
        / rec["observed_average"],
        "curve": curve,
        "points": {"step": table.step.tolist(), "eval_domain": table.eval_domain.tolist(),
                   "observed": table.loss.tolist(), "predicted": pred_all.tolist()},
    }
