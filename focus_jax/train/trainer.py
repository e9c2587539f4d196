"""The training loop shared by every stage, and whole-dataset inference.

:func:`train` runs one stage (``config.stage``) in a run directory:

1. resumes from the newest good checkpoint in ``<workdir>/checkpoints`` if there is
   one (a corrupt newest falls back to the previous; another config is refused),
   else starts fresh, taking network weights from ``init_from`` (the previous
   stage's run directory) where the stage needs them;
2. streams batches (this process's shard, prefetched on a host thread and onto
   the devices) through the pmapped step of the current phase; EM alternates
   blocks of UNet and encoder steps by the step number, which the host knows
   without asking the devices;
3. every ``log_every`` steps fetches the metrics it has accumulated (the only
   host-device synchronisation), writes them to CSV/TensorBoard and checks for a
   run of non-finite steps; every ``image_every`` steps writes a tile; every
   ``checkpoint_every`` steps and at the end saves a checkpoint.

A run of ``max_bad_steps`` non-finite steps in a row stops with
:class:`TrainingDiverged` after saving a checkpoint whose networks are those from
before the fault (non-finite steps never update them).
"""

from __future__ import annotations

import collections
import dataclasses
import os
import time
import warnings
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from focus_jax.autoencoder import checkpoints as ckpt_io
from focus_jax.autoencoder import networks as networks_lib
from focus_jax.errors import FocusError
from focus_jax.nets import identity as identity_lib
from focus_jax.train import checkpoint as ckpt_lib
from focus_jax.train import config as config_lib
from focus_jax.train import data as data_lib
from focus_jax.train import logs as logs_lib
from focus_jax.train import parallel
from focus_jax.train import state as state_lib
from focus_jax.train import steps as steps_lib
from focus_jax.train.config import TrainConfig

# Fields that fix the networks' shapes and meaning: they must agree between a stage
# and the stage it takes its weights from.
NETWORK_FIELDS = ("image_size", "model", "model_resolution", "num_shape", "num_expression",
                  "num_albedo", "encoder_depth", "encoder_width", "encoder_stages",
                  "translation_scale", "depth_scale", "unet_width", "unet_depth", "bfm_crop",
                  "bfm_landmarks", "bfm_origin")


class TrainingDiverged(FocusError, FloatingPointError):
  """Too many non-finite steps in a row."""


def load_identity(config: TrainConfig):
  """The identity network of ``--identity`` (None for 'none')."""
  if config.identity == "none":
    return None
  return identity_lib.load(config.identity, config.identity_weights or None)


def phases_of(config: TrainConfig) -> tuple:
  return {"pretrain": ("pretrain",), "unet": ("unet",), "em": ("em_unet", "em_encoder"),
          "adapt": ("em_unet", "em_encoder")}[config.stage]


def phase_at(config: TrainConfig, step: int) -> str:
  if config.stage in ("em", "adapt"):
    return "em_" + config.em_phase(step)
  return config.stage


def columns_of(config: TrainConfig) -> tuple:
  cols = ["loss"]
  for p in phases_of(config):
    cols += [t for t in steps_lib.TERMS[p] if t not in cols]
  return tuple(cols) + ("finite", "grad_norm", "num_skipped")


@dataclasses.dataclass
class TrainResult:
  state: state_lib.TrainState    # host copy (NumPy)
  step: int
  workdir: str
  resumed_from: Optional[int]
  history: dict                  # column -> list, as logged by this invocation
  seconds_per_step: float        # mean over this invocation's steps after the first log


def _check_compatible(config: TrainConfig, other: TrainConfig, source: str):
  diffs = [(k, getattr(other, k), getattr(config, k)) for k in NETWORK_FIELDS
           if getattr(other, k) != getattr(config, k)]
  if diffs:
    raise ckpt_lib.ConfigMismatchError(
        f"--init_from={source}: its networks differ from this run's: "
        + "; ".join(f"{k}: there {a!r}, here {b!r}" for k, a, b in diffs)
        + ". Use the same network flags (flag file) for every stage.")


def initial_state(config: TrainConfig, nets: state_lib.Networks,
                  init_from: Optional[str] = None, fresh=None) -> state_lib.TrainState:
  """A fresh host state (``fresh`` if given); with ``init_from``, networks taken from
  that run's newest checkpoint (stage 'unet' takes only the encoder, 'em'/'adapt' both)."""
  state = fresh if fresh is not None else state_lib.to_host(
      state_lib.init_state(config, nets, jax.process_count()))
  if init_from:
    enc, unet, other, step = ckpt_io.load_networks(init_from)
    _check_compatible(config, other, init_from)
    take_unet = config.stage in ("em", "adapt")
    state = state.replace(encoder=_like(enc, state.encoder),
                          unet=_like(unet, state.unet) if take_unet else state.unet)
    if jax.process_index() == 0:
      print(f"initialised from {init_from} (stage {other.stage}, step {step})", flush=True)
  elif config.stage != "pretrain":
    warnings.warn(f"stage {config.stage} without --init_from: starting from random networks",
                  stacklevel=2)
  return state


def continue_em(config: TrainConfig, workdir: str, init_from: Optional[str]) -> TrainConfig:
  """``config`` with ``em_step_offset`` set for an 'adapt' stage with ``adapt_continue``:
  the global EM step of ``init_from``'s newest checkpoint (its offset + its step), as the
  reference's adaptation resumes Step 4 at that iteration; resuming without
  ``init_from``, the value this run's newest checkpoint was written with."""
  if config.stage != "adapt" or not config.adapt_continue:
    return config
  if init_from:
    _, _, other, step = ckpt_io.load_networks(init_from)
    return config.replace(em_step_offset=int(other.em_step_offset) + int(step))
  ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), config)
  try:
    steps = ckpt.steps()
    if steps:
      return config.replace(em_step_offset=int(ckpt.read_config(steps[-1]).get(
          "em_step_offset", 0)))
  finally:
    ckpt.close()
  return config


def _like(restored, template):
  """Restored nested dicts as the template's structure (checks shapes)."""
  flat_t, tdef = jax.tree_util.tree_flatten_with_path(template)
  out = []
  for path, t in flat_t:
    node = restored
    for k in path:
      node = node[k.key]
    node = np.asarray(node, t.dtype)
    if node.shape != t.shape:
      raise ckpt_lib.ConfigMismatchError(
          f"--init_from: {jax.tree_util.keystr(path)} has shape {node.shape}, this run "
          f"expects {t.shape}")
    out.append(node)
  return jax.tree_util.tree_unflatten(tdef, out)


def _fetch(metrics_list):
  host = jax.device_get([m for _, _, m in metrics_list])
  return [(s, p, {k: float(np.asarray(v)[0]) for k, v in m.items()})
          for (s, p, _), m in zip(metrics_list, host)]


def train(config: TrainConfig, workdir: str, data_dir: str, *, init_from: Optional[str] = None,
          pseudo_dir: Optional[str] = None, split: str = "train", identity=None,
          stop_after: Optional[int] = None) -> TrainResult:
  """Runs (or resumes) one training stage; see the module docstring.

  Args:
    config: the stage's configuration (``config.stage`` picks the steps).
    workdir: run directory (checkpoints, metrics.csv, events, images).
    data_dir: dataset folder (see :func:`focus_jax.train.data.open_data`).
    init_from: previous stage's run directory (network weights).
    pseudo_dir: stage 'unet': folder of the pseudo masks (default ``init_from``'s
      sibling ``pseudo`` is NOT guessed: pass it).
    split: dataset split to train on.
    identity: an IdentityNet to use instead of loading ``config.identity``.
    stop_after: test hook: return after this many steps of this invocation
      without the final checkpoint (a "killed" run).

  Raises:
    TrainingDiverged, ConfigMismatchError, DataError, CheckpointError.
  """
  pid = jax.process_index()
  os.makedirs(workdir, exist_ok=True)
  config = continue_em(config, workdir, init_from)
  if config.em_step_offset and pid == 0:
    print(f"{config.stage}: continuing the EM schedule at global step {config.em_step_offset}",
          flush=True)
  nets = state_lib.make_networks(config)
  model = nets.model
  if identity is None:
    identity = load_identity(config)
  host_bs = parallel.host_batch_size(config.batch_size)
  pseudo = None
  if config.stage == "unet":
    if not pseudo_dir:
      raise FocusError("stage unet needs --pseudo_dir (the output of make_pseudo_masks.py)")
    pseudo = data_lib.load_pseudo(pseudo_dir)
  source = data_lib.AlignedSource(data_lib.open_data(data_dir, split), config.image_size,
                                  pseudo, cache_mb=config.cache_mb)

  ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), config)
  template = state_lib.to_host(state_lib.init_state(config, nets, jax.process_count()))
  restored = ckpt.restore_latest(template)
  data_state, resumed_from = None, None
  if restored is not None:
    resumed_from, state = restored
    if state.data.shape[0] != jax.process_count():
      raise ckpt_lib.ConfigMismatchError(
          f"{workdir}: the checkpoint was written by {state.data.shape[0]} process(es), this "
          f"run has {jax.process_count()}; resume with the same number of hosts")
    data_state = data_lib.row_to_pipeline_state(state.data[pid], config.seed)
    if pid == 0:
      print(f"resuming {workdir} from step {resumed_from}", flush=True)
  else:
    state = initial_state(config, nets, init_from, fresh=template)
    if config.stage == "pretrain" and config.encoder_init:
      from focus_jax.train import encoder_init  # pylint: disable=import-outside-toplevel
      state = state.replace(encoder=encoder_init.apply(
          config, nets.encoder, state.encoder, workdir if pid == 0 else None, pid == 0))
  step = int(state.step)

  pipe = data_lib.make_pipeline(source, config, host_bs, state=data_state)
  prior = None
  if config.unet_prior:
    from focus_jax import prior as prior_lib  # pylint: disable=import-outside-toplevel
    prior = prior_lib.load(config.unet_prior, nets.model)
  fns = {p: parallel.pmap_step(steps_lib.make_step(config, nets, p, prior=prior))
         for p in phases_of(config)}
  predict = jax.pmap(networks_lib.make_predict(config, nets, with_unet=config.stage != "pretrain"),
                     in_axes=(0, 0, 0, None))
  log = logs_lib.MetricsLog(workdir, columns_of(config), enabled=pid == 0, start_step=step)
  num_steps = config.stage_steps()
  bar = None
  if config.progress and pid == 0:
    from tqdm import tqdm  # pylint: disable=import-outside-toplevel
    bar = tqdm(total=num_steps, initial=step, desc=config.stage, unit="step",
               dynamic_ncols=True)

  def with_positions(it):
    for b in it:
      yield b, pipe.state()

  def save(at_step, rstate, data_row_state):
    host = parallel.unreplicate(rstate)
    rows = parallel.allgather_json(
        [int(x) for x in data_lib.pipeline_state_to_row(data_row_state)])
    host = host.replace(data=np.asarray(rows, host.data.dtype))
    ckpt.save(at_step, host)
    return host

  rstate = parallel.replicate(state)
  it = _DevicePairs(with_positions(pipe))
  history = {c: [] for c in ("step", "phase") + columns_of(config)}
  pending, first_bad = [], None
  t_mark, n_mark, timed_steps, timed_seconds = time.perf_counter(), 0, 0, 0.0
  logged_once = False
  last_data, last_batch = data_state, None
  host_state = None
  start = step
  try:
    while step < num_steps:
      batch, last_data = next(it)
      last_batch = batch
      phase = phase_at(config, step)
      rstate, metrics = fns[phase](rstate, batch, model, identity)
      pending.append((step, phase, metrics))
      step += 1
      n_mark += 1
      if bar is not None:
        bar.update(1)
      end = step == num_steps
      if step % config.log_every == 0 or end:
        fetched = _fetch(pending)
        pending = []
        now = time.perf_counter()
        sps = (now - t_mark) / max(n_mark, 1)
        if logged_once:
          timed_steps += n_mark
          timed_seconds += now - t_mark
        logged_once = True
        t_mark, n_mark = now, 0
        streak = int(np.asarray(jax.device_get(rstate.bad_streak))[0])
        skipped = int(np.asarray(jax.device_get(rstate.num_skipped))[0])
        for s, p, vals in fetched:
          vals["num_skipped"] = skipped
          if vals.get("finite", 1.0) < 0.5 and first_bad is None:
            first_bad = s
          if vals.get("finite", 1.0) >= 0.5:
            first_bad = None
          log.write(s + 1, p, vals, sps)
          history["step"].append(s + 1)
          history["phase"].append(p)
          for c in columns_of(config):
            history[c].append(vals.get(c, np.nan))
        log.flush()
        if bar is not None and fetched:
          bar.set_postfix(loss=f"{fetched[-1][2]['loss']:.4g}", skipped=skipped)
        if streak >= config.max_bad_steps:
          host_state = save(step, rstate, last_data)
          where = f" (first at step {first_bad + 1})" if first_bad is not None else ""
          raise TrainingDiverged(
              f"{workdir}: {streak} non-finite steps in a row{where} "
              f"(max_bad_steps={config.max_bad_steps}); stopped. The checkpoint at step "
              f"{step} holds the networks from before the fault (non-finite steps never "
              "update them). Lower the learning rate or check the data around this step.")
        if skipped and pid == 0 and streak:
          warnings.warn(f"step {step}: {skipped} step(s) skipped so far (non-finite loss or "
                        "gradient)", stacklevel=2)
      if step % config.image_every == 0 or (end and config.image_every <= num_steps):
        _write_tile(log, step, predict, rstate, last_batch, model)
      if stop_after is not None and step - start >= stop_after:
        return TrainResult(parallel.unreplicate(rstate), step, workdir, resumed_from,
                           history, timed_seconds / max(timed_steps, 1))
      if step % config.checkpoint_every == 0 or end:
        host_state = save(step, rstate, last_data)
  finally:
    if bar is not None:
      bar.close()
    log.close()
    pipe.close()
    ckpt.close()
  if host_state is None:
    host_state = parallel.unreplicate(rstate)
  return TrainResult(host_state, step, workdir, resumed_from, history,
                     timed_seconds / max(timed_steps, 1))


class _DevicePairs:
  """Prefetches (host batch, pipeline state) pairs onto the local devices, two ahead."""

  def __init__(self, pairs):
    self._pairs = iter(pairs)
    self._queue = []
    self._devices = jax.local_devices()

  def _put(self, pair):
    batch, st = pair
    return parallel.put_sharded(parallel.shard(batch, len(self._devices))), st

  def __iter__(self):
    return self

  def __next__(self):
    while len(self._queue) < 2:
      self._queue.append(self._put(next(self._pairs)))
    return self._queue.pop(0)


def _write_tile(log, step, predict, rstate, batch, model):
  if not log.enabled or batch is None:
    return
  out = predict(rstate.encoder, rstate.unet, batch["image"], model)
  out, images = jax.device_get((out, batch["image"]))
  flat = lambda x: np.asarray(x).reshape((-1,) + np.asarray(x).shape[2:])
  log.image(step, logs_lib.tile(flat(images), flat(out["render"]), flat(out["face"]),
                                flat(out["mask"])))


# ----------------------------------------------------------------------- inference


# (config, with_unet, id(prior), model component counts) -> (prior, Networks, jitted
# predict); the prior is kept so that its id cannot be reused while the entry lives.
_PREDICT_CACHE: "collections.OrderedDict" = collections.OrderedDict()
_PREDICT_CACHE_SIZE = 8


def _predict_fn(config: TrainConfig, with_unet: bool, prior, model=None):
  """(Networks, jitted make_predict) for a config, made once: every call of
  :func:`predict_dataset` with the same config reuses the compiled function (the
  model's arrays are an argument of the predict function; only its component
  counts, which size the encoder, are part of the key)."""
  counts = None if model is None else (model.num_shape, model.num_expression,
                                       model.num_albedo)
  key = (config.replace(**{f: getattr(TrainConfig(), f) for f in config_lib.RUN_FIELDS}),
         bool(with_unet), id(prior), counts)
  hit = _PREDICT_CACHE.get(key)
  if hit is not None:
    _PREDICT_CACHE.move_to_end(key)
    return hit[1], hit[2]
  nets = state_lib.make_networks(config, axis_name=None, model=model)
  fn = jax.jit(networks_lib.make_predict(config, nets, with_unet=with_unet, prior=prior))
  _PREDICT_CACHE[key] = (prior, nets, fn)
  while len(_PREDICT_CACHE) > _PREDICT_CACHE_SIZE:
    _PREDICT_CACHE.popitem(last=False)
  return nets, fn


def predict_dataset(config: TrainConfig, encoder_vars, unet_vars, source, *,
                    batch_size: Optional[int] = None, indices=None, with_unet: bool = True,
                    keys=("render", "face", "inlier", "mask", "vertices", "landmarks"),
                    model=None, prior=None) -> dict:
  """Eval-mode predictions for examples of ``source`` (one device, jitted).

  Args:
    encoder_vars, unet_vars: network variables (host or device).
    source: an :class:`~focus_jax.train.data.AlignedSource`.
    indices: which examples (default: this process's share, i ≡ process mod count).
    keys: outputs to keep (see :func:`~focus_jax.autoencoder.networks.make_predict`).
    prior: optional MisfitPrior for the robust inliers.

  Returns:
    dict: ``index`` [N] plus each key stacked over the N examples, and ``image``.
  """
  nets, fn = _predict_fn(config, with_unet, prior, model)
  model = nets.model if model is None else model
  if indices is None:
    indices = list(range(jax.process_index(), len(source), jax.process_count()))
  bs = batch_size or config.batch_size
  out = {k: [] for k in ("index", "image") + tuple(keys)}
  for lo in range(0, len(indices), bs):
    chunk = list(indices[lo:lo + bs])
    exs = [source.load(i) for i in chunk]
    images = np.stack([e["image"] for e in exs])
    pad = bs - len(chunk)
    if pad:
      images_in = np.concatenate([images, np.repeat(images[-1:], pad, 0)])
    else:
      images_in = images
    res = jax.device_get(fn(encoder_vars, unet_vars, jnp.asarray(images_in), model))
    out["index"].extend(chunk)
    out["image"].append(images)
    for k in keys:
      out[k].append(np.asarray(res[k])[:len(chunk)])
  return {k: (np.asarray(v) if k == "index" else np.concatenate(v)) for k, v in out.items()}
