"""Mixing methods as plan-and-feedback objects: static mixtures, DoReMi and Aioli.

Each method is plain numpy code with explicit, JSON-serialisable state (`schedule.MixingMethod`). The
trainer (`bimix_jax.train.loop`) asks a method for its next segment (proportions, steps, kind), trains it,
and hands back the per-domain feedback losses; methods import neither the trainer nor the laws.
"""
