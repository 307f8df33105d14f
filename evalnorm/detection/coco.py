"""COCO 2017 through tensorflow-datasets (`coco/2017`) for the detector.

Each image is resized so that its longer side is ``config.image_size`` (the
paper's 600), training images are flipped left-right at random with their
boxes, and the image is padded at the bottom and right to a fixed square so
that every batch has one static shape. Boxes are (x1, y1, x2, y2) pixels of
the resized image; classes are COCO's 80 labels + 1, with 0 for padding.
Crowd regions are left out of training targets and of the evaluation's
ground truth, and evaluation is in resized-image pixels: AP, AP50 and AP75
are those of the official protocol up to those two simplifications (IoU does
not change under resizing; COCOeval's crowd handling does).

Augmentation is keyed on (seed, process, position in the stream), as for the
classification datasets, so a resumed run sees the batches of an
uninterrupted one. TensorFlow is imported only here.
"""

import os
from typing import Iterator

import jax
import numpy as np

from evalnorm.data import imagenet, tfds_stream
from evalnorm.data.batching import Batch
from evalnorm.detection import evaluation as detection_evaluation
from evalnorm.training import files

MAX_OBJECTS = 100  # per image; COCO train has a few images with more


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


def preprocess(example, image_size: int, seed=None) -> dict:
  """A tfds `coco/2017` example as the detector takes it: resized so that
  its longer side is ``image_size``, flipped at random (training: when
  ``seed`` is given), scaled as the backbone's inputs, padded to a square."""
  import tensorflow as tf
  image, new_shape = resize_longer_side(example['image'], image_size)
  height, width = new_shape[0], new_shape[1]
  objects = example['objects']
  # The fields agree in length in real data; tfds' mock data draws each
  # length on its own, so the shortest one counts.
  count = tf.reduce_min([tf.shape(objects[k])[0]
                         for k in ('bbox', 'is_crowd', 'label')])
  boxes = _pixel_boxes(objects['bbox'][:count], height, width)
  classes = tf.where(objects['is_crowd'][:count], 0,
                     tf.cast(objects['label'][:count], tf.int32) + 1)
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
          'image_id': tf.cast(example['image/id'], tf.int32)}


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
    labels = self._builder.info.features['objects']['label']
    self.num_classes = labels.num_classes
    self.category_names = tuple(labels.names)
    size = config.image_size
    self.image_shape = (size, size, 3)
    self.max_objects = MAX_OBJECTS
    self._num_local_train_examples = None  # this process's share, when needed

  def _read(self, split: str, shuffle_files: bool, shuffle_seed: int = 0):
    import tensorflow as tf
    import tensorflow_datasets as tfds
    options = tf.data.Options()
    options.deterministic = True
    read_config = tfds.ReadConfig(shuffle_seed=shuffle_seed, options=options)
    return self._builder.as_dataset(
        split=tfds.split_for_jax_process(split), shuffle_files=shuffle_files,
        read_config=read_config)

  def train_batches(self, start_step: int) -> Iterator[Batch]:
    """As the classification sets' (tfds_stream.epoch_stream_batches): a resume
    skips at most one epoch."""
    import tensorflow as tf
    import tensorflow_datasets as tfds
    if self._num_local_train_examples is None:
      self._num_local_train_examples = tfds_stream.split_size(
          self._builder, tfds.split_for_jax_process(self.train_split))
    process_seed = tf.constant([self._seed, jax.process_index()],
                               tf.int64)

    def train_example(position, example):
      seed = tf.random.experimental.stateless_fold_in(process_seed, position)
      example = preprocess(example, self.image_shape[0], seed)
      del example['image_id']
      return example
    return tfds_stream.epoch_stream_batches(
        lambda shuffle_seed: self._read(self.train_split, True, shuffle_seed),
        self._num_local_train_examples,
        self._batch_size // jax.process_count(), start_step,
        self._seed, min(1000, self.num_train_examples), train_example)

  def _eval_examples(self):
    import tensorflow as tf
    import tensorflow_datasets as tfds
    batch_size = self._eval_batch_size // jax.process_count()
    dataset = self._read(self.eval_split, shuffle_files=False)
    dataset = dataset.map(
        lambda example: preprocess(example, self.image_shape[0]),
        num_parallel_calls=tf.data.AUTOTUNE)
    return tfds.as_numpy(dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE))

  def eval_batches(self) -> Iterator[Batch]:
    """Full batches; the last one padded with repeats (mask 0)."""
    batch_size = self._eval_batch_size // jax.process_count()
    first = None
    for batch in self._eval_examples():
      first = batch if first is None else first
      count = len(batch['image_id'])
      index = np.arange(batch_size)
      filler = {k: v[index % len(first['image_id'])] for k, v in first.items()}
      padded = {k: np.concatenate([v, filler[k][count:]])
                for k, v in batch.items()}
      padded['mask'] = (index < count).astype(np.float32)
      yield padded

  def ground_truth(self) -> dict:
    """COCO-format ground truth of the eval split, in resized-image pixels."""
    parts = [(b['image_id'], b['boxes'], b['classes'])
             for b in self._eval_examples()]
    image_ids, boxes, classes = (np.concatenate(p) for p in zip(*parts))
    return detection_evaluation.ground_truth_json(
        image_ids, boxes, classes, self.image_shape[:2], self.category_names)

