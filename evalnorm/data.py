"""Input pipelines: built-in NumPy digit datasets and tfds CIFAR / ImageNet.

`make_dataset(config)` returns an object with the `Dataset` interface below, built
by the constructor that the table `DATASETS` (at the end) gives its name. All
batches are NumPy arrays for *this process*:

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
  share, with `'mask'` 0.0 for the repeats. Padding repeats data rather than
  zeros because EvalNorm evaluation may also normalize with statistics of groups
  of examples, and a group of zero images would distort those statistics.

`noisy_digits` (the default) and `digits` are built from scikit-learn's 8x8
digits with NumPy only; TensorFlow is imported lazily by the tfds datasets, so a
digits run does not pay its import time (several seconds).
"""

import functools
import itertools
import math
import os
import typing
from typing import Iterable, Iterator

import jax
import numpy as np

from evalnorm import paths

Batch = dict[str, np.ndarray]


class DatasetUnavailableError(Exception):
  """The dataset is not prepared in data_dir; the message says how to fix it."""


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


def make_dataset(config) -> Dataset:
  """Builds the dataset named by `config.dataset` (one of `DATASETS`)."""
  if config.dataset not in DATASETS:
    raise ValueError(
        f'unknown dataset {config.dataset!r}; expected one of {tuple(DATASETS)}')
  return DATASETS[config.dataset](config)


# ---------------------------------------------------------------------------
# Batching shared by all datasets.


def _local_batch_size(global_batch_size: int) -> int:
  process_count = jax.process_count()
  if global_batch_size % process_count:
    raise ValueError(f'batch size {global_batch_size} is not divisible by the '
                     f'number of processes {process_count}')
  return global_batch_size // process_count


def _num_eval_batches(num_examples: int, local_batch_size: int) -> int:
  """Eval batches per process, the same on every process.

  The eval step is a collective under pmap, so every process must run the same
  number of steps: each pads up to the largest per-process share.
  """
  largest_share = math.ceil(num_examples / jax.process_count())
  return math.ceil(largest_share / local_batch_size)


def _pad_batch(batch: Batch, padding_source: Batch, batch_size: int) -> Batch:
  """Fills `batch` up to `batch_size` rows from `padding_source` (mask 0)."""
  num_real = len(batch['label'])
  repeats = np.arange(batch_size - num_real) % len(padding_source['label'])
  padded = {key: np.concatenate([batch[key], padding_source[key][repeats]])
            for key in ('image', 'label')}
  padded['mask'] = np.concatenate([
      np.ones(num_real, np.float32), np.zeros(len(repeats), np.float32)])
  return padded


def _padded_eval_batches(batches: Iterable[Batch], batch_size: int,
                         num_batches: int) -> Iterator[Batch]:
  """Exactly `num_batches` full batches, padded with the first batch's rows."""
  padding_source = None
  num_yielded = 0
  for batch in batches:
    if padding_source is None:
      padding_source = batch  # the start of this process's share
    yield _pad_batch(batch, padding_source, batch_size)
    num_yielded += 1
  if padding_source is None:
    raise ValueError(f'process {jax.process_index()} has no eval examples')
  empty = {key: value[:0] for key, value in padding_source.items()}
  for _ in range(num_yielded, num_batches):
    yield _pad_batch(empty, padding_source, batch_size)


def _array_eval_batches(images: np.ndarray, labels: np.ndarray,
                        global_batch_size: int) -> Iterator[Batch]:
  """Eval batches of in-memory arrays; process p takes examples p::processes."""
  batch_size = _local_batch_size(global_batch_size)
  num_batches = _num_eval_batches(len(labels), batch_size)
  share = slice(jax.process_index(), None, jax.process_count())
  images, labels = images[share], labels[share]
  batches = ({'image': images[start:start + batch_size],
              'label': labels[start:start + batch_size]}
             for start in range(0, len(labels), batch_size))
  return _padded_eval_batches(batches, batch_size, num_batches)


# ---------------------------------------------------------------------------
# Built-in datasets from scikit-learn's 8x8 digits (NumPy only).

_DIGITS_SPLIT_SEED = 0
_NUM_HELD_OUT_DIGITS = 447  # of 1797; the other 1350 are for training


def _read_only(array: np.ndarray) -> np.ndarray:
  array.setflags(write=False)  # cached and shared between dataset objects
  return array


@functools.cache
def _digits_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """Stratified 1350/447 split of the digits: (train_images, train_labels,
  held_out_images, held_out_labels), images (N, 8, 8) in [0, 1]."""
  from sklearn import datasets, model_selection  # slow import: only when used
  digits = datasets.load_digits()
  images = (digits.images / 16.0).astype(np.float32)
  labels = digits.target.astype(np.int32)
  split = model_selection.train_test_split(
      images, labels, test_size=_NUM_HELD_OUT_DIGITS, stratify=labels,
      random_state=_DIGITS_SPLIT_SEED)
  train_images, held_out_images, train_labels, held_out_labels = split
  return tuple(_read_only(a) for a in (
      train_images, train_labels, held_out_images, held_out_labels))


def _standardize_digits(images: np.ndarray, mean: float,
                        std: float) -> np.ndarray:
  """(N, H, W) -> standardized float32 (N, H, W, 1)."""
  return ((images - mean) / std)[..., None].astype(np.float32, copy=False)


def _step_rng(seed: int, step: int) -> np.random.Generator:
  """The generator of one step's global batch: a function of (seed, step) only.

  Every process draws the same global batch and keeps its slice, so the
  training batches do not depend on the number of processes. (The 0 is the
  process index this seed once held; keeping it keeps results unchanged.)
  """
  return np.random.default_rng([seed, step, 0])


def _process_slice(batch: Batch) -> Batch:
  """This process's consecutive share of a global batch (the devices of
  process p follow those of p - 1, so each device sees the examples it would
  see in a one-process run)."""
  size = _local_batch_size(len(batch['label']))
  start = jax.process_index() * size
  return {k: v[start:start + size] for k, v in batch.items()}


class _InMemoryDigits:
  """Iteration shared by the two digit datasets (they differ in train_batch)."""

  def __init__(self, config):
    self._seed = config.seed
    self._batch_size = config.batch_size  # global, as every process draws it
    self._eval_batch_size = config.eval_batch_size

  def train_batch(self, step: int) -> Batch:
    raise NotImplementedError

  def train_batches(self, start_step: int) -> Iterator[Batch]:
    for step in itertools.count(start_step):
      yield self.train_batch(step)

  def eval_batches(self) -> Iterator[Batch]:
    return _array_eval_batches(self._eval_images, self._eval_labels,
                               self._eval_batch_size)


class DigitsDataset(_InMemoryDigits):
  """Plain 8x8 digits, standardized; 1350 training and 447 eval digits."""
  name = 'digits'
  num_classes = 10
  image_shape = (8, 8, 1)

  def __init__(self, config):
    super().__init__(config)
    self._train_images, self._train_labels, eval_images, self._eval_labels = (
        _digits_split())
    # Fixed constants from the training split (eval never uses its own).
    self._mean = float(self._train_images.mean())
    self._std = float(self._train_images.std())
    self._eval_images = _standardize_digits(eval_images, self._mean, self._std)
    self.num_train_examples = len(self._train_labels)
    self.num_eval_examples = len(self._eval_labels)

  def train_batch(self, step: int) -> Batch:
    """This process's training batch of global step `step`."""
    rng = _step_rng(self._seed, step)
    indices = rng.integers(0, self.num_train_examples, self._batch_size)
    indices = _process_slice({'label': indices})['label']
    images = self._train_images[indices]
    return {'image': _standardize_digits(images, self._mean, self._std),
            'label': self._train_labels[indices]}



# noisy_digits: each digit is warped onto a larger canvas, re-lit and noised.
_CANVAS_SIZE = 24
_MAX_ROTATION_DEGREES = 20.0
_SCALE_RANGE = (1.6, 2.4)
_MAX_SHIFT_FRACTION = 0.15  # of the canvas size, in x and in y
_CONTRAST_RANGE = (0.3, 1.7)
_BRIGHTNESS_RANGE = (-1.0, 1.0)
_NOISE_STD = 0.2
_NUM_NOISY_EVAL_EXAMPLES = 2048
_NOISY_EVAL_SEED = 1  # fixed: every run evaluates on the same examples
_NORMALIZATION_SAMPLES = 4096
_NORMALIZATION_SEED = 2


def _bilinear_sample(images: np.ndarray, x: np.ndarray,
                     y: np.ndarray) -> np.ndarray:
  """Samples images (N, H, W) at float pixel coordinates x, y (N, P), 0 outside.

  Vectorized over the whole batch (this runs every training step). The images
  get a zero border (one pixel before, two after) and coordinates are clipped
  into it, so out-of-range neighbours read zeros without per-neighbour masks.
  The four neighbours are gathered from shifted views of the flat padded batch.
  """
  n, height, width = images.shape
  row = width + 3
  flat = np.pad(images, ((0, 0), (1, 2), (1, 2))).reshape(-1)
  x = np.clip(x, -1, width)
  y = np.clip(y, -1, height)
  x0, y0 = np.floor(x), np.floor(y)
  fx, fy = x - x0, y - y0
  # Flat index of the top-left neighbour, computed in float32 and converted
  # once (cheaper than integer arithmetic; exact below 2**24 elements).
  if flat.size >= 2**24:
    raise ValueError(f'batch of {n} images is too large to sample at once')
  image_offsets = ((np.arange(n, dtype=np.float32) * (height + 3) + 1) * row
                   + 1)[:, None]
  top_left = (y0 * row + x0 + image_offsets).astype(np.int32)
  top = _lerp(np.take(flat, top_left), np.take(flat[1:], top_left), fx)
  bottom = _lerp(np.take(flat[row:], top_left),
                 np.take(flat[row + 1:], top_left), fx)
  return _lerp(top, bottom, fy)


def _lerp(a: np.ndarray, b: np.ndarray, fraction: np.ndarray) -> np.ndarray:
  return a + fraction * (b - a)


@functools.cache
def _canvas_grid() -> tuple[np.ndarray, np.ndarray]:
  """Canvas pixel coordinates (x, y), each (1, S*S), relative to its centre."""
  coords = np.arange(_CANVAS_SIZE, dtype=np.float32) - (_CANVAS_SIZE - 1) / 2
  grid_y, grid_x = np.meshgrid(coords, coords, indexing='ij')
  return _read_only(grid_x.reshape(1, -1)), _read_only(grid_y.reshape(1, -1))


def _warp_digits(digits: np.ndarray, angles: np.ndarray, scales: np.ndarray,
                 shifts: np.ndarray) -> np.ndarray:
  """Rotates, scales and shifts digits (N, 8, 8) onto zero canvases (N, S, S).

  Inverse mapping: canvas pixel p reads the digit at
  R(-angle) (p - canvas_centre - shift) / scale + digit_centre.
  Angles in radians (N,), scales (N,), shifts (N, 2) in canvas pixels (x, y).
  """
  grid_x, grid_y = _canvas_grid()
  cos = np.cos(angles) / scales
  sin = np.sin(angles) / scales
  shift_x, shift_y = shifts[:, 0], shifts[:, 1]
  digit_centre = (digits.shape[-1] - 1) / 2
  # Per-example constant parts of the map first: the (N, P) work is 4 ops each.
  offset_x = digit_centre - cos * shift_x - sin * shift_y
  offset_y = digit_centre + sin * shift_x - cos * shift_y
  source_x = cos[:, None] * grid_x + sin[:, None] * grid_y + offset_x[:, None]
  source_y = cos[:, None] * grid_y - sin[:, None] * grid_x + offset_y[:, None]
  canvas = _bilinear_sample(digits, source_x, source_y)
  return canvas.reshape(-1, _CANVAS_SIZE, _CANVAS_SIZE)


def _render_noisy_digits(digits: np.ndarray,
                         rng: np.random.Generator) -> np.ndarray:
  """Raw noisy images (N, S, S): random warp, contrast, brightness and noise."""
  n = len(digits)

  def uniform(bounds, shape):
    return rng.uniform(*bounds, size=shape).astype(np.float32)

  max_angle = np.deg2rad(_MAX_ROTATION_DEGREES)
  max_shift = _MAX_SHIFT_FRACTION * _CANVAS_SIZE
  canvas = _warp_digits(digits,
                        angles=uniform((-max_angle, max_angle), n),
                        scales=uniform(_SCALE_RANGE, n),
                        shifts=uniform((-max_shift, max_shift), (n, 2)))
  contrast = uniform(_CONTRAST_RANGE, (n, 1, 1))
  brightness = uniform(_BRIGHTNESS_RANGE, (n, 1, 1))
  noise = rng.standard_normal(canvas.shape, dtype=np.float32)
  return contrast * canvas + brightness + _NOISE_STD * noise


@functools.cache
def _noisy_digits_mean_std() -> tuple[float, float]:
  """Standardization constants from a fixed sample of rendered train digits."""
  train_images = _digits_split()[0]
  rng = np.random.default_rng(_NORMALIZATION_SEED)
  indices = rng.integers(0, len(train_images), _NORMALIZATION_SAMPLES)
  images = _render_noisy_digits(train_images[indices], rng)
  return float(images.mean()), float(images.std())


class NoisyDigitsDataset(_InMemoryDigits):
  """Digits warped onto a 24x24 canvas, re-lit and noised (the default dataset).

  A hard task with natural-image-like variation in pose, contrast, brightness
  and noise, so per-example statistics differ a lot between examples.

  Training draws fresh examples every step from the 1350 training digits; the
  eval set is 2048 fixed renderings of the 447 held-out digits (each used 4 or
  5 times), the same for every config.seed.
  """
  name = 'noisy_digits'
  num_classes = 10
  image_shape = (_CANVAS_SIZE, _CANVAS_SIZE, 1)
  num_eval_examples = _NUM_NOISY_EVAL_EXAMPLES

  def __init__(self, config):
    super().__init__(config)
    self._train_digits, self._train_labels, held_out_digits, held_out_labels = (
        _digits_split())
    self.num_train_examples = len(self._train_labels)
    self._mean, self._std = _noisy_digits_mean_std()
    indices = np.arange(self.num_eval_examples) % len(held_out_labels)
    rng = np.random.default_rng(_NOISY_EVAL_SEED)
    self._eval_images = _standardize_digits(
        _render_noisy_digits(held_out_digits[indices], rng), self._mean,
        self._std)
    self._eval_labels = held_out_labels[indices]

  def train_batch(self, step: int) -> Batch:
    """This process's training batch of global step `step`."""
    rng = _step_rng(self._seed, step)
    indices = rng.integers(0, self.num_train_examples, self._batch_size)
    # The whole global batch is rendered (its random draws are sequential),
    # then sliced: each process renders num_processes times its share.
    images = _render_noisy_digits(self._train_digits[indices], rng)
    return _process_slice({
        'image': _standardize_digits(images, self._mean, self._std),
        'label': self._train_labels[indices]})



# ---------------------------------------------------------------------------
# tensorflow-datasets: CIFAR-10/100 and ImageNet. TensorFlow and tfds are
# imported inside the functions that use them, so digits runs never load them.

_DEFAULT_SHUFFLE_BUFFER = 10_000


def _unprepared_message(builder) -> str:
  name, data_dir = builder.name, builder.data_dir_root
  message = (f'dataset {name!r} is not prepared in data_dir={data_dir}: run '
             f'`tfds build {name} --data_dir={data_dir}` on a machine with '
             'internet access and copy the directory here')
  if name == 'imagenet2012':
    message += (' (imagenet2012 also needs the ILSVRC2012 tar files in '
                f'{data_dir}/downloads/manual)')
  return message


def _split_size(builder, split: str) -> int:
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
    raise DatasetUnavailableError(_unprepared_message(builder)) from error
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


class _TfdsDataset:
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
      data_dir = os.fspath(paths.path(data_dir))
    self._builder = tfds.builder(tfds_name, data_dir=data_dir)
    self.num_train_examples = _split_size(self._builder, self.train_split)
    self.num_eval_examples = _split_size(self._builder, self.eval_split)
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
      self._num_local_train_examples = _split_size(
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
        _local_batch_size(self._batch_size), start_step, seed,
        buffer_size, preprocess)

  def eval_batches(self) -> Iterator[Batch]:
    import tensorflow as tf
    import tensorflow_datasets as tfds
    batch_size = _local_batch_size(self._eval_batch_size)
    dataset = self._read(self.eval_split, shuffle_files=False)
    dataset = dataset.map(self._preprocess_eval,
                          num_parallel_calls=tf.data.AUTOTUNE)
    dataset = dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)
    return _padded_eval_batches(
        tfds.as_numpy(dataset), batch_size,
        _num_eval_batches(self.num_eval_examples, batch_size))


# Per-channel statistics of the training images in [0, 1] (the true pixel
# standard deviations, not the widely copied (0.2023, 0.1994, 0.2010)).
_CIFAR_MEAN_STD = {
    'cifar10': ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    'cifar100': ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
_CIFAR_PADDING = 4


class CifarDataset(_TfdsDataset):
  """CIFAR-10/100: random crop of the 4-pixel zero-padded image, random flip."""
  eval_split = 'test'
  image_shape = (32, 32, 3)

  def __init__(self, config, tfds_name: str):
    super().__init__(config, tfds_name)
    self._mean, self._std = _CIFAR_MEAN_STD[tfds_name]

  def _standardize(self, image, label):
    import tensorflow as tf
    image = (tf.cast(image, tf.float32) / 255.0 - self._mean) / self._std
    return {'image': image, 'label': tf.cast(label, tf.int32)}

  def _preprocess_train(self, example, seed):
    import tensorflow as tf
    crop_seed, flip_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, 2))
    pad = _CIFAR_PADDING
    image = tf.pad(example['image'], [[pad, pad], [pad, pad], [0, 0]])
    image = tf.image.stateless_random_crop(image, self.image_shape, crop_seed)
    image = tf.image.stateless_random_flip_left_right(image, flip_seed)
    return self._standardize(image, example['label'])

  def _preprocess_eval(self, example):
    return self._standardize(example['image'], example['label'])


# ImageNet follows TF-slim's inception_preprocessing (the Inception
# preprocessing the paper cites) as slim's train_image_classifier runs it, with
# preprocess_image's default fast_mode=True: a random box, a bilinear resize to
# the square (aspect ratio not kept), a random flip, colour distortion, and
# values scaled to [-1, 1]. tfds' imagenet2012 has no object boxes, so the box
# is sampled in the whole image and must cover min_object_covered of it: the
# effective area range is 10-100%.
_INCEPTION_BOX = dict(min_object_covered=0.1, aspect_ratio_range=(0.75, 1.33),
                      area_range=(0.05, 1.0), max_attempts=100)
_INCEPTION_BRIGHTNESS_DELTA = 32 / 255
_INCEPTION_SATURATION_RANGE = (0.5, 1.5)
# slim draws one of four colour orderings; in fast mode ordering 0 is
# brightness then saturation and orderings 1-3 are saturation then brightness.
_INCEPTION_COLOR_ORDERINGS = 4
# Evaluation (slim's preprocess_for_eval): the central 87.5% of each side.
_INCEPTION_EVAL_FRACTION = 0.875


def inception_crop_window(jpeg_shape, seed):
  """[top, left, height, width] of slim's distorted_bounding_box_crop.

  After max_attempts failures the sampler returns the whole image, as slim's.
  """
  import tensorflow as tf
  whole_image = tf.constant([0.0, 0.0, 1.0, 1.0], tf.float32, [1, 1, 4])
  begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
      jpeg_shape, bounding_boxes=whole_image, seed=seed, **_INCEPTION_BOX)
  return tf.stack([begin[0], begin[1], size[0], size[1]])


def inception_distort_color(image, seed):
  """slim's distort_color in fast mode, for an image in [0, 1]."""
  import tensorflow as tf
  order_seed, brightness_seed, saturation_seed = tf.unstack(
      tf.random.experimental.stateless_split(seed, 3))

  def brightness(x):
    return tf.image.stateless_random_brightness(
        x, _INCEPTION_BRIGHTNESS_DELTA, brightness_seed)

  def saturation(x):
    return tf.image.stateless_random_saturation(
        x, *_INCEPTION_SATURATION_RANGE, seed=saturation_seed)
  ordering = tf.random.stateless_uniform(
      [], order_seed, minval=0, maxval=_INCEPTION_COLOR_ORDERINGS,
      dtype=tf.int32)
  image = tf.cond(tf.equal(ordering, 0), lambda: saturation(brightness(image)),
                  lambda: brightness(saturation(image)))
  return tf.clip_by_value(image, 0.0, 1.0)  # the random ops do not clamp


def _resize_unit_range(image, image_size: int):
  """uint8 crop -> float32 (S, S, 3) in [0, 1], slim's bilinear resize."""
  import tensorflow as tf
  image = tf.image.convert_image_dtype(image, tf.float32)
  return tf.image.resize(image, [image_size, image_size], method='bilinear')


def inception_train_image(jpeg, seed, image_size: int):
  """slim's preprocess_for_train (fast mode) of JPEG bytes, in [-1, 1]."""
  import tensorflow as tf
  crop_seed, flip_seed, color_seed = tf.unstack(
      tf.random.experimental.stateless_split(seed, 3))
  window = inception_crop_window(tf.image.extract_jpeg_shape(jpeg), crop_seed)
  # Decoding only the window is slim's decode-then-slice, cheaper.
  image = tf.image.decode_and_crop_jpeg(jpeg, window, channels=3)
  image = _resize_unit_range(image, image_size)
  image = tf.image.stateless_random_flip_left_right(image, flip_seed)
  image = inception_distort_color(image, color_seed)
  return (image - 0.5) * 2.0


def inception_eval_image(jpeg, image_size: int):
  """slim's preprocess_for_eval of JPEG bytes: tf.image.central_crop's window."""
  import tensorflow as tf
  shape = tf.image.extract_jpeg_shape(jpeg)

  def start(side):
    side = tf.cast(side, tf.float64)
    return tf.cast((side - side * _INCEPTION_EVAL_FRACTION) / 2, tf.int32)
  top, left = start(shape[0]), start(shape[1])
  window = tf.stack([top, left, shape[0] - 2 * top, shape[1] - 2 * left])
  image = tf.image.decode_and_crop_jpeg(jpeg, window, channels=3)
  return (_resize_unit_range(image, image_size) - 0.5) * 2.0


class ImageNetDataset(_TfdsDataset):
  """ImageNet (ILSVRC2012) with Inception preprocessing (see above).

  Images stay JPEG bytes (SkipDecoding) so that only the crop is decoded.
  """
  eval_split = 'validation'

  def __init__(self, config):
    import tensorflow_datasets as tfds
    self.decoders = {'image': tfds.decode.SkipDecoding()}
    image_size = config.get('image_size', 224)
    self.image_shape = (image_size, image_size, 3)
    super().__init__(config, 'imagenet2012')

  def _preprocess_train(self, example, seed):
    import tensorflow as tf
    return {'image': inception_train_image(example['image'], seed,
                                           self.image_shape[0]),
            'label': tf.cast(example['label'], tf.int32)}

  def _preprocess_eval(self, example):
    import tensorflow as tf
    return {'image': inception_eval_image(example['image'],
                                          self.image_shape[0]),
            'label': tf.cast(example['label'], tf.int32)}


# The classification datasets: config.dataset -> constructor(config).
DATASETS = {
    'noisy_digits': NoisyDigitsDataset,
    'digits': DigitsDataset,
    'cifar10': functools.partial(CifarDataset, tfds_name='cifar10'),
    'cifar100': functools.partial(CifarDataset, tfds_name='cifar100'),
    'imagenet2012': ImageNetDataset,
}
