"""Train K candidate mixtures together: `train_runs(spec, tokens, proportions_KxD, workdirs, run_names=...)`.

With `vmap=True` (the default) the K runs share ONE jit-compiled step: `jax.vmap` of the single-run
step over stacked parameters, optimizer states, data keys, step counters and mixtures
(`train_state.make_group_train_step`), and one vmapped evaluation. With `vmap=False` the runs are
trained one after another by `train.train_run` (the reference behaviour).

Either way each run keeps its own workdir, written exactly as `train_run` writes it: `config.json`,
`losses.csv`, `metrics.jsonl` and per-run orbax checkpoints `checkpoints/<step>/` holding that run's
slice of the stacked state. A run can therefore be resumed, inspected or extended by `train_run`
alone, and a group can pick up runs that `train_run` started.

Resume rules (rerun the same call after a kill):
* a run whose latest checkpoint is its last step is not retrained (its saved state is returned);
* the other runs form the group; each resumes from ITS OWN latest checkpoint (the K saves of one
  step are separate, so a kill can leave the runs at different steps) and drops the loss-table rows
  and metrics records written after it. The group then advances every run by one step per
  iteration, each at its own step number; a run that reaches the last step first is frozen (its
  updates are discarded) until the others finish, so the lag costs at most that many extra steps;
* a resumed group with the same members as before the kill is bit-identical to an uninterrupted
  one. When some runs finished before the kill, the rest form a smaller group, whose numbers agree
  with the uninterrupted group up to float32 reduction order (the vmapped program's batch size changed).

vmapped and separate runs draw the same batches and agree up to float32 summation order (validation
losses within 1.4e-7 relative, measured; tested at 1e-5). Data parallel: the rows of each run's batch
are sharded over the devices and the stacked state is replicated, as in `train_run`.

When it pays off: one program keeps K small models on the device at once, which helps where one small
model leaves an accelerator underused. On a CPU whose cores one model already keeps busy it does not:
`experiments/bench_train.py` measures K vmapped runs at about the speed of K runs in turn there.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from bimix_jax import atomic
from bimix_jax.data.source import open_data
from bimix_jax.data.spec import DataSpec
from bimix_jax.data.tokens import DomainTokens
from bimix_jax.errors import InputError
from bimix_jax.mixture import proportions
from bimix_jax.train.evaluate import make_eval_fn
from bimix_jax.model import DecoderConfig, format_size
from bimix_jax.train import memory
from bimix_jax.train import hosts, inputs
from bimix_jax.train.log import RunLog, shares
from bimix_jax.train.loop import (CONFIG_FILE, RunResult, _mesh, check_run_name, check_workdir,
                             compiled_programs, neutral_spec, run_record, train_run)
from bimix_jax.train.state import RunSpec, TrainState, make_group_train_step


class GroupPrograms(NamedTuple):
    train_step: Callable  # see `train_state.make_group_train_step`
    eval: Callable  # (stacked params, EvalSet) -> [K, D] losses
    stack: Callable  # list of K TrainStates -> stacked TrainState
    unstack: Callable  # stacked TrainState -> list of K TrainStates


def group_programs(cfg: DecoderConfig, spec: RunSpec, mesh: Mesh, num_domains: int,
                   batch_input: bool = False) -> GroupPrograms:
    """The jitted functions of a group, cached like `train.compiled_programs` (one compilation per K)."""
    return _group_programs(cfg, neutral_spec(spec), mesh, num_domains, batch_input)


@functools.lru_cache(maxsize=8)
def _group_programs(cfg: DecoderConfig, spec: RunSpec, mesh: Mesh, num_domains: int,
                    batch_input: bool) -> GroupPrograms:
    repl, rows = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    single = compiled_programs(cfg, spec, mesh, num_domains, batch_input)
    stacked_rows = NamedSharding(mesh, P(None, "data"))
    data_sharding = {"x": stacked_rows, "domain": stacked_rows} if batch_input else repl
    return GroupPrograms(
        train_step=make_group_train_step(cfg, spec, state_sharding=repl, data_sharding=data_sharding,
                                         batch_sharding=rows, batch_input=batch_input),
        eval=make_eval_fn(cfg, num_domains, params_sharding=repl, eval_sharding=single.eval_sharding, stacked=True),
        stack=jax.jit(lambda states: jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *states), out_shardings=repl),
        unstack=jax.jit(_unstack, out_shardings=repl),
    )


def _unstack(state_K: TrainState) -> list[TrainState]:
    K = jax.tree_util.tree_leaves(state_K)[0].shape[0]
    return [jax.tree_util.tree_map(lambda x: x[k], state_K) for k in range(K)]


def _check_runs(spec: RunSpec, workdirs: Sequence[str], run_names: Sequence[str], seeds: Sequence[int] | None,
                extra_configs: Sequence[dict] | None) -> list[RunSpec]:
    """Checks the per-run arguments (before anything is written); returns each run's spec (its seed)."""
    K = len(workdirs)
    if K < 1:
        raise InputError("train_runs needs at least one workdir; pass one per candidate mixture")
    seeds = [spec.train.seed] * K if seeds is None else list(seeds)
    for name, values in (("run_names", run_names), ("seeds", seeds), ("extra_configs", extra_configs)):
        if values is not None and len(values) != K:
            raise InputError(f"{name} has {len(values)} entries for {K} workdirs; give one per run")
    for name in run_names:
        check_run_name(name)
    for what, values in (("run name", list(run_names)), ("workdir", [os.path.abspath(w) for w in workdirs])):
        dup = next((v for i, v in enumerate(values) if v in values[:i]), None)
        if dup is not None:
            raise InputError(f"{what} {dup!r} is given twice; every run needs its own")
    for s in seeds:
        if not isinstance(s, (int, np.integer)) or isinstance(s, bool):
            raise InputError(f"seed {s!r} is not an integer; give integer seeds")
    return [dataclasses.replace(spec, train=dataclasses.replace(spec.train, seed=int(s))) for s in seeds]


def _check_mixtures(proportions_KxD: np.ndarray, run_names: Sequence[str], num_domains: int) -> np.ndarray:
    try:
        r_KxD = np.asarray(proportions_KxD, np.float64)
    except (TypeError, ValueError):
        raise InputError(f"mixtures: expected {len(run_names)} rows of {num_domains} numbers (one per run); "
                         "fix the proportions") from None
    if r_KxD.ndim != 2 or r_KxD.shape[0] != len(run_names):
        raise InputError(f"mixtures: expected {len(run_names)} rows of {num_domains} proportions (one per run), "
                         f"got shape {r_KxD.shape}")
    return np.stack([proportions.check_array(r, num_domains, field=f"mixture of run {n}") for r, n in zip(r_KxD, run_names)])


def train_runs(
    spec: RunSpec,
    tokens: DomainTokens | Any,
    proportions_KxD: np.ndarray,
    workdirs: Sequence[str],
    *,
    run_names: Sequence[str],
    seeds: Sequence[int] | None = None,
    vmap: bool = True,
    devices: Sequence[jax.Device] | None = None,
    extra_configs: Sequence[dict] | None = None,
) -> list[RunResult]:
    """Trains (or resumes, or recognises as finished) K runs; see the module docstring.

    Args:
      spec: the run spec shared by every run (model, optimizer, loop); `spec.train.seed` is the seed of
        every run unless `seeds` is given.
      tokens: the corpus, `DomainTokens` in memory or a token store's `StoreData`; every domain is a training
        and an evaluation domain.
      proportions_KxD: one training mixture per run, in domain order.
      workdirs: one folder per run (each created after every input of every run has been checked).
      run_names: the `run` column of each run's loss table (distinct).
      seeds: per-run seeds (model init and data stream); stored in each run's `config.json`.
      vmap: train the runs in one vmapped program (True) or one after another with `train_run`.
      devices: data-parallel devices (default: all).
      extra_configs: per-run dicts stored in `config.json` for reference; not compared.
    Returns:
      One `RunResult` per run, in the order given.
    """
    specs = _check_runs(spec, workdirs, run_names, seeds, extra_configs)
    t = spec.train
    inp = inputs.make_input(tokens, t)
    K, D = len(workdirs), len(inp.domains)
    r_KxD = _check_mixtures(proportions_KxD, run_names, D)
    mesh = _mesh(devices, spec)
    eval_np = inp.eval_set(t)
    memory.check_run(spec.model.decoder(inp.vocab_size, t.seq_len), t, mesh.devices.flat, runs=K if vmap else 1,
                     data_bytes=memory.data_bytes_per_device(mesh.size, replicated=inp.device_arrays(), sharded=[eval_np]))
    records = [run_record(s, inp, r, n) for s, r, n in zip(specs, r_KxD, run_names)]
    exists = [check_workdir(w, rec) for w, rec in zip(workdirs, records)]
    extra_configs = list(extra_configs) if extra_configs is not None else [{}] * K
    if not vmap:
        return [train_run(specs[k], tokens, r_KxD[k], workdirs[k], run_name=run_names[k], devices=devices,
                          extra_config=extra_configs[k]) for k in range(K)]
    # Every input is valid: from here on files are written.
    writer = hosts.is_writer()
    for w, rec, there, extra in zip(workdirs, records, exists, extra_configs):
        if writer and not there:
            atomic.write_json(os.path.join(w, CONFIG_FILE), {**rec, "config": extra or {}})

    cfg = spec.model.decoder(inp.vocab_size, t.seq_len)
    model_size = format_size(cfg.num_params()[1])
    single = compiled_programs(cfg, spec, mesh, D, inp.batch_input)
    group = group_programs(cfg, spec, mesh, D, inp.batch_input)
    repl = NamedSharding(mesh, P())
    inp.place(mesh)
    logs: list[RunLog] = []
    try:
        for k in range(K):
            logs.append(RunLog(specs[k], inp.domains, workdirs[k], run_name=run_names[k], model_size=model_size,
                               proportions_D=r_KxD[k], fingerprint=records[k]["data_fingerprint"], writer=writer))
            stages, seed = [(0, r_KxD[k].tolist())], specs[k].train.seed
            logs[k].usage_fn = functools.partial(lambda step, rows_D, st, sd: inp.usage(step, rows_D, st, sd),
                                                 st=stages, sd=seed)
        starts = [log.latest_step() for log in logs]
        keys = [[jax.random.wrap_key_data(hosts.place(jax.random.key_data(k), repl))
                 for k in jax.random.split(jax.random.key(s.train.seed))] for s in specs]  # (init, data) per run
        states = [single.init(key[0]) if start is None else log.ckpt.restore(start, single.abstract_state)[0]
                  for log, key, start in zip(logs, keys, starts)]
        start_K = np.array([start or 0 for start in starts], np.int32)
        for log, start in zip(logs, start_K):
            log.forget_after(int(start))
        todo = [k for k in range(K) if start_K[k] < t.steps]
        if todo:
            logging.info("training %d runs in one vmapped step (model %s non-embedding params, %d devices): %s",
                         len(todo), model_size, mesh.size,
                         ", ".join(f"{run_names[k]} from step {start_K[k]}" for k in todo))
            state_A = group.stack([states[k] for k in todo])
            key_A = jax.random.wrap_key_data(hosts.place(
                np.stack([np.asarray(jax.random.key_data(keys[k][1])) for k in todo]), repl))
            r_AxD = hosts.place(np.asarray(r_KxD[todo], np.float32), repl)
            data = _GroupData(inp, mesh, t, [(int(start_K[k]), r_KxD[k].tolist(), specs[k].train.seed) for k in todo])
            eval_set = hosts.place(eval_np, single.eval_sharding)
            state_A = _group_loop(t.steps, state_A, start_K[todo], group, data, eval_set, key_A, r_AxD,
                                  [logs[k] for k in todo])
            for k, state in zip(todo, group.unstack(state_A)):
                states[k] = state
    finally:
        for log in logs:
            log.close()
    hosts.barrier("runs done")  # process 0 has written every row before anyone reads the tables
    results = []
    for k, (log, state) in enumerate(zip(logs, states)):
        rows_D = np.asarray(jax.device_get(state.rows_D), np.int64)
        results.append(RunResult(
            workdir=workdirs[k], run_name=run_names[k], model_size=model_size, steps=t.steps,
            tokens=t.steps * t.batch_size * t.seq_len, resumed_from=starts[k], already_complete=k not in todo,
            final_losses=log.final_losses(), realized_shares=shares(rows_D, inp.domains), state=state,
            usage=inp.usage(t.steps, rows_D, [(0, r_KxD[k].tolist())], specs[k].train.seed)))
    return results


class _GroupData:
    """The group step's data argument: the device buffers (in memory), or each run's batch stacked (a store)."""

    def __init__(self, inp: inputs.RunInput, mesh: Mesh, t, runs: Sequence[tuple[int, list, int]]):
        self.inp, self.t = inp, t
        self.sharding = NamedSharding(mesh, P(None, "data"))
        self.iters = [None if not inp.batch_input else inp.host_batches(start, t.steps - start, [(0, r)], seed)
                      for start, r, seed in runs]

    def next(self, active_A: np.ndarray) -> Any:
        if not self.inp.batch_input:
            return self.inp.data
        B, S1 = self.t.batch_size, self.t.seq_len + 1
        R = B // jax.process_count()
        idle = {"x": np.zeros((R, S1), np.int32), "domain": np.zeros((R,), np.int32)}
        local = [next(it) if on else idle for it, on in zip(self.iters, active_A)]
        stacked = {k: np.stack([b[k] for b in local]) for k in ("x", "domain")}
        K = len(local)
        return {"x": jax.make_array_from_process_local_data(self.sharding, stacked["x"], (K, B, S1)),
                "domain": jax.make_array_from_process_local_data(self.sharding, stacked["domain"], (K, B))}


def _group_loop(steps: int, state_A: TrainState, start_A: np.ndarray, group: GroupPrograms, data: _GroupData,
                eval_set,
                key_A: jax.Array, r_AxD: jax.Array, logs: Sequence[RunLog]) -> TrainState:
    """Advances every run of the group from its own start step to `steps`; returns the stacked final state.

    As in `train._loop`, the next step is dispatched before the host reads the previous step's metrics.
    """
    count_A = np.asarray(start_A, np.int32)
    pending = None

    def settle(counts: np.ndarray, active: np.ndarray, metrics: Any) -> None:
        m = jax.device_get(metrics)
        for a in np.flatnonzero(active):
            logs[a].settle(int(counts[a]), {name: value[a] for name, value in m.items()})

    while (count_A < steps).any():
        active_A = count_A < steps
        batch = data.next(active_A)
        wait = data.inp.data_wait_s()
        for a in np.flatnonzero(active_A):
            logs[a].add_data_wait(wait)
        state_A, metrics = group.train_step(state_A, batch, key_A, count_A, r_AxD, active_A)
        count_A = count_A + active_A.astype(np.int32)
        if pending is not None:
            settle(*pending)
        pending = (count_A, active_A, metrics)
        evals = [a for a in np.flatnonzero(active_A) if logs[a].is_eval_step(int(count_A[a]))]
        if evals:
            settle(*pending)
            pending = None
            eval_start = time.perf_counter()
            losses_AxD = np.asarray(jax.device_get(group.eval(state_A.params, eval_set)), np.float64)
            for a in evals:
                logs[a].eval(int(count_A[a]), losses_AxD[a])
            for log in logs:  # tokens/s measures training, not evaluation
                log.pause(time.perf_counter() - eval_start)
        saves = [a for a in np.flatnonzero(active_A) if logs[a].is_checkpoint_step(int(count_A[a]))]
        if saves:
            slices = group.unstack(state_A)
            for a in saves:
                logs[a].save(int(count_A[a]), slices[a])
    if pending is not None:
        settle(*pending)
    return state_A


def train_many_from_config(config: Mapping, workdir: str, mixtures: Sequence[str], *,
                           run_names: Sequence[str] | None = None, seeds: Sequence[int] | None = None,
                           vmap: bool = True) -> list[RunResult]:
    """The train_many binary's one call: config + K mixtures -> data (prepared once) -> `train_runs`.

    Run k trains `mixtures[k]` in `<workdir>/<run_names[k]>` (default names `mix0`, `mix1`, ...); the
    prepared corpus is shared under `<workdir>/data/`. `config.mixture` and `config.run_name` are not
    used. Every input is checked before anything is written (a workdir this call created is removed
    again when a mixture turns out bad after data preparation).
    """
    if not mixtures:
        raise InputError("no mixtures given; pass --mixtures once per run, e.g. --mixtures=uniform --mixtures=natural")
    spec = RunSpec.from_config(config)
    data_spec = DataSpec.from_config(config["data"])
    normalize = bool(config["normalize_mixture"])
    run_names = list(run_names) if run_names else [f"mix{k}" for k in range(len(mixtures))]
    if len(run_names) != len(mixtures):
        raise InputError(f"--run_names has {len(run_names)} names for {len(mixtures)} mixtures; give one per mixture")
    for k, text in enumerate(mixtures):
        proportions.precheck(text, data_spec.domain_list, normalize=normalize, field=f"mixture {k}")
    for name in run_names:
        check_run_name(name)
        if name in (".", "..", "data") or os.sep in name:
            raise InputError(f"run name {name!r} cannot be a folder name under the workdir; choose another")
    workdirs = [os.path.join(workdir, name) for name in run_names]
    _check_runs(spec, workdirs, run_names, seeds, None)
    created = not os.path.exists(workdir)
    try:
        data = open_data(data_spec, workdir)
        r_KxD = np.stack([proportions.resolve(m, data.domains, token_counts=data.token_counts("train"),
                                              normalize=normalize, field=f"mixture {k}")
                          for k, m in enumerate(mixtures)])
        full = config.to_dict() if hasattr(config, "to_dict") else dict(config)
        extra = [{**full, "mixture": m, "run_name": n} for m, n in zip(mixtures, run_names)]
        return train_runs(spec, data.run_data, r_KxD, workdirs, run_names=run_names, seeds=seeds, vmap=vmap,
                          extra_configs=extra)
    except InputError:
        if created and os.path.isdir(workdir) and not any(os.path.exists(os.path.join(w, CONFIG_FILE))
                                                          for w in workdirs):
            shutil.rmtree(workdir, ignore_errors=True)
        raise

