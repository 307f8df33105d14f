"""COCO through tensorflow-datasets, on tfds' mock data."""

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from evalnorm.detection import boxes as box_lib, coco

from configs import detection as detection_config


def coco_config(**overrides):
  config = detection_config.get_config('dataset=coco')
  config.update(dict(image_size=64, batch_size=2, eval_batch_size=4,
                     norm_batch_size=2))
  config.update(overrides)
  return config


def test_flip_moves_boxes_with_the_pixels():
  image = np.zeros((20, 30, 1), np.float32)
  image[5:9, 3:11] = 1.0
  boxes = tf.constant([[3.0, 5.0, 11.0, 9.0]])
  flipped_image, flipped_boxes = coco.flip_left_right(image, boxes, 30.0)
  rows, cols = np.nonzero(flipped_image.numpy()[..., 0])
  np.testing.assert_array_equal(
      flipped_boxes.numpy()[0], [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1])
  np.testing.assert_array_equal(flipped_boxes.numpy(),
                                box_lib.flip_horizontally(boxes.numpy(), 30.0))


def test_coco_batches_on_mock_data():
  with tfds.testing.mock_data(num_examples=6):
    dataset = coco.CocoDataset(coco_config())
    assert dataset.num_classes == 80 and dataset.image_shape == (64, 64, 3)
    batch = next(dataset.train_batches(0))
    assert batch['image'].shape == (2, 64, 64, 3)
    assert batch['boxes'].shape == (2, coco.MAX_OBJECTS, 4)
    assert batch['classes'].shape == (2, coco.MAX_OBJECTS)
    real = batch['classes'] > 0
    assert np.all(batch['classes'] <= 80)
    assert np.all(batch['boxes'][real] >= 0) and np.all(batch['boxes'][real] <= 64)
    # Resuming at step 1 gives what the uninterrupted stream gave next.
    stream = dataset.train_batches(0)
    next(stream)
    np.testing.assert_array_equal(next(stream)['boxes'],
                                  next(dataset.train_batches(1))['boxes'])
    eval_batches = list(dataset.eval_batches())
    assert sum(int(b['mask'].sum()) for b in eval_batches) == 6
    assert all(b['image'].shape == (4, 64, 64, 3) for b in eval_batches)
    gt = dataset.ground_truth()
    assert len(gt['images']) == 6 and len(gt['categories']) == 80


def test_detector_inputs_are_the_backbones_imagenet_inputs():
  """One uint8 image through ImageNet's evaluation preprocessing (the
  backbone's training inputs) and through COCO's: the same pixels."""
  from evalnorm.data import imagenet
  rng = np.random.default_rng(0)
  # Full-resolution colour: a cropped decode then reads the pixels a whole
  # decode does (chroma upsampling would blend across the crop's edge).
  jpeg = tf.io.encode_jpeg(rng.integers(0, 256, (40, 40, 3), np.uint8),
                           chroma_downsampling=False)
  # ImageNet evaluation keeps the central 87.5%: 2 pixels off each side of
  # 40 (int(40 * 0.125 / 2)), a 36 x 36 crop, resized here to 24 x 24.
  crop = tf.io.decode_jpeg(jpeg)[2:38, 2:38]
  backbone_input = imagenet.inception_eval_image(jpeg, 24).numpy()
  example = {'image': crop, 'image/id': tf.constant(1, tf.int64),
             'objects': {'bbox': tf.zeros((0, 4)),
                         'label': tf.zeros((0,), tf.int64),
                         'is_crowd': tf.zeros((0,), tf.bool)}}
  detector_input = coco.preprocess(example, 24)['image'].numpy()
  np.testing.assert_allclose(detector_input, backbone_input, atol=1e-6)
  # ... whose range is Inception's: black -1, white 1.
  for value, expected in ((0, -1.0), (255, 1.0)):
    example['image'] = tf.fill((30, 20, 3), tf.constant(value, tf.uint8))
    np.testing.assert_array_equal(
        coco.preprocess(example, 24)['image'].numpy()[:24, :16], expected)
