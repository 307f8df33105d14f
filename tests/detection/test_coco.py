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
