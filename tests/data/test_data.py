"""Input pipelines: shapes, determinism, resume, eval padding, tfds mock data."""

import os
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest

from evalnorm import data
from evalnorm.data import digits, imagenet


from training_helpers import small_digits_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NUM_MOCK_EXAMPLES = 37  # no batch size below divides it: exercises padding


def make_config(dataset='noisy_digits', **overrides):
  config = ml_collections.ConfigDict(dict(
      dataset=dataset, batch_size=32, eval_batch_size=300, seed=0,
      data_dir=None, shuffle_buffer=None))
  config.update(overrides)
  return config


def assert_batches_equal(a, b):
  assert a.keys() == b.keys()
  for key in a:
    np.testing.assert_array_equal(a[key], b[key])


def assert_labels_in_range(dataset, labels):
  assert np.all((labels >= 0) & (labels < dataset.num_classes))


def assert_eval_pass(dataset, local_batch_size):
  """Full batches of the right types, masks counting every real example once."""
  batches = list(dataset.eval_batches())
  for batch in batches:
    assert batch['image'].shape == (local_batch_size,) + dataset.image_shape
    assert batch['image'].dtype == np.float32
    assert batch['label'].dtype == np.int32
    assert batch['mask'].dtype == np.float32
    assert batch['label'].shape == batch['mask'].shape == (local_batch_size,)
    assert_labels_in_range(dataset, batch['label'])
  masks = np.concatenate([b['mask'] for b in batches])
  assert masks.sum() == dataset.num_eval_examples
  # Real examples first, padding only at the end of the pass.
  assert np.all(masks[:dataset.num_eval_examples] == 1)
  return batches


def assert_train_batch(dataset, batch, local_batch_size):
  assert batch['image'].shape == (local_batch_size,) + dataset.image_shape
  assert batch['image'].dtype == np.float32 and batch['label'].dtype == np.int32
  assert batch['label'].shape == (local_batch_size,)
  assert_labels_in_range(dataset, batch['label'])
  assert np.all(np.isfinite(batch['image']))


# ---------------------------------------------------------------------------
# Built-in digits datasets.


# The datasets rendered fresh every step, and their image sizes.
RENDERED = {'noisy_digits': 24, 'digit_crops': 32}


@pytest.fixture(scope='module', params=sorted(RENDERED))
def rendered(request):
  return data.make_dataset(make_config(request.param))


def test_rendered_digits_shapes_and_counts(rendered):
  size = RENDERED[rendered.name]
  assert rendered.image_shape == (size, size, 1)
  assert rendered.num_classes == 10
  assert rendered.num_train_examples == 1350
  assert rendered.num_eval_examples == 2048
  assert_train_batch(rendered, next(rendered.train_batches(0)), 32)


def test_rendered_batches_depend_only_on_seed_and_step(rendered):
  again = data.make_dataset(make_config(rendered.name))
  assert_batches_equal(next(rendered.train_batches(3)),
                       next(again.train_batches(3)))
  stream = rendered.train_batches(0)
  first_six = [next(stream) for _ in range(6)]
  assert not np.array_equal(first_six[0]['image'], first_six[1]['image'])
  # Resuming at step 5 continues exactly where an uninterrupted run would be.
  assert_batches_equal(next(rendered.train_batches(5)), first_six[5])
  other_seed = data.make_dataset(make_config(rendered.name, seed=1))
  assert not np.array_equal(next(other_seed.train_batches(0))['image'],
                            first_six[0]['image'])


def test_rendered_digits_standardized_with_varied_lighting(rendered):
  config = make_config(rendered.name, batch_size=512)
  batch = next(data.make_dataset(config).train_batches(0))
  images = batch['image']
  assert abs(images.mean()) < 0.2 and 0.8 < images.std() < 1.2
  # Per-image brightness o ~ U[-1, 1] alone spreads image means by ~0.85 std
  # (noisy_digits; by ~0.9 of the scenes' std in digit_crops).
  assert images.mean(axis=(1, 2, 3)).std() > 0.4
  assert images.std(axis=(1, 2, 3)).std() > 0.05  # contrast varies too
  assert len(np.unique(batch['label'])) == 10


def test_rendered_eval_set_is_fixed_and_padded_with_real_rows(rendered):
  batches = assert_eval_pass(rendered, local_batch_size=300)
  assert len(batches) == 7  # ceil(2048 / 300)
  images = np.concatenate([b['image'] for b in batches])
  num_padding = len(images) - 2048
  # The padding repeats the start of the eval set (it must look like data).
  np.testing.assert_array_equal(images[2048:], images[:num_padding])
  other_seed = data.make_dataset(make_config(rendered.name, seed=7))
  assert_batches_equal(next(other_seed.eval_batches()), batches[0])


def test_rendered_eval_set_is_the_held_out_digits(rendered):
  """The eval labels are the 447 held-out digits', each used 4 or 5 times."""
  held_out_labels = digits.digits_split()[3]
  labels = np.concatenate([b['label'] for b in rendered.eval_batches()])
  np.testing.assert_array_equal(
      labels[:2048], held_out_labels[np.arange(2048) % len(held_out_labels)])


def test_digit_crops_are_cells_of_the_scenes():
  """A crop is a digit_scenes cell: its size, its digit scale, the scenes'
  standardization constants, so the detector's input and its pre-training
  data are on one scale."""
  from configs import detection  # pylint: disable=g-import-not-at-top
  crops = data.make_dataset(make_config('digit_crops', batch_size=256))
  scene_size = detection.get_config().canvas_size
  assert crops.image_shape[0] == scene_size // digits.SCENE_CELLS_PER_SIDE
  assert (crops._mean, crops._std) == digits.scene_mean_std(scene_size)
  images = next(crops.train_batches(0))['image'][..., 0]
  # The digit (brighter than its background) sits inside the crop.
  raw = images * crops._std + crops._mean
  centre = raw[:, 8:24, 8:24].mean(axis=(1, 2))
  border = np.concatenate([raw[:, :3].reshape(256, -1),
                           raw[:, -3:].reshape(256, -1)], 1).mean(1)
  assert np.mean(centre > border) > 0.9


def test_digits_basics():
  dataset = data.make_dataset(make_config('digits'))
  assert dataset.image_shape == (8, 8, 1)
  assert (dataset.num_train_examples, dataset.num_eval_examples) == (1350, 447)
  stream = dataset.train_batches(0)
  first, second = next(stream), next(stream)
  assert_train_batch(dataset, first, 32)
  assert not np.array_equal(first['image'], second['image'])
  assert_batches_equal(next(dataset.train_batches(1)), second)
  batches = assert_eval_pass(dataset, local_batch_size=300)
  assert len(batches) == 2


def test_processes_split_eval_evenly_and_train_differently(monkeypatch):
  """Two fake processes: equal eval batch counts (eval is a collective)."""
  config = make_config('digits', batch_size=32, eval_batch_size=256)
  dataset = data.make_dataset(config)
  monkeypatch.setattr(jax, 'process_count', lambda: 2)
  per_process = []
  for index in range(2):
    monkeypatch.setattr(jax, 'process_index', lambda index=index: index)
    per_process.append((next(dataset.train_batches(0)),
                        list(dataset.eval_batches())))
  (train_0, eval_0), (train_1, eval_1) = per_process
  assert train_0['image'].shape[0] == 16  # local batch = global // processes
  assert not np.array_equal(train_0['image'], train_1['image'])
  assert len(eval_0) == len(eval_1) == 2  # 224 and 223 examples, 128 a batch
  assert eval_0[0]['image'].shape[0] == 128
  masks = [np.concatenate([b['mask'] for b in e]) for e in (eval_0, eval_1)]
  assert (masks[0].sum(), masks[1].sum()) == (224, 223)


def test_digits_datasets_do_not_import_tensorflow():
  code = ('import sys, ml_collections; from evalnorm import data; '
          'c = ml_collections.ConfigDict(dict(dataset="noisy_digits", '
          'batch_size=8, eval_batch_size=8, seed=0)); '
          'd = data.make_dataset(c); next(d.train_batches(0)); '
          'next(d.eval_batches()); print("tensorflow" in sys.modules)')
  result = subprocess.run([sys.executable, '-c', code], cwd=ROOT,
                          capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.strip() == 'False'


def test_unknown_dataset_name_is_rejected():
  with pytest.raises(ValueError, match="'mnist'.*noisy_digits"):
    data.make_dataset(make_config('mnist'))


# ---------------------------------------------------------------------------
# tensorflow-datasets pipelines under tfds.testing.mock_data.


@pytest.fixture
def mock_tfds():
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  with tfds.testing.mock_data(num_examples=NUM_MOCK_EXAMPLES):
    yield


@pytest.mark.parametrize('name, num_classes, image_size', [
    ('cifar10', 10, 32), ('cifar100', 100, 32), ('imagenet2012', 1000, 32)])
def test_tfds_train_batch_and_eval_pass(mock_tfds, name, num_classes,
                                        image_size):
  del mock_tfds  # only needs to be active
  config = make_config(name, batch_size=8, eval_batch_size=16,
                       image_size=image_size)
  dataset = data.make_dataset(config)
  assert dataset.name == name and dataset.num_classes == num_classes
  assert dataset.image_shape == (image_size, image_size, 3)
  assert dataset.num_eval_examples == NUM_MOCK_EXAMPLES
  batch = next(dataset.train_batches(0))
  assert_train_batch(dataset, batch, 8)
  assert 0.3 < batch['image'].std() < 3  # normalized, not raw 0-255 pixels
  batches = assert_eval_pass(dataset, local_batch_size=16)
  assert len(batches) == 3  # ceil(37 / 16)
  images = np.concatenate([b['image'] for b in batches])
  np.testing.assert_array_equal(images[NUM_MOCK_EXAMPLES:],
                                images[:48 - NUM_MOCK_EXAMPLES])


def test_cifar_stream_is_deterministic_and_resumable(mock_tfds):
  del mock_tfds
  config = make_config('cifar10', batch_size=8, shuffle_buffer=16)
  stream = data.make_dataset(config).train_batches(0)
  first_three = [next(stream) for _ in range(3)]
  again = data.make_dataset(config).train_batches(0)
  assert_batches_equal(next(again), first_three[0])
  assert not np.array_equal(first_three[0]['image'], first_three[1]['image'])
  resumed = data.make_dataset(config).train_batches(2)
  assert_batches_equal(next(resumed), first_three[2])


def test_cifar_resume_is_exact_late_and_across_epoch_boundaries(mock_tfds):
  """37 examples, batch 8: every epoch ends inside a batch. Resuming at
  steps a dozen epochs in (each batch straddles an epoch boundary) gives
  the batches of the uninterrupted stream; epochs are shuffled apart."""
  del mock_tfds
  config = make_config('cifar10', batch_size=8, shuffle_buffer=16)
  stream = data.make_dataset(config).train_batches(0)
  uninterrupted = [next(stream) for _ in range(62)]
  labels = np.concatenate([b['label'] for b in uninterrupted])
  # Every epoch holds the 37 examples once, in its own order.
  epochs = labels[:37 * 13].reshape(13, 37)
  assert all(sorted(e) == sorted(epochs[0]) for e in epochs)
  assert len({tuple(e) for e in epochs}) > 1
  # Steps 55 and 60 (positions 440-447, 480-487) hold the ends of epochs
  # 11 (at 444) and 12 (at 481).
  for step in (55, 60):
    resumed = data.make_dataset(config).train_batches(step)
    assert_batches_equal(next(resumed), uninterrupted[step])
    assert_batches_equal(next(resumed), uninterrupted[step + 1])


@pytest.mark.parametrize('name', ['cifar10', 'imagenet2012'])
def test_unprepared_tfds_dataset_says_how_to_prepare_it(tmp_path, name):
  with pytest.raises(data.DatasetUnavailableError) as error:
    data.make_dataset(make_config(name, data_dir=str(tmp_path)))
  message = str(error.value)
  assert '\n' not in message
  assert f"'{name}'" in message and f'tfds build {name}' in message
  assert str(tmp_path) in message


# ---------------------------------------------------------------------------
# ImageNet: TF-slim's Inception preprocessing (fast mode), stateless.


def _jpeg(image):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  return tf.io.encode_jpeg(image, quality=100)


def _seed(*values):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  return tf.constant(values, tf.int64)


def test_inception_crop_window_has_the_reference_area_and_aspect():
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  shape = tf.constant([300, 400, 3], tf.int32)
  windows = np.array([imagenet.inception_crop_window(shape, _seed(0, i)).numpy()
                      for i in range(200)])
  top, left, height, width = windows.T
  assert np.all((top + height <= 300) & (left + width <= 400))
  area = height * width / (300 * 400)
  # area_range (0.05, 1) with the whole image as the object box, which the
  # crop must cover by min_object_covered = 0.1: 10-100% in effect.
  assert area.min() >= 0.1 - 0.01 and area.min() < 0.2
  assert area.max() > 0.7
  aspect = width / height
  assert np.all((aspect > 0.75 - 0.02) & (aspect < 1.33 + 0.02))


def test_inception_train_image_range_shape_and_determinism():
  rng = np.random.default_rng(0)
  jpeg = _jpeg(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8))
  images = [imagenet.inception_train_image(jpeg, _seed(0, i), 32).numpy()
            for i in range(4)]
  for image in images:
    assert image.shape == (32, 32, 3) and image.dtype == np.float32
    assert image.min() >= -1.0 and image.max() <= 1.0
  assert not np.array_equal(images[0], images[1])
  np.testing.assert_array_equal(
      imagenet.inception_train_image(jpeg, _seed(0, 1), 32).numpy(), images[1])
  evaluated = imagenet.inception_eval_image(jpeg, 32).numpy()
  assert evaluated.shape == (32, 32, 3)
  assert evaluated.min() >= -1.0 and evaluated.max() <= 1.0


def test_inception_color_distortion_shifts_brightness_by_up_to_32_over_255():
  grey = 128
  jpeg = _jpeg(np.full((40, 40, 3), grey, np.uint8))
  images = np.stack([imagenet.inception_train_image(jpeg, _seed(1, i), 8).numpy()
                     for i in range(60)])
  # Saturation leaves grey alone: each image stays flat, moved by brightness.
  assert images.std(axis=(1, 2, 3)).max() < 1e-5
  means = images.mean(axis=(1, 2, 3))
  delta = 32 / 255
  low, high = 2 * (grey / 255 - delta) - 1, 2 * (grey / 255 + delta) - 1
  assert np.all((means >= low - 1e-5) & (means <= high + 1e-5))
  assert means.max() - means.min() > 0.6 * (high - low)


def test_inception_eval_is_the_central_87_5_percent_of_each_side_resized():
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(1)
  jpeg = _jpeg(rng.integers(0, 256, (64, 128, 3), dtype=np.uint8))
  pixels = tf.io.decode_jpeg(jpeg, channels=3).numpy()
  # tf.image.central_crop(0.875) of 64x128: rows 4-59, columns 8-119.
  window = pixels[4:60, 8:120].astype(np.float32) / 255
  expected = 2 * tf.image.resize(window, [16, 16], 'bilinear').numpy() - 1
  np.testing.assert_allclose(imagenet.inception_eval_image(jpeg, 16).numpy(),
                             expected, atol=1e-5)


@pytest.mark.slow  # ~25 s on 2 cores: tfds mock data and TensorFlow start-up.
def test_imagenet_pipeline_on_mock_data_is_in_range_and_resumable(mock_tfds):
  del mock_tfds
  config = make_config('imagenet2012', batch_size=8, eval_batch_size=16,
                       image_size=48, shuffle_buffer=16)
  dataset = data.make_dataset(config)
  stream = dataset.train_batches(0)
  first_two = [next(stream) for _ in range(2)]
  for batch in first_two:
    assert_train_batch(dataset, batch, 8)
    assert batch['image'].min() >= -1.0 and batch['image'].max() <= 1.0
  assert_batches_equal(next(data.make_dataset(config).train_batches(1)),
                       first_two[1])
  for batch in assert_eval_pass(dataset, local_batch_size=16):
    assert batch['image'].min() >= -1.0 and batch['image'].max() <= 1.0


def test_the_size_table_agrees_with_the_data_and_follows_the_batch_size():
  from configs import cifar  # pylint: disable=g-import-not-at-top
  for name in ('digits', 'noisy_digits', 'digit_crops'):
    dataset = data.make_dataset(small_digits_config(dataset=name))
    assert dataset.num_train_examples == data.DATASETS[name].train_examples
  config = cifar.get_config()
  assert config.offline_estimation_steps == 391  # ceil(50000 / 128)
  config.batch_size = 100
  assert config.offline_estimation_steps == 500
