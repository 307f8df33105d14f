"""COCO through tensorflow-datasets, on tfds' mock data."""

import json

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from evalnorm.detection import (boxes as box_lib, coco,
                                evaluation as detection_evaluation)

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


# Two validation images as tfds' coco/2017 holds them: the original size,
# boxes normalized (ymin, xmin, ymax, xmax), labels 0..79 (tfds' order of
# COCO's categories), crowd flags. At image_size 64 image 139 (427 x 640)
# becomes 43 x 64 (427 * 0.1 = 42.7 rounds up: y and x scale differently)
# and image 285 (500 x 375) becomes 64 x 48 (both by 0.128).
HAND_MADE_IMAGES = (
    (139, (427, 640), [
        # person (label 0, COCO id 1): x 64..320, y 42.7..213.5
        ([0.1, 0.1, 0.5, 0.5], 0, False),
        # a crowd of people: x 384..640, y 213.5..427
        ([0.5, 0.6, 1.0, 1.0], 0, True)]),
    (285, (500, 375), [
        # person: x 187.5..375, y 250..500
        ([0.5, 0.5, 1.0, 1.0], 0, False),
        # toothbrush (label 79, COCO id 90): x 75..300, y 100..400
        ([0.2, 0.2, 0.8, 0.8], 79, False),
        # stop sign (label 11, COCO id 13): x 0..75, y 0..50
        ([0.0, 0.0, 0.1, 0.2], 11, False)]),
)


def hand_made_as_dataset(builder, *args, **kwargs):
  """coco/2017 holding HAND_MADE_IMAGES (for tfds.testing.mock_data)."""
  del builder, args, kwargs

  def examples():
    for image_id, (height, width), objects in HAND_MADE_IMAGES:
      boxes, labels, crowd = (np.asarray(v) for v in zip(*objects))
      yield {'image': np.zeros((height, width, 3), np.uint8),
             'image/id': image_id, 'objects': {
                 'bbox': boxes.astype(np.float32), 'label': labels,
                 'is_crowd': crowd,
                 'area': np.full(len(labels), 100, np.int64)}}
  signature = {'image': tf.TensorSpec((None, None, 3), tf.uint8),
               'image/id': tf.TensorSpec((), tf.int64), 'objects': {
                   'bbox': tf.TensorSpec((None, 4), tf.float32),
                   'label': tf.TensorSpec((None,), tf.int64),
                   'is_crowd': tf.TensorSpec((None,), tf.bool),
                   'area': tf.TensorSpec((None,), tf.int64)}}
  dataset = tf.data.Dataset.from_generator(examples,
                                           output_signature=signature)
  return dataset.apply(tf.data.experimental.assert_cardinality(
      len(HAND_MADE_IMAGES)))


# COCO's instances_val2017.json for the two images, written here from the
# values above: official category ids, original sizes, [x, y, w, h] boxes,
# the crowd kept as iscrowd=1 (COCOeval ignores detections matched to it).
REFERENCE_INSTANCES = {
    'images': [{'id': 139, 'height': 427, 'width': 640},
               {'id': 285, 'height': 500, 'width': 375}],
    'annotations': [
        {'id': 1, 'image_id': 139, 'category_id': 1, 'iscrowd': 0,
         'bbox': [64, 42.7, 256, 170.8], 'area': 43724.8},
        {'id': 2, 'image_id': 139, 'category_id': 1, 'iscrowd': 1,
         'bbox': [384, 213.5, 256, 213.5], 'area': 54656.0},
        {'id': 3, 'image_id': 285, 'category_id': 1, 'iscrowd': 0,
         'bbox': [187.5, 250, 187.5, 250], 'area': 46875.0},
        {'id': 4, 'image_id': 285, 'category_id': 90, 'iscrowd': 0,
         'bbox': [75, 100, 225, 300], 'area': 67500.0},
        {'id': 5, 'image_id': 285, 'category_id': 13, 'iscrowd': 0,
         'bbox': [0, 0, 75, 50], 'area': 3750.0}],
    'categories': [{'id': 1, 'name': 'person'}, {'id': 13, 'name': 'stop sign'},
                   {'id': 90, 'name': 'toothbrush'}],
}

# The detector's output for the two images: (x1, y1, x2, y2) pixels of the
# resized image, score, class (label + 1).
HAND_MADE_DETECTIONS = {
    139: [
        # The person exactly: x 6.4..32, y 4.3..21.5 (42.7 * 43 / 427 = 4.3).
        ((6.4, 4.3, 32.0, 21.5), 0.9, 1),
        # A person inside the crowd (x 440..560, y 297.9..397.2): ignored.
        ((44.0, 30.0, 56.0, 40.0), 0.8, 1),
        # A false person reaching into the padding: clipped to the image,
        # x 400..640, y 0..99.3 (10 * 427 / 43).
        ((40.0, 0.0, 70.0, 10.0), 0.7, 1)],
    285: [
        ((24.0, 32.0, 48.0, 64.0), 0.6, 1),      # the person exactly
        ((9.6, 12.8, 38.4, 51.2), 0.5, 80),      # the toothbrush exactly
        # The stop sign's x 0..75, y 0..31: IoU 31 / 50 = 0.62.
        ((0.0, 0.0, 9.6, 3.968), 0.4, 12)],
}


def detections_of(batch) -> dict:
  """HAND_MADE_DETECTIONS as postprocess gives them, for an eval batch."""
  size = (len(batch['image_id']), 4)
  out = {'boxes': np.zeros(size + (4,), np.float32),
         'scores': np.zeros(size, np.float32),
         'classes': np.ones(size, np.int32), 'valid': np.zeros(size, bool)}
  for row, image_id in enumerate(batch['image_id']):
    for i, (box, score, label) in enumerate(HAND_MADE_DETECTIONS[image_id]):
      out['boxes'][row, i], out['scores'][row, i] = box, score
      out['classes'][row, i], out['valid'][row, i] = label, True
  return out


def test_result_files_score_against_cocos_own_annotations(tmp_path):
  """The detections file scores against an instances file written from
  COCO's conventions; the AP is the one computed by hand.

  person: 2 objects; by score a hit (0.9), a detection in the crowd that
  COCOeval ignores (0.8), a false alarm (0.7), a hit (0.6): precision 1 up
  to recall 1/2, then 2/3: AP (51 + 50 * 2/3) / 101 at every IoU threshold.
  Without the crowd the 0.8 would be a second false alarm: 1/2 at recall 1.
  toothbrush: 1 at every threshold. stop sign: IoU 0.62, a hit for the
  thresholds 0.5, 0.55, 0.6 of ten: AP 0.3, AP50 1, AP75 0.
  """
  with tfds.testing.mock_data(as_dataset_fn=hand_made_as_dataset):
    dataset = coco.CocoDataset(coco_config(eval_batch_size=4))
    (batch,) = list(dataset.eval_batches())
    gathered = {'image_id': batch['image_id'], 'mask': batch['mask'],
                'modes': {'ema': detection_evaluation.in_coco_terms(
                    detections_of(batch), batch, dataset.category_ids)}}
    results = detection_evaluation.results_json(gathered)
    own = detection_evaluation.write_and_score(
        tmp_path, dataset.ground_truth(), results)['ema']
  with open(tmp_path / 'reference.json', 'w') as f:
    json.dump(REFERENCE_INSTANCES, f)
  metrics = detection_evaluation.score_files(
      tmp_path / 'reference.json', tmp_path / 'detections_ema.json')
  person = (51 + 50 * 2 / 3) / 101
  expected = {'AP': (person + 1 + 0.3) / 3, 'AP50': (person + 1 + 1) / 3,
              'AP75': (person + 1 + 0) / 3}
  for name, value in expected.items():
    assert metrics[name] == pytest.approx(100 * value, abs=1e-6), name
    assert own[name] == pytest.approx(100 * value, abs=1e-6), name
  # The boxes themselves are in original pixels, [x, y, w, h] as COCO's.
  boxes = {(r['image_id'], r['score']): r['bbox'] for r in results['ema']}
  np.testing.assert_allclose(boxes[139, 0.9], [64, 42.7, 256, 170.8], atol=0.01)
  np.testing.assert_allclose(boxes[139, 0.7], [400, 0, 240, 99.3], atol=0.01)
  assert {r['category_id'] for r in results['ema']} == {1, 90, 13}
