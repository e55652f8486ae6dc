"""Train one run, resumably: `train_run(spec, data, proportions_D, workdir, run_name=...)`.

One loop for every run: a run executes a schedule of mixture segments (`bimix_jax.train.segments`); a fixed
mixture is a one-segment `Static` schedule, an online method plans its segments as the run trains. Each step's
batch comes from the run's input (`bimix_jax.train.inputs`): sampled on the device from an in-memory corpus, or
read from a token store on the host, whichever `data.source` chose; the loop does not know which.

A run's workdir holds:
* `config.json`: the run spec, run name, proportions and data fingerprint (a workdir holding a
  different run is refused);
* `losses.csv`: the loss table (`bimix_jax.loss_table`), one row per (step, eval domain), written
  every `eval_every` steps and at the last step;
* `metrics.jsonl`: one record every `log_every` steps (train loss, lr, tokens/s, data wait per step, realized
  shares, per-domain epochs and completed repetitions of the training data);
* `checkpoints/<step>/`: orbax checkpoints (`bimix_jax.train.checkpoint`).

Rerunning the same call resumes from the latest checkpoint; rows and records written after it are
dropped first, so nothing is duplicated, and the result is bit-identical to an uninterrupted run.
Data parallel over the given devices (a 1-axis mesh): large parameters FSDP-sharded, batch rows sharded.
In a multi-host job every process calls `train_run`; only process 0 writes files (orbax coordinates
checkpoints itself). The files are written by `bimix_jax.train.log.RunLog`, which `bimix_jax.train.many`
(K runs in one vmapped step) shares, so both write the same workdirs.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from bimix_jax import atomic
from bimix_jax.data.source import open_data
from bimix_jax.data.spec import DataSpec
from bimix_jax.errors import InputError
from bimix_jax.mixture import proportions
from bimix_jax.train.evaluate import EvalSet, make_eval_fn
from bimix_jax.model import DecoderConfig, format_size
from bimix_jax.train.log import CHECKPOINT_DIR, LOSSES_FILE, METRICS_FILE, RunLog, shares  # noqa: F401 - re-exported
from bimix_jax.train.segments import METHOD_FILE, ScheduleRunner
from bimix_jax.train.state import RunSpec, init_state, make_optimizer, make_train_step
from bimix_jax.train import hosts, inputs, memory, sharding
from bimix_jax.online.schedule import MixingMethod
from bimix_jax.online.static import Static
from bimix_jax.online.spec import OnlineSpec

CONFIG_FILE = "config.json"
_COMPARED = ("run_name", "spec", "domains", "proportions", "schedule", "data_fingerprint", "vocab_size")


@dataclasses.dataclass(frozen=True)
class RunResult:
    workdir: str
    run_name: str
    model_size: str  # non-embedding parameter count, e.g. '1.2M'
    steps: int  # optimizer steps done
    tokens: int  # training tokens seen
    resumed_from: int | None  # checkpoint step the run resumed from (None: fresh start)
    already_complete: bool  # the workdir held a finished run; nothing was trained
    final_losses: dict[str, float]  # eval domain -> validation loss at the last step (nats)
    realized_shares: dict[str, float]  # domain -> share of training rows drawn
    state: Any  # final TrainState (device arrays)
    method_summary: dict | None = None  # online runs: the method's summary (`method.json`)
    feedback_losses: list[float] | None = None  # per-domain loss on the feedback slice at the end (if carved)
    usage: dict | None = None  # domain -> windows drawn, windows per epoch, epochs, repetitions at the end


def run_record(spec: RunSpec, data, proportions_D: np.ndarray | None, run_name: str,
               method: MixingMethod | None = None) -> dict:
    """What `config.json` holds; two calls train the same run iff their records agree. `data`: the run's
    `RunInput` or `DomainTokens`."""
    record = {
        "run_name": run_name,
        "spec": spec.to_dict(),
        "domains": list(data.domains),
        "proportions": None if proportions_D is None else {d: float(p) for d, p in zip(data.domains, proportions_D)},
        "data_fingerprint": data.fingerprint(),
        "vocab_size": data.vocab_size,
    }
    if method is not None:
        record["schedule"] = atomic.to_jsonable({"method": method.name, "settings": dataclasses.asdict(method)})
    return record


def check_run_name(run_name: str) -> None:
    if not isinstance(run_name, str) or not run_name.strip() or "\n" in run_name:
        raise InputError(f"run name {run_name!r} must be a non-empty single line; choose another")


def _flatten(d: Any, prefix: str = "") -> dict:
    if isinstance(d, dict):
        out = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: d}


def check_workdir(workdir: str, record: dict) -> bool:
    """True when `workdir` already holds this run; `InputError` when it holds a different one."""
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.exists(path):
        return False
    old = atomic.read_json(path, what="run config")
    old_flat = _flatten({k: old.get(k) for k in _COMPARED})
    new_flat = _flatten(atomic.to_jsonable({k: record.get(k) for k in _COMPARED}))
    for key in sorted(set(old_flat) | set(new_flat)):
        if old_flat.get(key) != new_flat.get(key):
            raise InputError(
                f"workdir {workdir} holds a different run ({key}: {old_flat.get(key)!r} there, "
                f"{new_flat.get(key)!r} now); rerun with the same config to continue it, or use another "
                "--workdir (or delete this one) to start fresh"
            )
    return True


def _mesh(devices: Sequence[jax.Device] | None, spec: RunSpec) -> Mesh:
    devices = list(devices) if devices is not None else jax.devices()
    n = len(devices)
    for name, value, per in (("batch_size", spec.train.batch_size, spec.train.microbatches * n),
                             ("eval_batch_size", spec.train.eval_batch_size, n)):
        if value % per:
            what = f"{spec.train.microbatches} microbatches x {n} devices" if per != n else f"the {n} devices"
            raise InputError(f"train.{name}={value} is not divisible by {what}; use a multiple of {per}")
    return Mesh(np.array(devices), ("data",))


class Programs(NamedTuple):
    init: Callable  # key -> TrainState
    train_step: Callable  # see `train_state.make_train_step`
    eval: Callable  # (params, EvalSet) -> [D] losses
    abstract_state: Any  # TrainState of ShapeDtypeStructs with shardings (for restoring checkpoints)
    eval_sharding: EvalSet


def compiled_programs(cfg: DecoderConfig, spec: RunSpec, mesh: Mesh, num_domains: int,
                      batch_input: bool = False) -> Programs:
    """The jitted functions of a run, cached: runs that differ only in mixture, seed, evaluation, checkpoint
    or logging settings share them, so a sweep over mixtures compiles once. `batch_input`: the step takes host
    batches (a token store) instead of sampling from device buffers."""
    return _programs(cfg, neutral_spec(spec), mesh, num_domains, batch_input)


def neutral_spec(spec: RunSpec) -> RunSpec:
    """`spec` with the fields that do not shape the compiled programs set to fixed values (a cache key)."""
    neutral = dict(seed=0, eval_every=1, eval_tokens=1, checkpoint_every=1, keep_checkpoints=1, log_every=1)
    return dataclasses.replace(spec, train=dataclasses.replace(spec.train, **neutral))


@functools.lru_cache(maxsize=8)
def _programs(cfg: DecoderConfig, spec: RunSpec, mesh: Mesh, num_domains: int, batch_input: bool) -> Programs:
    repl, rows = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    optimizer = make_optimizer(spec.optim, spec.train.steps)
    state_sharding = sharding.trainer_state_sharding(cfg, lambda k: init_state(cfg, optimizer, k, num_domains), mesh)
    init = jax.jit(lambda k: init_state(cfg, optimizer, k, num_domains), out_shardings=state_sharding)
    abstract_state = jax.tree_util.tree_map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                                            jax.eval_shape(init, jax.random.key(0)), state_sharding)
    eval_sharding = EvalSet(*(NamedSharding(mesh, P(None, "data")),) * 3, repl)
    data_sharding = {"x": rows, "domain": rows} if batch_input else repl
    return Programs(
        init=init,
        train_step=make_train_step(cfg, spec, state_sharding=state_sharding, data_sharding=data_sharding,
                                   batch_sharding=rows, batch_input=batch_input),
        eval=make_eval_fn(cfg, num_domains, params_sharding=state_sharding.params, eval_sharding=eval_sharding),
        abstract_state=abstract_state,
        eval_sharding=eval_sharding,
    )


def train_run(
    spec: RunSpec,
    data,
    proportions_D: np.ndarray,
    workdir: str,
    *,
    run_name: str,
    devices: Sequence[jax.Device] | None = None,
    extra_config: dict | None = None,
    method: MixingMethod | None = None,
    feedback_tokens: int = 0,
) -> RunResult:
    """Trains (or resumes, or recognises as finished) one run; see the module docstring.

    Args:
      spec: the run spec (model, optimizer, training loop).
      data: the corpus: `DomainTokens` (in memory), a token store's `StoreData`, or a `RunInput`
        (`bimix_jax.train.inputs`); every domain is a training and an evaluation domain.
      proportions_D: training mixture in domain order (checked, sums to 1); None with `method`.
      workdir: the run's folder (created after every input has been checked).
      run_name: the `run` column of the loss table.
      devices: data-parallel devices (default: all).
      extra_config: stored in `config.json` for reference (e.g. the full config); not compared.
      method: an online mixing method (`bimix_jax.online`): the run executes its schedule of segments and
        hands it feedback losses (`bimix_jax.train.segments`); None trains `proportions_D` throughout (a
        one-segment `Static` schedule).
      feedback_tokens: tokens per domain of the feedback set (0: none; required > 0 with `method`). Static
        runs compared with online ones carve the same slice.
    """
    t = spec.train
    check_run_name(run_name)
    if method is not None and feedback_tokens < 1:
        raise InputError(f"online.feedback_tokens={feedback_tokens}: the {method.name} method needs feedback tokens "
                         "(>= 1 per domain); set online.feedback_tokens")
    mesh = _mesh(devices, spec)
    inp = inputs.make_input(data, t, feedback_tokens=feedback_tokens)
    D = len(inp.domains)
    if method is None:
        proportions_D = proportions.check_array(proportions_D, D)
    eval_np, feedback_np = inp.eval_set(t), inp.feedback_set(t)
    memory.check_run(spec.model.decoder(inp.vocab_size, t.seq_len), t, mesh.devices.flat,  # GPU/TPU only
                     data_bytes=memory.data_bytes_per_device(mesh.size, replicated=inp.device_arrays(),
                                                             sharded=[eval_np, feedback_np]))
    record = run_record(spec, inp, None if method is not None else proportions_D, run_name, method)
    exists = check_workdir(workdir, record)
    # Every input is valid: from here on files are written.
    writer = hosts.is_writer()
    if writer and not exists:
        atomic.write_json(os.path.join(workdir, CONFIG_FILE), {**record, "config": extra_config or {}})
    hosts.barrier(f"run {run_name} config")

    cfg = spec.model.decoder(inp.vocab_size, t.seq_len)
    model_size = format_size(cfg.num_params()[1])
    programs = compiled_programs(cfg, spec, mesh, D, inp.batch_input)
    inp.place(mesh)
    repl = NamedSharding(mesh, P())
    eval_set = hosts.place(eval_np, programs.eval_sharding)
    key_init, key_data = (jax.random.wrap_key_data(hosts.place(jax.random.key_data(k), repl))
                          for k in jax.random.split(jax.random.key(t.seed)))
    log = RunLog(spec, inp.domains, workdir, run_name=run_name, model_size=model_size,
                 proportions_D=proportions_D if method is None else np.full(D, np.nan),
                 fingerprint=record["data_fingerprint"], writer=writer)
    feedback_fn = None
    if feedback_np is not None:
        feedback_set = hosts.place(feedback_np, programs.eval_sharding)

        def feedback_fn(params):
            return np.asarray(jax.device_get(programs.eval(params, feedback_set)), np.float64)
    runner = ScheduleRunner(method or Static(tuple(float(x) for x in proportions_D)), total_steps=t.steps,
                            seed=t.seed, workdir=workdir, writer=writer, feedback_fn=feedback_fn,
                            record=method is not None)
    log.usage_fn = lambda step, rows_D: inp.usage(step, rows_D, runner.stages, t.seed)
    summary = None
    try:
        start = log.latest_step()
        if start is None:
            state = programs.init(key_init)
            start_step, meta = 0, {}
        else:
            state, meta = log.ckpt.restore(start, programs.abstract_state)
            start_step = start
        log.forget_after(start_step)
        done = start_step >= t.steps
        finished_method = done and method is not None and os.path.exists(os.path.join(workdir, METHOD_FILE))
        if not finished_method:
            if start is None:
                runner.start_fresh(state, D)
            else:
                runner.resume(meta, start_step, D)
        if done:
            logging.info("run %s in %s is complete (%d steps); nothing to do", run_name, workdir, start_step)
        else:
            logging.info("run %s: %s from step %d to %d (model %s non-embedding params, %d devices)", run_name,
                         "resuming" if start is not None else "starting", start_step, t.steps, model_size,
                         mesh.size)
            state = _loop(t.steps, state, start_step, programs, inp, eval_set, key_data, log, runner, repl,
                          online=method is not None)
        if method is not None:
            summary = (atomic.read_json(os.path.join(workdir, METHOD_FILE), what="method summary")
                       if finished_method else runner.finish(state))
        if not runner.stages and isinstance(meta.get("schedule"), dict):  # a finished online run, reopened
            runner.stages = [(int(a), list(r)) for a, r in meta["schedule"].get("stages", [])]
    finally:
        log.close()
    hosts.barrier(f"run {run_name} done")  # process 0 has written every row before anyone reads the table
    rows_D = np.asarray(jax.device_get(state.rows_D), np.int64)
    usage = inp.usage(t.steps, rows_D, runner.stages, t.seed) if runner.stages else None
    return RunResult(
        workdir=workdir, run_name=run_name, model_size=model_size, steps=t.steps,
        tokens=t.steps * t.batch_size * t.seq_len, resumed_from=start, already_complete=done,
        final_losses=log.final_losses(), realized_shares=shares(rows_D, inp.domains), state=state,
        method_summary=summary,
        feedback_losses=None if feedback_fn is None else feedback_fn(state.params).tolist(),
        usage=usage,
    )


def _loop(steps, state, start_step, programs: Programs, inp: inputs.RunInput, eval_set, key_data, log: RunLog,
          runner: ScheduleRunner, repl, *, online: bool):
    """Steps `start_step + 1 .. steps` through the run's segments (one for a static run); returns the state.

    The proportions are a traced argument of the compiled step: a new segment's mixture never recompiles.
    Step `count + 1` is dispatched before the host reads step `count`'s metrics, so the host never stalls the
    device. Checkpoints carry the method's state and the position in the schedule (`runner.meta()`).
    """
    step = start_step
    while step < steps:
        segment = runner.current(step, state)
        r_D = hosts.place(np.asarray(segment.proportions, np.float32), repl)
        end = min(runner.segment_start + segment.steps, steps)
        batches = inp.batches(step, end - step, runner.stages, runner.seed)
        pending = None
        for s in range(step, end):
            data = next(batches)
            log.add_data_wait(inp.data_wait_s())
            state, metrics = programs.train_step(state, data, key_data, s, r_D)
            count = s + 1
            if pending is not None:
                log.settle(pending[0], jax.device_get(pending[1]))
            pending = (count, metrics)
            if log.is_eval_step(count):
                host = jax.device_get(metrics)
                log.settle(count, host)
                pending = None
                eval_start = time.perf_counter()
                losses = np.asarray(jax.device_get(programs.eval(state.params, eval_set)), np.float64)
                rows = np.asarray(host["rows_D"], np.float64)
                log.eval(count, losses, rows / max(rows.sum(), 1.0) if online else None)
                log.pause(time.perf_counter() - eval_start)
            if log.is_checkpoint_step(count):
                log.save(count, state, runner.meta())
        if pending is not None:
            log.settle(pending[0], jax.device_get(pending[1]))
        step = end
    return state


def train_from_config(config: Mapping, workdir: str) -> RunResult:
    """The train binary's one call: config -> typed specs -> data -> `train_run`.

    Every input is checked before anything is written; when the corpus has to be prepared first (so the
    mixture's domains can be checked) and the mixture then turns out bad, a workdir this call created
    is removed again.
    """
    spec = RunSpec.from_config(config)
    data_spec = DataSpec.from_config(config["data"])
    online = OnlineSpec.from_config(config.get("online"))
    if online.method == "doremi":
        raise InputError("online.method='doremi' needs a reference run; use experiments/compare_methods.py")
    mixture, normalize = str(config["mixture"]), bool(config["normalize_mixture"])
    # Weights now; domain names too when the config lists the domains.
    proportions.precheck(mixture, data_spec.domain_list, normalize=normalize)
    run_name = str(config["run_name"]) or os.path.basename(os.path.normpath(os.path.abspath(workdir)))
    with atomic.removed_on_input_error(workdir, keep=lambda: os.path.exists(os.path.join(workdir, CONFIG_FILE))):
        data = open_data(data_spec, workdir)
        proportions_D = proportions.resolve(mixture, data.domains, token_counts=data.token_counts("train"),
                                            normalize=normalize)
        logging.info("mixture %s: %s", mixture, proportions.describe(proportions_D, data.domains))
        method = online.build(len(data.domains))
        return train_run(spec, data.run_data, None if method else proportions_D, workdir, run_name=run_name,
                         extra_config=config.to_dict() if hasattr(config, "to_dict") else dict(config),
                         method=method, feedback_tokens=online.feedback_tokens if method else 0)
