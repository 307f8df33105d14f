"""Device code: the pmap axis, host <-> device transfers, and shared loops.

Training, evaluation, offline estimation, the benchmarks and the experiments
all run their programs under ``jax.pmap`` over the local devices, with one
axis name. pmap, not a global mesh: each device normalizes its own batch
(BN statistics never cross devices), which is the method.
"""

import functools
from collections.abc import Callable, Iterable

import jax
import jax.numpy as jnp
from flax import jax_utils

PMAP_AXIS = 'batch'


def pmap(fn: Callable, **kwargs) -> Callable:
  """``jax.pmap`` with the axis ``PMAP_AXIS`` (kwargs as ``jax.pmap``'s)."""
  return jax.pmap(fn, axis_name=PMAP_AXIS, **kwargs)


def replicate(tree, devices=None):
  """Copies ``tree`` to every device of ``devices`` (default: all local ones),
  laid out as pmap outputs are.

  jax_utils.replicate's arrays carry another mesh than the train step's
  outputs, and jax caches compilations by input sharding: without this, the
  second step would compile the whole train step again.
  """
  return pmap(lambda x: x, devices=devices)(
      jax_utils.replicate(tree, devices=devices))


def shard(batch):
  """(local_batch, ...) -> (local_devices, local_batch / local_devices, ...)."""
  num_devices = jax.local_device_count()
  return jax.tree_util.tree_map(
      lambda x: x.reshape((num_devices, -1) + x.shape[1:]), batch)


def to_host(tree):
  """The first device's copy of a replicated ``tree``, as NumPy arrays."""
  return jax.device_get(jax_utils.unreplicate(tree))


def init_variables(model, rng: jax.Array, batch_size: int, image_shape):
  """``model.init`` in eval mode on a zero batch of ``image_shape`` images.

  Jitted: eager init dispatches every op of the network one by one.
  """
  dummy = jnp.zeros((batch_size,) + tuple(image_shape), jnp.float32)
  return jax.jit(functools.partial(model.init, train=False))(rng, dummy)


def sum_over_batches(step: Callable, batches: Iterable):
  """The sum over ``batches`` of ``step(shard(batch))``, first device's copy.

  ``step`` is a pmapped program whose outputs are the same on every device
  (it reduces over ``PMAP_AXIS``); the sum comes back to the host.
  """
  total = None
  for batch in batches:
    output = jax_utils.unreplicate(step(shard(batch)))
    total = output if total is None else jax.tree_util.tree_map(
        jnp.add, total, output)
  return jax.device_get(total)
