"""Orbax checkpoints of the training state, with metadata that says what trained it.

A checkpoint holds two items: ``state`` (step, params, batch_stats, evalnorm
and both optimizer states, as a flax state dict) and ``meta`` (JSON: the
config's model, norm, dataset and the normalization batch B, so that offline
estimation and evaluation can check they load the model they expect). The
data position needs no saving: every training batch is a function of (seed,
step), so restoring the step restores the data order.
"""

import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from flax import serialization


class CheckpointError(RuntimeError):
  """A checkpoint directory that cannot be used; the message is one line."""


def make_manager(workdir: str, max_to_keep: int = 3,
                 create: bool = True) -> ocp.CheckpointManager:
  """The manager of ``workdir/checkpoints`` (absolute paths, as orbax needs)."""
  directory = os.path.join(os.path.abspath(workdir), 'checkpoints')
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=create)
  return ocp.CheckpointManager(directory, options=options)


def save(manager: ocp.CheckpointManager, state: Any, meta: dict) -> None:
  """Saves an unreplicated train state at its own step (asynchronously)."""
  step = int(jax.device_get(state.step))
  manager.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(serialization.to_state_dict(state)),
      meta=ocp.args.JsonSave(meta)))


def restore(manager: ocp.CheckpointManager, template: Any,
            step: int | None = None) -> tuple[Any, dict]:
  """Restores ``(state, meta)`` at ``step`` (default: latest) into ``template``.

  ``template`` is a freshly created train state of the same model; its
  structure and dtypes tell orbax what to read.
  """
  step = manager.latest_step() if step is None else step
  if step is None:
    raise CheckpointError(f'no checkpoint in {manager.directory}')
  target = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct,
                                  serialization.to_state_dict(template))
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
  return serialization.from_state_dict(template, restored['state']), restored['meta']


def read_meta(manager: ocp.CheckpointManager, step: int | None = None) -> dict:
  """The JSON metadata of a checkpoint, without reading its arrays."""
  step = manager.latest_step() if step is None else step
  if step is None:
    raise CheckpointError(f'no checkpoint in {manager.directory}')
  restored = manager.restore(step, args=ocp.args.Composite(
      meta=ocp.args.JsonRestore()))
  return restored['meta']
