"""Training and evaluation: pmap over local devices, per-device normalization groups.

One mechanism covers the paper's two setups: the global batch is split evenly
over devices by pmap, and each device's batch is cut into normalization groups
of ``norm_batch_size`` examples. The CIFAR "microbatch" setup is one device
with groups of B; the ImageNet setup is 8 devices with B examples each. BN
statistics never cross devices (no ``axis_name`` on the norm layers).

Online estimation, every ``estimate_every_steps`` steps, moves alpha/beta by
the gradient of every EvalNorm layer's auxiliary loss, with their own
optimizer, clipped to [0, 1], in one of two programs (``config.estimation``):
``'fused'``, the paper's single step, adds the auxiliary loss to the SGD
step's own forward pass (its gradient reaches alpha/beta only); ``'separate'``
runs a forward pass of its own before the unchanged SGD step, so that
training is bit-identical with estimation on or off (see
``alpha_beta_step``).

``train_and_evaluate(config, workdir)`` is what ``python -m evalnorm.main``
runs; tests and notebooks call it directly.
"""

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from clu import metric_writers, periodic_actions
from flax import serialization
from flax.training import train_state
from jax import lax

from evalnorm import calibration, data
from evalnorm.training import (builders, checkpoint, config_lib, console,
                               evaluation, finetune, parallel, preemption,
                               summary)
from evalnorm.variables import mean_alpha_beta, total_aux_loss


class TrainingDiverged(RuntimeError):
  """The loss or a gradient became NaN/Inf; the message names step and quantity."""


class TrainState(train_state.TrainState):
  """Adds BN statistics and the alpha/beta variables with their own optimizer."""
  batch_stats: Any
  evalnorm: Any
  evalnorm_opt_state: Any
  evalnorm_tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)


def learning_rate_schedule(peak: float, warmup_steps: int,
                           total_steps: int) -> optax.Schedule:
  """Linear warm-up to ``peak`` (when ``warmup_steps``), cosine decay to 0."""
  if warmup_steps:
    return optax.warmup_cosine_decay_schedule(0.0, peak, warmup_steps,
                                              total_steps)
  return optax.cosine_decay_schedule(peak, total_steps)


@dataclasses.dataclass(frozen=True)
class Optimizers:
  """The weights' optimizer and alpha/beta's own (no weight decay).

  freeze_norm_layers: the scale and bias of every norm layer take no update,
  weight decay included (frozen BN, ``config.frozen_bn``).
  """
  weights: optax.GradientTransformation
  alpha_beta: optax.GradientTransformation
  freeze_norm_layers: bool = False

  @classmethod
  def from_config(cls, config, total_steps: int) -> 'Optimizers':
    learning_rate = learning_rate_schedule(config.learning_rate,
                                           config.warmup_steps, total_steps)
    return cls(
        optax.chain(optax.add_decayed_weights(config.weight_decay),
                    optax.sgd(learning_rate, config.momentum)),
        calibration.alpha_beta_optimizer(config.alpha_beta_optimizer,
                                         config.alpha_beta_learning_rate),
        freeze_norm_layers=config.frozen_bn)

  def weights_for(self, variables) -> optax.GradientTransformation:
    """The weights' optimizer for a model's ``variables``."""
    if not self.freeze_norm_layers:
      return self.weights
    return optax.multi_transform(
        {'trained': self.weights, 'frozen': optax.set_to_zero()},
        norm_layer_labels(variables))


def updates_batch_stats(config) -> bool:
  """Whether training moves the moving averages: not when they are frozen,
  alone (``freeze_batch_stats``) or with the whole layer (``frozen_bn``)."""
  return not (config.freeze_batch_stats or config.frozen_bn)


def norm_layer_labels(variables) -> dict:
  """'frozen' for each parameter of a norm layer, 'trained' for the others,
  in the structure of ``variables['params']``.

  A norm layer is a module that holds moving averages (``batch_stats``):
  that finds the norm slot's layers in any model, a detector's RCN included,
  whatever their names.
  """
  norm_modules = {path[:-1] for path in flax.traverse_util.flatten_dict(
      variables.get('batch_stats', {}))}
  params = flax.traverse_util.flatten_dict(variables['params'])
  return flax.traverse_util.unflatten_dict({
      path: 'frozen' if path[:-1] in norm_modules else 'trained'
      for path in params})


def create_train_state(model: nn.Module, rng: jax.Array, group_size: int,
                       image_shape, optimizers: Optimizers) -> TrainState:
  """Initializes variables in eval mode on ``group_size`` images of
  ``image_shape`` (the structure is the same in both modes)."""
  variables = parallel.init_variables(model, rng, group_size, image_shape)
  evalnorm = variables.get('evalnorm', {})
  state = TrainState.create(
      apply_fn=model.apply, params=variables['params'],
      tx=optimizers.weights_for(variables),
      batch_stats=variables.get('batch_stats', {}), evalnorm=evalnorm,
      evalnorm_opt_state=optimizers.alpha_beta.init(evalnorm),
      evalnorm_tx=optimizers.alpha_beta)
  # A strongly typed step: the weakly typed Python 0 would make the second
  # train step, whose input step is int32, compile the whole step again.
  return state.replace(step=jnp.zeros((), jnp.int32))


def cross_entropy(logits, labels):
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def training_loss(state: TrainState, forward, params, evalnorm,
                  update_batch_stats: bool = True, estimate: bool = False):
  """The loss the SGD step differentiates, with (batch_stats, metrics).

  ``estimate``: the auxiliary loss is added, and reported in the metrics as
  ``aux_loss``. Behind its stop-gradients it changes no gradient but
  alpha/beta's.
  """
  variables = {'params': params, 'batch_stats': state.batch_stats,
               'evalnorm': evalnorm}
  mutable = ['batch_stats', 'aux_loss'] if estimate else ['batch_stats']
  task_loss, new_vars, metrics = forward(variables, mutable)
  # Frozen statistics: the layers' EMA update is computed and dropped, which
  # works for every norm of the slot (flax's BatchNorm included).
  batch_stats = (new_vars['batch_stats'] if update_batch_stats
                 else state.batch_stats)
  metrics = {'loss': task_loss, **metrics}
  if not estimate:
    return task_loss, (batch_stats, metrics)
  metrics['aux_loss'] = total_aux_loss(new_vars['aux_loss'])
  return task_loss + metrics['aux_loss'], (batch_stats, metrics)


def sgd_step(state: TrainState, forward, update_batch_stats: bool = True,
             estimate: bool = False):
  """One SGD step on one device; cross-device ops are explicit below.

  ``forward(variables, mutable)`` runs the model in training mode and returns
  (task loss, updated collections, metrics). ``update_batch_stats=False``
  (``config.freeze_batch_stats`` or ``frozen_bn``): the moving averages stay as they are (with
  'batch_stats', groups still normalize by their own statistics). ``estimate``
  (online estimation, fused): the same forward pass also gives the
  auxiliary loss, whose gradient moves alpha/beta through their own
  optimizer; without it alpha/beta are not touched.
  """
  argnums = (0, 1) if estimate else 0
  (_, (batch_stats, metrics)), grads = jax.value_and_grad(
      functools.partial(training_loss, state, forward,
                        update_batch_stats=update_batch_stats,
                        estimate=estimate),
      argnums=argnums, has_aux=True)(state.params, state.evalnorm)
  grads, alpha_beta_grads = grads if estimate else (grads, None)
  # Data parallelism: every replica applies the mean gradient.
  grads = lax.pmean(grads, parallel.DEVICE_AXIS)
  # Statistics were computed per device (the point of the method); averaging
  # the EMAs keeps the replicas identical without mixing the normalization.
  # Frozen ones are identical already, and a mean of 8 equal values can
  # differ from them in the last bit.
  if update_batch_stats:
    batch_stats = lax.pmean(batch_stats, parallel.DEVICE_AXIS)
  new_state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
  if estimate:
    evalnorm, opt_state = calibration.update_alpha_beta(
        state.evalnorm_tx, lax.pmean(alpha_beta_grads, parallel.DEVICE_AXIS),
        state.evalnorm_opt_state, state.evalnorm)
    new_state = new_state.replace(evalnorm=evalnorm,
                                  evalnorm_opt_state=opt_state)
  metrics = lax.pmean(metrics, parallel.DEVICE_AXIS)
  metrics['grad_norm'] = optax.tree.norm(grads)
  return new_state, metrics


def alpha_beta_step(state: TrainState, forward):
  """Online estimation: one optimizer step of alpha/beta on one device.

  The auxiliary loss of the training forward pass at ``state`` (the weights
  and moving averages the SGD step of the same batch starts from), minimized
  over alpha/beta only; the moving-average update is dropped. Returns the new
  (evalnorm, evalnorm_opt_state) and the loss.

  The ``'separate'`` estimation program (and offline estimation's step): a
  program of its own, not a term added to the SGD step's loss. The fused
  term's gradient to the weights is exactly zero, but XLA compiles a step
  with it differently, and the reductions the weights' update shares with
  it change order in the last bits. Kept apart, the SGD step is the same
  executable with estimation on or off, so training is bit-identical by
  construction. The price is a second forward pass on estimating steps,
  amortized by ``estimate_every_steps``.
  """
  def aux_loss_fn(evalnorm):
    variables = {'params': state.params, 'batch_stats': state.batch_stats,
                 'evalnorm': evalnorm}
    _, new_vars, _ = forward(variables, ['batch_stats', 'aux_loss'])
    return total_aux_loss(new_vars['aux_loss'])

  aux_loss, grads = jax.value_and_grad(aux_loss_fn)(state.evalnorm)
  grads, aux_loss = lax.pmean((grads, aux_loss), parallel.DEVICE_AXIS)
  evalnorm, opt_state = calibration.update_alpha_beta(
      state.evalnorm_tx, grads, state.evalnorm_opt_state, state.evalnorm)
  return evalnorm, opt_state, aux_loss


def classifier_forward(state: TrainState, batch):
  """The classifier's ``forward`` for ``sgd_step`` and ``alpha_beta_step``."""
  def forward(variables, mutable):
    logits, new_vars = state.apply_fn(variables, batch['image'], train=True,
                                      mutable=mutable)
    accuracy = jnp.mean(jnp.argmax(logits, -1) == batch['label'])
    return (jnp.mean(cross_entropy(logits, batch['label'])), new_vars,
            {'accuracy': accuracy})
  return forward


class TrainPrograms:
  """The train loop's per-device programs and how a step combines them.

  ``forward_fn(state, batch)`` gives the task's ``forward`` (the classifier's
  or the detector's). An estimating step runs, with ``estimation='fused'``,
  ``sgd_estimating`` (the SGD step with the auxiliary loss in its forward
  pass); with ``'separate'``, ``alpha_beta_step`` on the state before the
  update, then the same SGD step as every other step. ``devices``: the
  ``parallel.Pmap`` or ``parallel.ShardMap`` that runs them (default: pmap
  over the local devices).
  """

  def __init__(self, forward_fn, update_batch_stats: bool = True,
               devices=None, estimation: str = 'separate'):
    if estimation not in config_lib.ESTIMATION_PROGRAMS:
      raise ValueError(f'estimation={estimation!r} is not one of '
                       f'{config_lib.ESTIMATION_PROGRAMS}')
    self.fused = estimation == 'fused'
    self.devices = devices or parallel.Pmap()
    self._agreement = preemption.StopAgreement(self.devices)

    def sgd_program(estimate):
      # With several processes the SGD step also sums their SIGTERM flags.
      return self.devices.program(
          self._agreement.wrap(lambda s, b: sgd_step(
              s, forward_fn(s, b), update_batch_stats, estimate)),
          self._agreement.kinds, donate=(0,))
    self.sgd = sgd_program(estimate=False)
    self.sgd_estimating = sgd_program(estimate=True)
    self.alpha_beta = self.devices.program(
        lambda s, b: alpha_beta_step(s, forward_fn(s, b)))

  def __call__(self, state: TrainState, batch, estimating: bool):
    """One step: (state, metrics)."""
    state, metrics, _ = self.step_or_stop(state, batch, estimating, False)
    return state, metrics

  def step_or_stop(self, state: TrainState, batch, estimating: bool,
                   sigterm_received: bool):
    """One step: (state, metrics, whether every process stops after it).

    ``sigterm_received``: this process's flag; the answer is the same on
    every process (``StopAgreement``).
    """
    if estimating and self.fused:
      return self._agreement.step(self.sgd_estimating, state, batch,
                                  sigterm_received)
    aux_loss = None
    if estimating:
      evalnorm, opt_state, aux_loss = self.alpha_beta(state, batch)
      state = state.replace(evalnorm=evalnorm, evalnorm_opt_state=opt_state)
    state, metrics, stop = self._agreement.step(self.sgd, state, batch,
                                                sigterm_received)
    if aux_loss is not None:
      metrics = {**metrics, 'aux_loss': aux_loss}
    return state, metrics, stop


def checkpoint_meta(config, num_classes: int) -> dict:
  """What a checkpoint records about the run that wrote it."""
  return {'model': config.model, 'depth': config.depth, 'width': config.width,
          'norm': config.norm, 'dataset': config.dataset,
          'num_classes': num_classes, 'norm_batch_size': config.norm_batch_size,
          'batch_size': config.batch_size, 'num_devices': jax.device_count()}


def restore_or_create(manager, fresh: TrainState,
                      fine_tuning_start: Callable[[TrainState], TrainState]
                      | None = None) -> TrainState:
  """The latest usable checkpoint of ``manager`` in the structure of
  ``fresh``; without one, ``fresh``, or ``fine_tuning_start(fresh)`` for a
  fine-tuning run (a resumed one restores its own checkpoint instead)."""
  if manager.latest_step() is None:
    return fine_tuning_start(fresh) if fine_tuning_start else fresh
  state, meta = checkpoint.restore_latest_usable(manager, fresh)
  logging.info('Resumed from step %d of %s (trained with B=%s).',
               int(state.step), manager.directory, meta.get('norm_batch_size'))
  return state


def check_finite(step: int, metrics: dict[str, float],
                 state: TrainState | None = None) -> None:
  """Raises TrainingDiverged for a non-finite metric or array of ``state``."""
  # aux_loss is there on estimating steps only.
  problems = [f'{name} is {metrics[name]}' for name in
              ('loss', 'aux_loss', 'grad_norm')
              if name in metrics and not np.isfinite(metrics[name])]
  if state is not None and not problems:
    problems = _non_finite_arrays(state)[:1]
  if problems:
    raise TrainingDiverged(
        f'training diverged: {problems[0]} at step {step} (checked every '
        'log_every_steps and in each state before it is saved; the latest '
        'checkpoint predates it; lower learning_rate?)')


def _non_finite_arrays(state: TrainState) -> list[str]:
  flat = flax.traverse_util.flatten_dict(serialization.to_state_dict(state),
                                         sep='/')
  problems = []
  for path, value in flat.items():
    value = np.asarray(value)
    if np.issubdtype(value.dtype, np.inexact) and not np.all(np.isfinite(value)):
      bad = value.size - int(np.sum(np.isfinite(value)))
      problems.append(f'{path} holds {bad} non-finite values')
  return problems


def fine_tuning_start(config, image_shape):
  """What a new run of ``config`` does to its fresh state: load the weights
  of ``init_from`` (``finetune.initialize_from``), or nothing (None)."""
  if not config.init_from:
    return None
  return functools.partial(
      finetune.initialize_from, init_from=config.init_from,
      init_norm=config.init_norm,
      model=functools.partial(builders.build_model, config),
      group_size=config.norm_batch_size, image_shape=image_shape)


@dataclasses.dataclass(frozen=True)
class Task:
  """What a run of one kind (classification, detection) is made of.

  estimate: alpha/beta are estimated online. forward_fn: as ``TrainPrograms``'.
  fine_tuning_start: as ``restore_or_create``'s. final_evaluation(state):
  the results of the trained state (on the host), {mode: {metric: value}};
  final_scalars(results): what the metric writer gets of them. devices: the
  ``parallel.Pmap`` or ``parallel.ShardMap`` every program runs on.
  """
  dataset: Any
  model: nn.Module
  evaluator: Any
  estimate: bool
  forward_fn: Callable
  fine_tuning_start: Callable[[TrainState], TrainState] | None
  final_evaluation: Callable[[TrainState], dict]
  final_scalars: Callable[[dict], dict]
  devices: Any


def classification_task(config: ml_collections.ConfigDict, workdir: str
                        ) -> Task:
  """The classifier of ``config`` on its dataset (``workdir`` is not used:
  its files are eval.json and the checkpoints, which every task writes)."""
  del workdir
  builders.validate(config, jax.device_count(), jax.process_count())
  dataset = data.make_dataset(config)
  model = builders.build_model(config, dataset.num_classes)
  estimate = builders.estimates_online(config)
  devices = parallel.PARALLELISMS[config.parallelism]()
  evaluator = evaluation.Evaluator(
      model, builders.build_model(config, dataset.num_classes, 'evalnorm'),
      evaluation.ModeSettings.from_config(config, estimate), devices=devices)
  return Task(
      dataset, model, evaluator, estimate, classifier_forward,
      fine_tuning_start(config, dataset.image_shape),
      lambda state: evaluator(state.params, evaluator.modes(state), dataset),
      lambda results: {f'eval/{mode}_top1': r['top1']
                       for mode, r in results.items()},
      devices)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       make_task: Callable[..., Task] = classification_task
                       ) -> dict:
  """Trains (resuming from ``workdir``), evaluates every mode, writes eval.json.

  ``make_task(config, workdir)`` validates the config and builds the run's
  data, model and evaluation. A SIGTERM anywhere ends it with preemption.Preempted once
  what is worth saving is saved, and every way out waits for the checkpoints
  being written.
  """
  with preemption.SigtermFlag(defer=False, situation=preemption.STARTING) as sigterm:
    task = make_task(config, workdir)
    dataset = task.dataset
    total_steps = config_lib.num_train_steps(config, dataset.num_train_examples)
    writer = console.MetricsConsole(metric_writers.create_default_writer(
        workdir, just_logging=jax.process_index() > 0), total_steps)
    manager = checkpoint.make_manager(workdir, config.checkpoints_to_keep,
                                      asynchronous=config.async_checkpointing)
    with checkpoint.closing(manager):
      fresh = create_train_state(
          task.model, jax.random.PRNGKey(config.seed), config.norm_batch_size,
          dataset.image_shape, Optimizers.from_config(config, total_steps))
      state = restore_or_create(manager, fresh, task.fine_tuning_start)
      state = train_loop(
          state, dataset,
          TrainPrograms(task.forward_fn,
                        update_batch_stats=updates_batch_stats(config),
                        devices=task.devices, estimation=config.estimation),
          Schedule.from_config(config, total_steps, task.estimate), manager,
          checkpoint_meta(config, dataset.num_classes), writer, task.evaluator)
      sigterm.situation = (f'during the final evaluation: the checkpoint of '
                           f'step {total_steps} in {manager.directory} holds '
                           'the trained state')
      state = task.devices.to_host(state)
      results = task.final_evaluation(state)
    writer.write_scalars(total_steps, task.final_scalars(results))
    record = summary.write_eval_json(
        workdir, config, int(state.step), dataset.num_eval_examples, results,
        state.evalnorm if task.estimate else None)
    writer.flush()
  return record


def is_estimating_step(step: int, every: int) -> bool:
  """Steps 1, 1 + k, 1 + 2k, ... also run ``alpha_beta_step`` (k = every).

  alpha/beta move slowly and training does not depend on them, so their
  forward pass can be amortized over k steps; the choice is a function of the
  step, so a resumed run makes the same choices as an uninterrupted one.
  """
  return (step - 1) % every == 0


def log_step(writer, devices, step, state, metrics, learning_rate, estimate):
  scalars = devices.to_host(metrics)
  check_finite(step, scalars)
  scalars = {k: float(v) for k, v in scalars.items()}
  scalars['learning_rate'] = float(learning_rate(step))
  if estimate:
    scalars['alpha'], scalars['beta'] = mean_alpha_beta(
        devices.to_host(state.evalnorm))
  writer.write_scalars(step, scalars)


def save_checkpoint(manager, devices, step, state, metrics, meta):
  # The saved arrays themselves are checked, not only the step's loss: the
  # loss is computed before the step's update, so an update that overflowed
  # would pass. Thus the latest checkpoint is always a good one to resume.
  # Host arrays: the checkpoint is the same whichever parallelism wrote it.
  state = devices.to_host(state)
  check_finite(step, devices.to_host(metrics), state)
  checkpoint.save(manager, state, meta)


def evaluate_periodically(writer, devices, evaluator, dataset, step, state):
  current = devices.to_host(state)
  results = evaluator(current.params, evaluator.modes(current), dataset)
  # Every metric of every mode: top-1 and loss, or a detector's COCO APs.
  writer.write_scalars(step, {f'eval/{mode}_{name}': value
                              for mode, r in results.items()
                              for name, value in r.items()})


@dataclasses.dataclass(frozen=True)
class Schedule:
  """When the train loop does what; the fields are the config keys' values.

  ``estimate_every_steps`` is None when alpha/beta are not estimated;
  ``learning_rate`` is logged with the metrics.
  """
  total_steps: int
  learning_rate: optax.Schedule
  log_every_steps: int
  checkpoint_every_steps: int
  eval_every_steps: int
  estimate_every_steps: int | None

  @classmethod
  def from_config(cls, config, total_steps: int, estimate: bool) -> 'Schedule':
    learning_rate = learning_rate_schedule(config.learning_rate,
                                           config.warmup_steps, total_steps)
    return cls(total_steps, learning_rate,
               config.log_every_steps, config.checkpoint_every_steps,
               config.eval_every_steps,
               config.estimate_every_steps if estimate else None)


def train_loop(state: TrainState, dataset, steps: TrainPrograms,
               schedule: Schedule, manager, meta: dict, writer,
               evaluator) -> TrainState:
  """Runs steps from ``state.step`` to ``schedule.total_steps``; returns the
  state as ``steps.devices`` lays it out.

  Checkpoints go to ``manager`` with ``meta``; metrics and periodic
  evaluations (by ``evaluator``) to ``writer``.
  """
  start_step, total_steps = int(state.step), schedule.total_steps
  estimate = schedule.estimate_every_steps is not None
  devices = steps.devices
  state = devices.replicate(state)
  batches = devices.prefetch(dataset.train_batches(start_step))
  progress = periodic_actions.ReportProgress(
      num_train_steps=total_steps, writer=writer)
  with preemption.SigtermFlag() as sigterm:
    for step in range(start_step + 1, total_steps + 1):
      estimating = estimate and is_estimating_step(
          step, schedule.estimate_every_steps)
      # Dispatched before anything reads the previous step's metrics back.
      state, metrics, stop = steps.step_or_stop(state, next(batches), estimating,
                                                sigterm.received)
      progress(step)
      is_last = step == total_steps
      if step % schedule.log_every_steps == 0 or is_last:
        log_step(writer, devices, step, state, metrics, schedule.learning_rate,
                 estimate)
      if step % schedule.checkpoint_every_steps == 0 or is_last or stop:
        save_checkpoint(manager, devices, step, state, metrics, meta)
      if stop:
        manager.wait_until_finished()
        raise preemption.Preempted(
            f'SIGTERM received: saved a checkpoint at step {step} in '
            f'{manager.directory}; rerun the same command to resume')
      if step % schedule.eval_every_steps == 0 and not is_last:
        evaluate_periodically(writer, devices, evaluator, dataset, step, state)
  return state
