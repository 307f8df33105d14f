"""COCO 2017 through tensorflow-datasets (`coco/2017`) for the detector.

Each image is resized so that its longer side is ``config.image_size`` (the
paper's 600), training images are flipped left-right at random with their
boxes, and the image is padded at the bottom and right to a fixed square so
that every batch has one static shape. Pixels are scaled as the backbone's
ImageNet inputs (``imagenet.inception_range``). The detector's boxes are
(x1, y1, x2, y2) pixels of the resized image; its classes are tfds' 80
labels + 1, with 0 for padding; crowd regions are no training targets.

Evaluation is in COCO's own terms: ``ground_truth()`` and the evaluator's
results (``detection.evaluation.in_coco_terms``) use COCO's category ids
(``CATEGORIES``: 1-90 with gaps) and pixels of the original image (the
resize undone, each axis by its own factor), and the ground truth keeps
crowd regions as ``iscrowd=1``, which COCOeval ignores matches to. So the
result files also score against COCO's own instances_val2017.json.

Augmentation is keyed on (seed, process, position in the stream), as for the
classification datasets, so a resumed run sees the batches of an
uninterrupted one. TensorFlow is imported only here.
"""

import os
from typing import Iterator

import jax
import numpy as np

from evalnorm.data import batching, imagenet, tfds_stream
from evalnorm.data.batching import Batch
from evalnorm.detection import evaluation as detection_evaluation
from evalnorm.training import files

MAX_OBJECTS = 100  # per image; COCO train has a few images with more

# COCO's 80 object categories (id, name) in tfds' label order: tfds numbers
# the categories of instances_*.json in the file's order, which is by id.
# Ids run 1-90 with gaps (the 2014 paper's list of 91 had 11 categories
# that were never annotated); result files must use these ids.
CATEGORIES = (
    (1, 'person'), (2, 'bicycle'), (3, 'car'), (4, 'motorcycle'),
    (5, 'airplane'), (6, 'bus'), (7, 'train'), (8, 'truck'), (9, 'boat'),
    (10, 'traffic light'), (11, 'fire hydrant'), (13, 'stop sign'),
    (14, 'parking meter'), (15, 'bench'), (16, 'bird'), (17, 'cat'),
    (18, 'dog'), (19, 'horse'), (20, 'sheep'), (21, 'cow'), (22, 'elephant'),
    (23, 'bear'), (24, 'zebra'), (25, 'giraffe'), (27, 'backpack'),
    (28, 'umbrella'), (31, 'handbag'), (32, 'tie'), (33, 'suitcase'),
    (34, 'frisbee'), (35, 'skis'), (36, 'snowboard'), (37, 'sports ball'),
    (38, 'kite'), (39, 'baseball bat'), (40, 'baseball glove'),
    (41, 'skateboard'), (42, 'surfboard'), (43, 'tennis racket'),
    (44, 'bottle'), (46, 'wine glass'), (47, 'cup'), (48, 'fork'),
    (49, 'knife'), (50, 'spoon'), (51, 'bowl'), (52, 'banana'), (53, 'apple'),
    (54, 'sandwich'), (55, 'orange'), (56, 'broccoli'), (57, 'carrot'),
    (58, 'hot dog'), (59, 'pizza'), (60, 'donut'), (61, 'cake'),
    (62, 'chair'), (63, 'couch'), (64, 'potted plant'), (65, 'bed'),
    (67, 'dining table'), (70, 'toilet'), (72, 'tv'), (73, 'laptop'),
    (74, 'mouse'), (75, 'remote'), (76, 'keyboard'), (77, 'cell phone'),
    (78, 'microwave'), (79, 'oven'), (80, 'toaster'), (81, 'sink'),
    (82, 'refrigerator'), (84, 'book'), (85, 'clock'), (86, 'vase'),
    (87, 'scissors'), (88, 'teddy bear'), (89, 'hair drier'),
    (90, 'toothbrush'))


def resize_longer_side(image, size: int):
  """(uint8 image in [0, 1] resized so its longer side is ``size``, its new
  (height, width)); as ImageNet's preprocessing converts and resizes."""
  import tensorflow as tf
  shape = tf.cast(tf.shape(image)[:2], tf.float32)
  scale = size / tf.reduce_max(shape)
  new_shape = tf.cast(tf.round(shape * scale), tf.int32)
  return imagenet.resize_unit_range(image, new_shape), new_shape


def flip_left_right(image, boxes, width):
  """Mirrors an image and its (x1, y1, x2, y2) pixel boxes (x -> width - x)."""
  import tensorflow as tf
  x1, y1, x2, y2 = tf.unstack(boxes, axis=-1)
  return (tf.image.flip_left_right(image),
          tf.stack([width - x2, y1, width - x1, y2], axis=-1))


def _pixel_boxes(normalized, height, width):
  """tfds' normalized (ymin, xmin, ymax, xmax) -> (x1, y1, x2, y2) pixels."""
  import tensorflow as tf
  ymin, xmin, ymax, xmax = tf.unstack(normalized, axis=-1)
  height, width = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
  return tf.stack([xmin * width, ymin * height, xmax * width, ymax * height], -1)


def _pad_objects(boxes, classes):
  import tensorflow as tf
  boxes, classes = boxes[:MAX_OBJECTS], classes[:MAX_OBJECTS]
  extra = MAX_OBJECTS - tf.shape(classes)[0]
  return (tf.pad(boxes, [[0, extra], [0, 0]]),
          tf.pad(classes, [[0, extra]]))


def _objects(example, fields=('bbox', 'is_crowd', 'label')) -> dict:
  """The example's object fields, cut to one length: they agree in real
  data, but tfds' mock data draws each length on its own."""
  import tensorflow as tf
  objects = example['objects']
  count = tf.reduce_min([tf.shape(objects[k])[0] for k in fields])
  return {k: objects[k][:count] for k in fields}


def preprocess(example, image_size: int, seed=None) -> dict:
  """A tfds `coco/2017` example as the detector takes it: resized so that
  its longer side is ``image_size``, flipped at random (training: when
  ``seed`` is given), scaled as the backbone's inputs, padded to a square."""
  import tensorflow as tf
  image, new_shape = resize_longer_side(example['image'], image_size)
  height, width = new_shape[0], new_shape[1]
  objects = _objects(example)
  boxes = _pixel_boxes(objects['bbox'], height, width)
  classes = tf.where(objects['is_crowd'], 0,
                     tf.cast(objects['label'], tf.int32) + 1)
  if seed is not None:
    flip = tf.random.stateless_uniform([], seed) < 0.5
    float_width = tf.cast(width, tf.float32)
    image, boxes = tf.cond(
        flip, lambda: flip_left_right(image, boxes, float_width),
        lambda: (image, boxes))
  # The backbone's own input scale: the detector fine-tunes a ResNet-50
  # trained with Inception preprocessing (data/imagenet.py).
  image = imagenet.inception_range(image)
  # Padding after scaling: zero is mid-grey, as the convolutions' own zero
  # padding reads beyond the image.
  image = tf.image.pad_to_bounding_box(image, 0, 0, image_size, image_size)
  boxes, classes = _pad_objects(boxes, classes)
  return {'image': image, 'boxes': boxes, 'classes': classes,
          'image_id': tf.cast(example['image/id'], tf.int32),
          # What undoes the resize: the evaluation reports original pixels.
          'original_size': tf.shape(example['image'])[:2],
          'resized_size': new_shape}


def _annotations(example) -> dict:
  """An eval example's ground truth in COCO's terms: the original image's
  size and pixels, tfds' labels (0..79) and crowd flags, COCO's areas."""
  import tensorflow as tf
  size = tf.shape(example['image'])[:2]
  objects = _objects(example, ('bbox', 'is_crowd', 'label', 'area'))
  return {'image_id': example['image/id'], 'original_size': size,
          'boxes': _pixel_boxes(objects['bbox'], size[0], size[1]),
          'labels': objects['label'], 'is_crowd': objects['is_crowd'],
          'areas': objects['area']}


class CocoDataset:
  """`coco/2017`: train split for training, validation (minival) for eval."""
  name = 'coco'
  train_split = 'train'
  eval_split = 'validation'

  def __init__(self, config):
    import tensorflow_datasets as tfds
    self._seed = config.seed
    self._batch_size = config.batch_size  # global
    self._eval_batch_size = config.eval_batch_size
    data_dir = config.get('data_dir')
    self._builder = tfds.builder('coco/2017', data_dir=data_dir and
                                 os.fspath(files.path(data_dir)))
    # data's split sizes say "not prepared" as the classification sets do.
    split_size = tfds_stream.split_size
    self.num_train_examples = split_size(self._builder, self.train_split)
    self.num_eval_examples = split_size(self._builder, self.eval_split)
    self.num_classes = len(CATEGORIES)
    self.category_ids = tuple(i for i, _ in CATEGORIES)
    self.category_names = tuple(name for _, name in CATEGORIES)
    size = config.image_size
    self.image_shape = (size, size, 3)
    self.max_objects = MAX_OBJECTS
    self._num_local_train_examples = None  # this process's share, when needed

  def _read(self, split, shuffle_files: bool, shuffle_seed: int = 0):
    """The examples of ``split`` (a split name or a tfds split of one)."""
    import tensorflow as tf
    import tensorflow_datasets as tfds
    options = tf.data.Options()
    options.deterministic = True
    read_config = tfds.ReadConfig(shuffle_seed=shuffle_seed, options=options)
    return self._builder.as_dataset(split=split, shuffle_files=shuffle_files,
                                    read_config=read_config)

  def train_batches(self, start_step: int) -> Iterator[Batch]:
    """As the classification sets' (tfds_stream.epoch_stream_batches): a resume
    skips at most one epoch."""
    import tensorflow as tf
    import tensorflow_datasets as tfds
    share = tfds.split_for_jax_process(self.train_split)
    if self._num_local_train_examples is None:
      self._num_local_train_examples = tfds_stream.split_size(self._builder,
                                                              share)
    process_seed = tf.constant([self._seed, jax.process_index()],
                               tf.int64)

    def train_example(position, example):
      seed = tf.random.experimental.stateless_fold_in(process_seed, position)
      example = preprocess(example, self.image_shape[0], seed)
      return {k: example[k] for k in ('image', 'boxes', 'classes')}
    return tfds_stream.epoch_stream_batches(
        lambda shuffle_seed: self._read(share, True, shuffle_seed),
        self._num_local_train_examples,
        self._batch_size // jax.process_count(), start_step,
        self._seed, min(1000, self.num_train_examples), train_example)

  def eval_batches(self) -> Iterator[Batch]:
    """This process's share of the eval split in full batches, the last
    ones padded with repeats (mask 0); as many on every process."""
    import tensorflow as tf
    import tensorflow_datasets as tfds
    batch_size = batching.local_batch_size(self._eval_batch_size)
    dataset = self._read(tfds.split_for_jax_process(self.eval_split),
                         shuffle_files=False)
    dataset = dataset.map(
        lambda example: preprocess(example, self.image_shape[0]),
        num_parallel_calls=tf.data.AUTOTUNE)
    batches = tfds.as_numpy(dataset.batch(batch_size).prefetch(
        tf.data.AUTOTUNE))
    return batching.padded_eval_batches(
        batches, batch_size,
        batching.num_eval_batches(self.num_eval_examples, batch_size))

  def ground_truth(self) -> dict:
    """COCO instances-format ground truth of the whole eval split (all
    processes' shares) in COCO's terms (see the module docstring)."""
    import tensorflow as tf
    import tensorflow_datasets as tfds
    dataset = self._read(self.eval_split, shuffle_files=False).map(
        _annotations, num_parallel_calls=tf.data.AUTOTUNE)
    images = list(tfds.as_numpy(dataset))
    category_ids = np.asarray(self.category_ids)
    column = lambda key: [image[key] for image in images]
    return detection_evaluation.ground_truth_json(
        column('image_id'), column('original_size'), column('boxes'),
        [category_ids[labels] for labels in column('labels')],
        dict(CATEGORIES), is_crowd=column('is_crowd'), areas=column('areas'))
