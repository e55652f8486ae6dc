r"""Training-free mixtures from entropy proxies (BiMix Eq. 12-13): SE, CE, JE over tokens, VNE over documents.

    python -m experiments.entropy_mixture --config=configs/tiny.py --workdir=workdirs/tiny
    python -m experiments.entropy_mixture --config=configs/tiny.py --workdir=workdirs/tiny --proxy=vne --temperature=2
    python -m experiments.entropy_mixture --config=configs/proxy.py --config.data.source=store \
        --config.data.path=/data/store --workdir=workdirs/store_entropy

Prepares the data in `<workdir>/data/` (or reuses it; a token store is streamed, never loaded), measures every
domain's training split and writes `<workdir>/entropy_mixture.json` (or `--out`): per-domain entropies (nats) and
token counts, the four mixtures, the chosen proxy's mixture and the consistency constant
ln r_JE - ln r_SE - ln r_CE. Bad input is one line on stderr and exit code 2, with nothing written.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from absl import flags
from ml_collections import config_flags

from experiments import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/tiny.py.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Folder whose data/ holds (or will hold) the prepared data.")
_PROXY = flags.DEFINE_enum("proxy", "ce", ["se", "ce", "je", "vne"], "Entropy whose mixture is 'mixture'.")
_TEMPERATURE = flags.DEFINE_float("temperature", 1.0, "Softmax temperature T: r = softmax(H / T).")
_OUT = flags.DEFINE_string("out", "", "Output JSON ('' = <workdir>/entropy_mixture.json).")
_SEQUENCE_LENGTH = flags.DEFINE_integer("sequence_length", 0, "Count pairs only within consecutive sequences "
                                        "of this many tokens (the paper: 1024); 0 = the whole stream.")
_MAX_DOCS = flags.DEFINE_integer("vne_max_docs", 1000,
                                 "Documents per domain embedded for VNE (a seeded subsample).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: Sequence[str]) -> None:
    del argv
    from bimix_jax import atomic, checks
    from bimix_jax.data.source import open_data
    from bimix_jax.data.spec import DataSpec
    from bimix_jax.errors import InputError
    from bimix_jax.entropy import counts as entropy_counts
    from bimix_jax.entropy.vne import EmbedConfig

    spec = DataSpec.from_config(_CONFIG.value.data)
    # Check the cheap flags before preparing data (which may write the workdir).
    entropy_counts.entropy_mixture({"_": 0.0}, _TEMPERATURE.value)
    if _SEQUENCE_LENGTH.value < 0 or _SEQUENCE_LENGTH.value == 1:
        raise InputError(f"--sequence_length={_SEQUENCE_LENGTH.value} must be 0 or >= 2")
    if _MAX_DOCS.value < 1:
        raise InputError(f"--vne_max_docs={_MAX_DOCS.value} must be >= 1")
    checks.output_dir("--workdir", _WORKDIR.value)
    out = _OUT.value or os.path.join(_WORKDIR.value, "entropy_mixture.json")
    checks.output_file("--out", out)
    data = open_data(spec, _WORKDIR.value)  # in memory (prepared in the workdir), or a token store streamed
    report = entropy_counts.entropy_report(
        data.entropy_streams(), data.vocab_size,
        {d: data.documents(d, "train", max_docs=_MAX_DOCS.value, seed=spec.seed) for d in data.domains},
        proxy=_PROXY.value, temperature=_TEMPERATURE.value, sequence_length=_SEQUENCE_LENGTH.value,
        max_docs=_MAX_DOCS.value, embed_config=EmbedConfig(seed=spec.seed))
    report["data"] = {"split": "train", "tokens_fingerprint": data.fingerprint(), "eos_id": data.run_data.eos_id,
                      "tokenizer": data.tokenizer_path, "spec": spec.to_dict()}
    atomic.write_json(out, report)
    print(f"{'domain':>16s} {'tokens':>10s} {'SE':>7s} {'CE':>7s} {'JE':>7s} {'VNE':>7s}   "
          f"mixture ({report['proxy']})")
    for d in report["domains"]:
        e = report["entropy"][d]
        print(f"{d:>16s} {e['tokens']:10d} {e['se']:7.4f} {e['ce']:7.4f} {e['je']:7.4f} {e['vne']:7.4f}   "
              f"{report['mixture'][d]:.4f}")
    c = report["consistency"]
    print(f"ln r_JE - ln r_SE - ln r_CE = {c['constant']:.6f} for every domain (spread {c['spread']:.1e}); "
          f"wrote {out}")


if __name__ == "__main__":
    cli.run(main)
