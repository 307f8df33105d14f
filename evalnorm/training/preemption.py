"""Preemption: SIGTERM (the usual notice) stops a run after saving, and the
processes of a job agree on the step they stop after.

``SigtermFlag`` turns the signal into a flag the train loop reads after each
step (or into ``Preempted`` at once where nothing is left to save);
``StopAgreement`` makes every process read the same answer.
"""

import signal
import threading

import jax
import numpy as np
from jax import lax

from evalnorm.training import parallel

STARTING = 'during start-up, before this run trained a step: nothing new to save'


class Preempted(RuntimeError):
  """SIGTERM arrived; what was worth saving is saved (the message says what)."""


class SigtermFlag:
  """Handles SIGTERM (the usual preemption notice) while entered.

  ``defer=True`` (the training loop): the handler only sets ``received``, and
  the loop saves and stops after the current step; saving from inside a
  signal handler could interrupt an XLA call or an orbax write half-way.
  ``defer=False`` (start-up, final evaluation): the latest checkpoint already
  holds everything worth saving, so the handler raises Preempted at once,
  saying ``situation`` (what was happening, what is saved). A second SIGTERM
  while the first is handled is ignored, also by the flags this one is
  nested in once Preempted leaves it: with several processes the second
  notice often comes while the run is on its way out (the other process's
  SIGTERM made both stop), and it must not raise again in the cleanup.
  """

  _entered: list['SigtermFlag'] = []  # the flags entered, innermost last

  def __init__(self, defer: bool = True, situation: str = ''):
    self.received = False
    self.defer = defer
    self.situation = situation
    self._previous = None

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._set)
    SigtermFlag._entered.append(self)
    return self

  def __exit__(self, exc_type, exc, traceback):
    SigtermFlag._entered.remove(self)
    if (exc_type is not None and issubclass(exc_type, Preempted)
        and SigtermFlag._entered):
      SigtermFlag._entered[-1].received = True
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)

  def _set(self, signum, frame):
    del signum, frame
    first = not self.received
    self.received = True
    if first and not self.defer:
      raise Preempted(f'SIGTERM received {self.situation}; rerun the same '
                      'command to resume')


class StopAgreement:
  """Whether to stop after a step: the same answer on every process.

  SIGTERM reaches each host of a slice at its own moment, so the processes'
  own flags can flip at different steps, while a save is a collective in
  orbax (every process writes its part, then they agree the step is done):
  all must stop after the same step.

  One process: its own flag, no collective, the step as it is. Several:
  ``wrap`` adds the sum of the local flags over every device of the job to
  the train step's own program (a psum of one float32 per device;
  DEVICE_AXIS spans all processes), and ``step`` answers with the sum of the
  previous step. Every process reads the same sum of the same step, so all
  stop after the same step, at most two steps after the first SIGTERM.

  Why this way: a float32 psum in the step is merged by XLA into the
  step's one all-reduce of the gradients and metrics (a test checks the
  compiled step; an int32 psum would stay an all-reduce of its own), so no
  collective, program or barrier is added; and reading the previous step's
  sum waits only for a step that the host has already queued the next one
  behind, so the device never idles for it. ``multihost_utils.
  process_allgather`` of the flag, or a pmapped psum of its own, adds a
  cross-process collective to every step, and the allgather also stops the
  host at every step until the step just dispatched is done
  (``benchmarks/preemption.py`` times the three ways). jax's own preemption service
  (``reached_preemption_sync_point``) is switched off: it catches SIGTERM
  in C++, where SigtermFlag would never see it (evalnorm.training.cli).
  """

  def __init__(self, devices=None):
    """``devices``: the ``parallel.Pmap`` or ``parallel.ShardMap`` that runs
    the step (default: pmap over the local devices)."""
    self._devices = devices or parallel.Pmap()
    self._several = jax.process_count() > 1
    self._pending = None  # the flags' sum of the step dispatched last

  @property
  def kinds(self) -> tuple[str, ...]:
    """The wrapped step's arguments, as ``devices.program`` takes them."""
    flags = (parallel.SHARDED,) if self._several else ()
    return (parallel.REPLICATED, parallel.SHARDED) + flags

  def wrap(self, step_fn):
    """The per-device step: with several processes ``step_fn(state, batch)``
    plus the flags' sum, taking this device's flag as a third input."""
    if not self._several:
      return step_fn

    def step_and_flags(state, batch, flag):
      state, metrics = step_fn(state, batch)
      return state, metrics, lax.psum(flag, parallel.DEVICE_AXIS)
    return step_and_flags

  def step(self, program, state, batch, received: bool):
    """Dispatches the step; (state, metrics, whether to stop after it)."""
    if not self._several:
      state, metrics = program(state, batch)
      return state, metrics, received
    flags = self._devices.shard(
        np.full(self._devices.local_device_count, received, np.float32))
    previous = self._pending
    state, metrics, self._pending = program(state, batch, flags)
    if previous is None:
      return state, metrics, False
    # This process's own copy of the sum: indexing the global array
    # (previous[0]) would run a program on every process's devices.
    local_sum = np.asarray(previous.addressable_data(0))
    return state, metrics, float(local_sum.reshape(-1)[0]) > 0
