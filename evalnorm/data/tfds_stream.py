"""tensorflow-datasets pipelines: deterministic and resumable, per process.

TensorFlow and tfds are imported inside the functions that use them, so the
built-in digits never load them (several seconds).
"""

import itertools
import os
from typing import Iterator

import jax
import numpy as np

from evalnorm.data import batching
from evalnorm.data.batching import Batch


class DatasetUnavailableError(Exception):
  """The dataset is not prepared in data_dir; the message says how to fix it."""


_DEFAULT_SHUFFLE_BUFFER = 10_000


def unprepared_message(builder) -> str:
  name, data_dir = builder.name, builder.data_dir_root
  message = (f'dataset {name!r} is not prepared in data_dir={data_dir}: run '
             f'`tfds build {name} --data_dir={data_dir}` on a machine with '
             'internet access and copy the directory here')
  if name == 'imagenet2012':
    message += (' (imagenet2012 also needs the ILSVRC2012 tar files in '
                f'{data_dir}/downloads/manual)')
  return message


def split_size(builder, split: str) -> int:
  """Number of examples in `split`; DatasetUnavailableError if not prepared.

  Asks `as_dataset` (which only builds the pipeline) rather than
  `builder.is_prepared()`: under `tfds.testing.mock_data` only loading is faked,
  so `is_prepared()` is False and `info.splits` is empty there, while
  `as_dataset` works; for real data `as_dataset` fails on missing files.
  tfds attaches the exact cardinality to every split it loads.
  """
  import tensorflow_datasets as tfds
  try:
    dataset = builder.as_dataset(split=split)
  except (AssertionError, tfds.core.DatasetNotFoundError) as error:
    raise DatasetUnavailableError(unprepared_message(builder)) from error
  return int(dataset.cardinality())


def _epoch_seed(seed: int, epoch: int) -> int:
  """The shuffling seed of one epoch: a function of (config.seed, epoch)."""
  return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


def epoch_stream_batches(read, num_examples: int, batch_size: int,
                         start_step: int, seed: int, buffer_size: int,
                         preprocess) -> Iterator[Batch]:
  """This process's training batches from `start_step` on, epoch after epoch.

  `read(shuffle_seed)` gives this process's `num_examples` examples of the
  split with the files in the order of `shuffle_seed`; epoch e reads them
  with the seed of (seed, e) and shuffles the examples with it too;
  `preprocess(position, example)` maps an example at its position in the
  stream (counted from the start of training, so augmentations keyed on it
  change from epoch to epoch). Batch k holds stream positions
  [k * batch_size, (k + 1) * batch_size); one may hold the end of an epoch
  and the start of the next.

  Resume opens the epoch that holds position `start_step * batch_size` and
  skips that epoch's consumed examples, undecoded. Why per-epoch orders
  rather than one shuffle over the repeated split (what this once was, which
  read every consumed example of every earlier epoch again: tens of epochs
  of records late in an ImageNet run): a resume reads at most one epoch,
  whatever the step, with the same files and shuffle buffer as before. A
  checkpointed tf.data iterator would store the shuffle buffer (10,000
  ImageNet JPEGs, ~1 GB per process) in every checkpoint; a random-access
  loader (grain on ArrayRecord) would need the data prepared in another
  format than tfds' default TFRecord.
  """
  import tensorflow as tf
  import tensorflow_datasets as tfds
  epoch, first = divmod(start_step * batch_size, num_examples)
  carry = None  # the previous epoch's last, partial batch
  for epoch in itertools.count(epoch):
    epoch_seed = _epoch_seed(seed, epoch)
    dataset = read(epoch_seed).shuffle(buffer_size, seed=epoch_seed,
                                       reshuffle_each_iteration=False)
    dataset = dataset.enumerate(epoch * num_examples).skip(first)
    dataset = dataset.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE)
    if carry is not None:  # the first rows of this epoch's first batch
      dataset = tf.data.Dataset.from_tensor_slices(carry).concatenate(dataset)
    dataset = dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)
    carry = None
    for batch in tfds.as_numpy(dataset):
      if len(next(iter(batch.values()))) < batch_size:
        carry = batch
      else:
        yield batch
    first = 0


class TfdsDataset:
  """Deterministic, resumable tfds pipelines; subclasses define preprocessing.

  Training order (`epoch_stream_batches`): each process streams its share of
  the split epoch after epoch, files and examples shuffled with seeds from
  (config.seed, epoch), and every random augmentation is a stateless op
  keyed on (seed, process, position of the example in the stream), so the
  stream is a deterministic function of config.seed. A resume skips only
  the consumed part of its epoch (reading, no decoding): at most one epoch
  whatever the step.
  """
  name: str
  train_split = 'train'
  eval_split: str
  image_shape: tuple[int, int, int]
  decoders = None  # tfds decoders for `as_dataset`

  def __init__(self, config, tfds_name: str):
    import tensorflow_datasets as tfds
    self._seed = config.seed
    self._batch_size = config.batch_size  # global
    self._eval_batch_size = config.eval_batch_size
    self._shuffle_buffer = config.get('shuffle_buffer')  # tests set it
    self.name = tfds_name
    data_dir = config.get('data_dir')
    if data_dir:  # tfds does not expand '~' itself; gs:// stays as it is
      data_dir = os.path.expanduser(data_dir)
    self._builder = tfds.builder(tfds_name, data_dir=data_dir)
    self.num_train_examples = split_size(self._builder, self.train_split)
    self.num_eval_examples = split_size(self._builder, self.eval_split)
    self.num_classes = self._builder.info.features['label'].num_classes
    self._num_local_train_examples = None  # this process's share, when needed

  def _preprocess_train(self, example, seed):
    """(example, stateless seed [2]) -> {'image': float32, 'label': int32}."""
    raise NotImplementedError

  def _preprocess_eval(self, example):
    raise NotImplementedError

  def _read(self, split: str, shuffle_files: bool, shuffle_seed: int = 0):
    """This process's part of `split`, read deterministically."""
    import tensorflow as tf
    import tensorflow_datasets as tfds
    options = tf.data.Options()
    options.deterministic = True
    read_config = tfds.ReadConfig(shuffle_seed=shuffle_seed, options=options)
    dataset = self._builder.as_dataset(
        split=tfds.split_for_jax_process(split), shuffle_files=shuffle_files,
        decoders=self.decoders, read_config=read_config)
    return dataset.with_options(options)

  def train_batches(self, start_step: int) -> Iterator[Batch]:
    import tensorflow as tf
    import tensorflow_datasets as tfds
    if self._num_local_train_examples is None:
      self._num_local_train_examples = split_size(
          self._builder, tfds.split_for_jax_process(self.train_split))
    # A buffer beyond the split size buys nothing (and under mock_data, filling
    # 10k examples from its Python generator takes half a minute).
    buffer_size = (self._shuffle_buffer or
                   min(_DEFAULT_SHUFFLE_BUFFER, self.num_train_examples))
    seed = self._seed
    process_seed = tf.constant([seed, jax.process_index()], tf.int64)

    def preprocess(position, example):
      example_seed = tf.random.experimental.stateless_fold_in(
          process_seed, position)
      return self._preprocess_train(example, example_seed)

    return epoch_stream_batches(
        lambda shuffle_seed: self._read(self.train_split, True, shuffle_seed),
        self._num_local_train_examples,
        batching.local_batch_size(self._batch_size), start_step, seed,
        buffer_size, preprocess)

  def eval_batches(self) -> Iterator[Batch]:
    import tensorflow as tf
    import tensorflow_datasets as tfds
    batch_size = batching.local_batch_size(self._eval_batch_size)
    dataset = self._read(self.eval_split, shuffle_files=False)
    dataset = dataset.map(self._preprocess_eval,
                          num_parallel_calls=tf.data.AUTOTUNE)
    dataset = dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)
    return batching.padded_eval_batches(
        tfds.as_numpy(dataset), batch_size,
        batching.num_eval_batches(self.num_eval_examples, batch_size))
