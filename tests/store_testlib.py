"""A small token store for tests: three domains of repeated words in jsonl files, its own tokenizer."""

import json
import os

import numpy as np

from bimix_jax.data import store

WORDS = {"code": "def x ( ) : return y + 1 ; for i in range while", "prose": "the cat sat on a mat and ran far away",
         "math": "1 + 2 = 3 ; 4 * 5 = 20 ; 7 - 2 = 5 ; 9 / 3 = 3"}


def make_store(root: str, *, docs_per_file: int = 80, files: int = 2) -> str:
    """Writes the corpus under `root` and tokenizes it into `root/store` (a tokenizer trained from it)."""
    rng = np.random.default_rng(0)
    sources = {}
    for d, text in WORDS.items():
        words = text.split()
        sources[d] = []
        for f in range(files):
            path = os.path.join(root, f"{d}-{f}.jsonl")
            with open(path, "w") as out:
                out.write("".join(json.dumps({"text": " ".join(rng.choice(words, rng.integers(10, 60)))}) + "\n"
                                  for _ in range(docs_per_file)))
            sources[d].append(path)
    spec = store.StoreSpec(sources=sources, vocab_size=300, tokenizer_sample_chars=20_000, record_tokens=64,
                           val_fraction=0.1, select_fraction=0.1)
    out = os.path.join(root, "store")
    store.prepare_store(spec, out)
    store.finalize_store(spec, out)
    return out
