"""Device code: the two ways to run per-device programs, and host transfers.

Every program of training, evaluation and offline estimation is written for
one device: it sees that device's share of the batch and averages across
devices explicitly (``lax.pmean(..., DEVICE_AXIS)``). Each device
normalizes its own batch, so BN statistics never cross devices: that is the
method. Two ways run such a program over the devices, the same computation:

* ``Pmap`` (the default): ``jax.pmap`` over this process's devices; the
  state carries a leading axis of one copy per local device.
* ``ShardMap``: ``jax.jit`` over a ``Mesh`` of every device of the job,
  with the per-device code in ``jax.shard_map``; the state is plain arrays,
  replicated by their sharding, and the batch one global array sharded
  along ``DEVICE_AXIS``.

Both take the same host values in (``replicate``, ``shard``) and give the
same host values out (``to_host``), so a checkpoint written by one resumes
in the other.
"""

import functools
from collections.abc import Callable, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import jax_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

# The device axis of the per-device programs: pmap's axis name and the mesh's.
DEVICE_AXIS = 'data'

# What each argument of a per-device program is: the same on every device
# (the state, parameters) or split along the devices (a batch, per-device
# flags).
REPLICATED, SHARDED = 'replicated', 'sharded'


class Pmap:
  """``jax.pmap`` over this process's devices (``devices``: a subset)."""
  name = 'pmap'

  def __init__(self, devices: Sequence[jax.Device] | None = None):
    self.devices = list(devices) if devices is not None else None

  @property
  def local_device_count(self) -> int:
    return len(self.devices) if self.devices else jax.local_device_count()

  def program(self, fn: Callable, kinds: Sequence[str] = (REPLICATED, SHARDED),
              donate: Sequence[int] = ()) -> Callable:
    """``fn`` run per device; its outputs are the same on every device.

    ``kinds``: each argument's, ``REPLICATED`` or ``SHARDED``; a pmap
    argument of either kind carries the leading device axis.
    """
    del kinds  # pmap splits every argument along its leading axis
    return jax.pmap(fn, axis_name=DEVICE_AXIS, devices=self.devices,
                    donate_argnums=tuple(donate))

  def replicate(self, tree):
    """Copies a host ``tree`` to every device, laid out as pmap outputs are.

    jax_utils.replicate's arrays carry another mesh than the train step's
    outputs, and jax caches compilations by input sharding: without the
    identity pmap, the second step would compile the whole step again.
    """
    return jax.pmap(lambda x: x, axis_name=DEVICE_AXIS, devices=self.devices)(
        jax_utils.replicate(tree, devices=self.devices))

  def shard(self, batch):
    """(local_batch, ...) -> (local_devices, local_batch / local_devices, ...)."""
    num_devices = self.local_device_count
    return jax.tree_util.tree_map(
        lambda x: x.reshape((num_devices, -1) + x.shape[1:]), batch)

  def to_host(self, tree):
    """The first device's copy of a replicated ``tree``, as NumPy arrays."""
    return jax.device_get(jax_utils.unreplicate(tree))

  def prefetch(self, batches: Iterable):
    """``batches`` sharded and copied to the devices two steps ahead."""
    return jax_utils.prefetch_to_device(map(self.shard, batches), 2,
                                        devices=self.devices)


class ShardMap:
  """``jax.jit`` over a ``Mesh`` of ``devices`` (default: every device of
  the job, across processes), per-device code in ``jax.shard_map``."""
  name = 'shard_map'

  def __init__(self, devices: Sequence[jax.Device] | None = None):
    devices = list(devices) if devices is not None else jax.devices()
    self.mesh = jax.sharding.Mesh(np.array(devices), (DEVICE_AXIS,))
    self._replicated = NamedSharding(self.mesh, P())
    self._sharded = NamedSharding(self.mesh, P(DEVICE_AXIS))

  @property
  def local_device_count(self) -> int:
    return len(self.mesh.local_devices)

  def program(self, fn: Callable, kinds: Sequence[str] = (REPLICATED, SHARDED),
              donate: Sequence[int] = ()) -> Callable:
    """As ``Pmap.program``: replicated arguments and outputs are plain
    arrays; sharded ones are global arrays split along ``DEVICE_AXIS``."""
    specs = {REPLICATED: P(), SHARDED: P(DEVICE_AXIS)}
    # check_vma=False: the per-device code is pmap's, which averages its
    # gradients itself. With the check on, the gradient of a replicated input
    # is already summed over the devices when it is returned (the transpose
    # of its implicit broadcast), and the step's own pmean would then scale
    # it by the device count.
    per_device = jax.shard_map(fn, mesh=self.mesh,
                               in_specs=tuple(specs[k] for k in kinds),
                               out_specs=P(), check_vma=False)
    return jax.jit(per_device, donate_argnums=tuple(donate))

  def replicate(self, tree):
    """A host ``tree`` as arrays replicated on every device of the mesh."""
    return jax.tree_util.tree_map(
        lambda x: jax.make_array_from_process_local_data(
            self._replicated, np.asarray(x)), tree)

  def shard(self, batch):
    """This process's (local_batch, ...) as its part of one global batch."""
    return jax.tree_util.tree_map(
        lambda x: jax.make_array_from_process_local_data(self._sharded, x),
        batch)

  def to_host(self, tree):
    """A replicated ``tree`` as NumPy arrays (this process's copy)."""
    return jax.tree_util.tree_map(
        lambda x: np.asarray(x.addressable_data(0)) if isinstance(
            x, jax.Array) else x, tree)

  def prefetch(self, batches: Iterable):
    """``batches`` placed on the devices two steps ahead."""
    return _ahead(map(self.shard, batches), 2)


def _ahead(iterator, count: int):
  """Iterates ``iterator`` ``count`` items ahead (device transfers overlap)."""
  queue = []
  for item in iterator:
    queue.append(item)
    if len(queue) > count:
      yield queue.pop(0)
  yield from queue


# config.parallelism -> how the programs run.
PARALLELISMS = {'pmap': Pmap, 'shard_map': ShardMap}


# The pmap layout's transfers as functions, for code that runs on pmap only
# (tests, benchmarks, experiment scripts).


def pmap(fn: Callable, **kwargs) -> Callable:
  """``jax.pmap`` with the axis ``DEVICE_AXIS`` (kwargs as ``jax.pmap``'s)."""
  return jax.pmap(fn, axis_name=DEVICE_AXIS, **kwargs)


def replicate(tree, devices=None):
  return Pmap(devices).replicate(tree)


def shard(batch):
  return Pmap().shard(batch)


def to_host(tree):
  return Pmap().to_host(tree)


def init_variables(model, rng: jax.Array, batch_size: int, image_shape):
  """``model.init`` in eval mode on a zero batch of ``image_shape`` images.

  Jitted: eager init dispatches every op of the network one by one.
  """
  dummy = jnp.zeros((batch_size,) + tuple(image_shape), jnp.float32)
  return jax.jit(functools.partial(model.init, train=False))(rng, dummy)


def sum_over_batches(devices, step: Callable, batches: Iterable):
  """The sum over ``batches`` of ``step(devices.shard(batch))`` on the host.

  ``step`` is a per-device program of ``devices`` whose outputs are the same
  on every device (it reduces over ``DEVICE_AXIS``).
  """
  total = None
  for batch in batches:
    output = devices.to_host(step(devices.shard(batch)))
    total = output if total is None else jax.tree_util.tree_map(
        np.add, total, output)
  return total
