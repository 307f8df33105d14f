"""Batching that every dataset shares: each process's share of a global
batch, a step's random generator, and full eval batches padded with real
examples.

Padding repeats data rather than zeros because EvalNorm evaluation may also
normalize with statistics of groups of examples, and a group of zero images
would distort those statistics.
"""

import math
from typing import Iterable, Iterator

import jax
import numpy as np

Batch = dict[str, np.ndarray]


def local_batch_size(global_batch_size: int) -> int:
  process_count = jax.process_count()
  if global_batch_size % process_count:
    raise ValueError(f'batch size {global_batch_size} is not divisible by the '
                     f'number of processes {process_count}')
  return global_batch_size // process_count


def num_eval_batches(num_examples: int, local_batch_size: int) -> int:
  """Eval batches per process, the same on every process.

  The eval step is a collective under pmap, so every process must run the same
  number of steps: each pads up to the largest per-process share.
  """
  largest_share = math.ceil(num_examples / jax.process_count())
  return math.ceil(largest_share / local_batch_size)


def _num_rows(batch: Batch) -> int:
  return len(next(iter(batch.values())))


def pad_batch(batch: Batch, padding_source: Batch, batch_size: int) -> Batch:
  """Fills `batch` up to `batch_size` rows from `padding_source` (mask 0)."""
  num_real = _num_rows(batch)
  repeats = np.arange(batch_size - num_real) % _num_rows(padding_source)
  padded = {key: np.concatenate([value, padding_source[key][repeats]])
            for key, value in batch.items()}
  padded['mask'] = np.concatenate([
      np.ones(num_real, np.float32), np.zeros(len(repeats), np.float32)])
  return padded


def padded_eval_batches(batches: Iterable[Batch], batch_size: int,
                        num_batches: int) -> Iterator[Batch]:
  """Exactly `num_batches` full batches, padded with the first batch's rows."""
  padding_source = None
  num_yielded = 0
  for batch in batches:
    if padding_source is None:
      padding_source = batch  # the start of this process's share
    yield pad_batch(batch, padding_source, batch_size)
    num_yielded += 1
  if padding_source is None:
    raise ValueError(f'process {jax.process_index()} has no eval examples')
  empty = {key: value[:0] for key, value in padding_source.items()}
  for _ in range(num_yielded, num_batches):
    yield pad_batch(empty, padding_source, batch_size)


def array_eval_batches(images: np.ndarray, labels: np.ndarray,
                       global_batch_size: int) -> Iterator[Batch]:
  """Eval batches of in-memory arrays; process p takes examples p::processes."""
  batch_size = local_batch_size(global_batch_size)
  num_batches = num_eval_batches(len(labels), batch_size)
  share = slice(jax.process_index(), None, jax.process_count())
  images, labels = images[share], labels[share]
  batches = ({'image': images[start:start + batch_size],
              'label': labels[start:start + batch_size]}
             for start in range(0, len(labels), batch_size))
  return padded_eval_batches(batches, batch_size, num_batches)



def step_rng(seed: int, step: int) -> np.random.Generator:
  """The generator of one step's global batch: a function of (seed, step) only.

  Every process draws the same global batch and keeps its slice, so the
  training batches do not depend on the number of processes. (The 0 is the
  process index this seed once held; keeping it keeps results unchanged.)
  """
  return np.random.default_rng([seed, step, 0])


def process_slice(batch: Batch) -> Batch:
  """This process's consecutive share of a global batch (the devices of
  process p follow those of p - 1, so each device sees the examples it would
  see in a one-process run)."""
  size = local_batch_size(_num_rows(batch))
  start = jax.process_index() * size
  return {k: v[start:start + size] for k, v in batch.items()}
