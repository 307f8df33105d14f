"""Input pipelines: built-in NumPy digit datasets and tfds CIFAR / ImageNet.

`make_dataset(config)` returns an object with the `Dataset` interface below, built
by the entry of the table `DATASETS` that `config.dataset` names. All batches
are NumPy arrays for *this process*:

- `train_batches(start_step)`: an infinite stream of
  `{'image': float32 (local_batch, H, W, C), 'label': int32 (local_batch,)}`,
  `local_batch = config.batch_size // jax.process_count()`. The batch of step
  `s` is a deterministic function of `(config.seed, s)` (and, for tfds, the
  process index), so a run resumed at step `s` sees the batches of an
  uninterrupted run. The built-in digits draw the global batch and give each
  process its slice: the same batches whatever the number of processes.
- `eval_batches()`: one pass over this process's share of the eval set in
  batches of `config.eval_batch_size // jax.process_count()`, every batch full.
  The last batch is padded by repeating real examples from the start of the
  share, with `'mask'` 0.0 for the repeats (`batching`).

The parts: `batching` (what every dataset shares), `digits` (the built-in
`noisy_digits`, `digits` and `digit_crops`, NumPy only), `tfds_stream`
(resumable tensorflow-datasets pipelines), `cifar` and `imagenet`.
"""

import dataclasses
import functools
import typing
from collections.abc import Callable
from typing import Iterator

from evalnorm.data.batching import Batch
from evalnorm.data.cifar import CifarDataset
from evalnorm.data.digits import (DigitCropsDataset, DigitsDataset,
                                  NoisyDigitsDataset)
from evalnorm.data.imagenet import ImageNetDataset
from evalnorm.data.tfds_stream import DatasetUnavailableError


class Dataset(typing.Protocol):
  """What the training loop needs from a dataset."""
  name: str
  num_classes: int
  image_shape: tuple[int, int, int]  # (H, W, C) after preprocessing
  num_train_examples: int
  num_eval_examples: int  # real (unpadded) examples in the whole eval set

  def train_batches(self, start_step: int) -> Iterator[Batch]:
    ...

  def eval_batches(self) -> Iterator[Batch]:
    ...



@dataclasses.dataclass(frozen=True)
class DatasetEntry:
  """A dataset that ``config.dataset`` names.

  make: config -> the dataset.
  train_examples: the size of its training split, to turn epochs into steps
    before the data is read (configs, experiment listings); a run counts its
    dataset's own examples.
  """
  make: Callable[..., Dataset]
  train_examples: int


# The classification datasets.
DATASETS = {
    'noisy_digits': DatasetEntry(NoisyDigitsDataset, 1350),
    'digits': DatasetEntry(DigitsDataset, 1350),
    'digit_crops': DatasetEntry(DigitCropsDataset, 1350),
    'cifar10': DatasetEntry(
        functools.partial(CifarDataset, tfds_name='cifar10'), 50_000),
    'cifar100': DatasetEntry(
        functools.partial(CifarDataset, tfds_name='cifar100'), 50_000),
    'imagenet2012': DatasetEntry(ImageNetDataset, 1_281_167),
}


def make_dataset(config) -> Dataset:
  """Builds the dataset named by `config.dataset` (one of `DATASETS`)."""
  if config.dataset not in DATASETS:
    raise ValueError(
        f'unknown dataset {config.dataset!r}; expected one of {tuple(DATASETS)}')
  return DATASETS[config.dataset].make(config)


def one_epoch_of_steps(config, dataset: str):
  """The steps of one epoch of ``dataset`` at ``config.batch_size``, as a
  reference: it follows later changes of the batch size."""
  batch_size = config.get_ref('batch_size')
  examples = DATASETS[dataset].train_examples
  return (batch_size + examples - 1) // batch_size


__all__ = ['Batch', 'Dataset', 'DatasetEntry', 'DatasetUnavailableError',
           'DATASETS', 'make_dataset', 'one_epoch_of_steps']
