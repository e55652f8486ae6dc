"""The jobs that know training, laws and mixtures together: the BiMix pipeline (`run`), its stages, spec,
report, plots and provenance."""
