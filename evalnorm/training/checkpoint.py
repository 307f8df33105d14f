"""Orbax checkpoints of the training state, with metadata that says what trained it.

A checkpoint holds two items: ``state`` (step, params, batch_stats, evalnorm
and both optimizer states, as a flax state dict) and ``meta`` (JSON: the
config's model, norm, dataset and the normalization batch B, so that offline
estimation and evaluation can check they load the model they expect). The
data position needs no saving: every training batch is a function of (seed,
step), so restoring the step restores the data order.
"""

import contextlib
import time
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import flags, logging
from flax import serialization

from evalnorm.training import files


class CheckpointError(RuntimeError):
  """A checkpoint directory that cannot be used; the message is one line."""


def directory_of(workdir: files.PathLike):
  """``workdir/checkpoints`` as an absolute (or bucket) path, as orbax needs."""
  return files.path(workdir) / 'checkpoints'


def use_coordination_service_barriers() -> None:
  """With several processes, orbax's barriers wait on jax.distributed's
  coordination service instead of running a device all-reduce.

  Orbax issues some barriers from its background threads (an asynchronous
  save creates and commits its directories there). As device all-reduces
  (its default, ``sync_global_devices``) they run beside the training steps'
  own all-reduces, in an order that can differ between processes; XLA:CPU's
  gloo collectives then pair one process's barrier with another's step and
  abort ("Received data size doesn't match expected size"), as a 2-process
  job did once after a checkpoint. The coordination service's barriers use
  no device collective.
  """
  if jax.process_count() > 1:
    flags.FLAGS['experimental_orbax_use_distributed_barrier'].parse(True)


def make_manager(workdir: files.PathLike, max_to_keep: int = 3,
                 create: bool = True,
                 asynchronous: bool = True) -> ocp.CheckpointManager:
  """The manager of ``workdir/checkpoints``."""
  use_coordination_service_barriers()
  directory = directory_of(workdir)
  # A process killed mid-save (SIGKILL, a lost machine) leaves a temporary
  # directory; the next run's manager removes it.
  options = ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep, create=create, cleanup_tmp_directories=create,
      enable_async_checkpointing=asynchronous)
  # Naming the handlers lets item_metadata read a checkpoint's tree without
  # restoring it first.
  handlers = {'state': ocp.PyTreeCheckpointHandler(),
              'meta': ocp.JsonCheckpointHandler()}
  return ocp.CheckpointManager(directory, options=options,
                               item_handlers=handlers)


@contextlib.contextmanager
def closing(manager: ocp.CheckpointManager):
  """Yields ``manager``; on every way out, waits for its saves in flight.

  A process that exits with an asynchronous save pending leaves it
  half-written (``<step>.orbax-checkpoint-tmp``) and orbax's thread prints a
  traceback at interpreter shutdown. On an error the wait stays quiet, so the
  error in flight is the one reported.
  """
  try:
    yield manager
  except BaseException:
    try:
      manager.close()
    except Exception as error:  # noqa: BLE001 - keep the first error.
      logging.error('waiting for checkpoints in %s failed: %s',
                    manager.directory, error)
    raise
  manager.close()


def save(manager: ocp.CheckpointManager, state: Any, meta: dict) -> None:
  """Saves an unreplicated train state at its own step (asynchronously)."""
  step = int(jax.device_get(state.step))
  manager.save(step, args=ocp.args.Composite(
      state=ocp.args.PyTreeSave(serialization.to_state_dict(state)),
      meta=ocp.args.JsonSave(meta)))
  logging.info('checkpoint of step %d: saving to %s', step, manager.directory)


def restore(manager: ocp.CheckpointManager, template: Any,
            step: int | None = None) -> tuple[Any, dict]:
  """Restores ``(state, meta)`` at ``step`` (default: latest) into ``template``.

  ``template`` is a freshly created train state of the same model; its
  structure and dtypes tell orbax what to read.
  """
  step = manager.latest_step() if step is None else step
  if step is None:
    raise CheckpointError(f'no checkpoint in {manager.directory}')
  restored = manager.restore(step, args=ocp.args.Composite(
      state=_restore_args(serialization.to_state_dict(template)),
      meta=ocp.args.JsonRestore()))
  return serialization.from_state_dict(template, restored['state']), restored['meta']


def restore_latest_usable(manager: ocp.CheckpointManager,
                          template: Any) -> tuple[Any, dict]:
  """Restores the newest checkpoint that reads back; older ones on failure.

  A truncated or garbled checkpoint (a disk filled up, a copy cut short)
  falls back to the one before it with a warning; when none can be read the
  run stops rather than silently starting over the old run's files.
  """
  steps = sorted(manager.all_steps(), reverse=True)
  failures = []
  for step in steps:
    try:
      restored = restore(manager, template, step)
    except Exception as error:  # orbax raises many types for damaged files.
      failures.append(f'step {step}: {type(error).__name__}')
      logging.warning('checkpoint step %d in %s is unreadable (%s); trying '
                      'an older one', step, manager.directory, error)
      continue
    set_aside_unreadable(manager, [s for s in steps if s > step])
    return restored
  raise CheckpointError(
      f'no usable checkpoint in {manager.directory} ({"; ".join(failures)}): '
      'move the directory away to start from scratch')


def set_aside_unreadable(manager: ocp.CheckpointManager, steps) -> None:
  """Moves unreadable checkpoints to ../unreadable_checkpoints/ (kept, not deleted).

  The resumed run will write those steps again, which orbax refuses while
  the damaged directories hold their names.
  """
  if not steps:
    return
  directory = files.path(manager.directory)
  aside = directory.parent / 'unreadable_checkpoints'
  aside.mkdir(parents=True, exist_ok=True)
  for step in steps:
    target = aside / f'{step}-{time.strftime("%Y%m%d-%H%M%S")}'
    (directory / str(step)).rename(target)
    logging.warning('moved unreadable checkpoint step %d to %s', step, target)
  manager.reload()


def open_existing(workdir: files.PathLike) -> ocp.CheckpointManager:
  """The manager of a finished run's workdir, which must hold a checkpoint."""
  directory = directory_of(workdir)
  if not files.path(workdir).is_dir():
    raise CheckpointError(f'checkpoint directory {workdir} does not exist: '
                          'expected the --workdir of a training run')
  if not directory.is_dir():
    raise CheckpointError(f'{workdir} holds no checkpoints/ directory: '
                          'expected the --workdir of a training run')
  manager = make_manager(workdir, create=False)
  if manager.latest_step() is None:
    raise CheckpointError(f'{directory} holds no complete checkpoint')
  return manager


def read_meta(manager: ocp.CheckpointManager, step: int | None = None) -> dict:
  """The JSON metadata of a checkpoint (plus its step), without its arrays."""
  step = manager.latest_step() if step is None else step
  if step is None:
    raise CheckpointError(f'no checkpoint in {manager.directory}')
  restored = manager.restore(step, args=ocp.args.Composite(
      meta=ocp.args.JsonRestore()))
  return {**restored['meta'], 'step': step}


def restore_variables(manager: ocp.CheckpointManager, template: dict) -> dict:
  """The model variables of the latest checkpoint, without optimizer state.

  ``template`` (the model's ``init`` output) fixes the collections, shapes
  and dtypes to read; a checkpoint of another architecture is an error.
  """
  step = manager.latest_step()
  state_template = {name: template.get(name, {})
                    for name in ('params', 'batch_stats', 'evalnorm')}
  saved = manager.item_metadata(step)['state']
  saved_shapes = {name: jax.tree_util.tree_map(lambda m: tuple(m.shape),
                                               saved.get(name) or {})
                  for name in ('params', 'batch_stats')}
  wanted_shapes = {name: jax.tree_util.tree_map(jax.numpy.shape,
                                                state_template[name])
                   for name in ('params', 'batch_stats')}
  if saved_shapes != wanted_shapes:
    raise CheckpointError(
        f'checkpoint in {manager.directory} holds a different model than the '
        'config builds (parameter names or shapes differ)')
  if not (saved.get('evalnorm') or {}):
    state_template.pop('evalnorm')
  # A partial restore: these collections, not the optimizer states.
  restored = manager.restore(step, args=ocp.args.Composite(
      state=_restore_args(state_template, partial=True)))
  return dict(restored['state'])


def _restore_args(template, partial: bool = False) -> ocp.args.PyTreeRestore:
  """Restore exactly the structure, shapes and dtypes of ``template``."""
  target = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, template)
  return ocp.args.PyTreeRestore(
      target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
      partial_restore=partial)
