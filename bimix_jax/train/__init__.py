"""Training: one run executing a schedule of mixture segments (`loop`), K runs vmapped (`many`), the train
state and step (`state`), per-domain validation (`evaluate`), the run log (`log`) and checkpoints."""
