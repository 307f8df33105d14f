"""ImageNet (ILSVRC2012) through tensorflow-datasets, Inception preprocessing."""

from evalnorm.data.tfds_stream import TfdsDataset


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


def resize_unit_range(image, shape):
  """uint8 image -> float32 in [0, 1] resized to ``shape`` (height, width),
  slim's bilinear resize. The detector's COCO pipeline resizes with it too."""
  import tensorflow as tf
  image = tf.image.convert_image_dtype(image, tf.float32)
  return tf.image.resize(image, shape, method='bilinear')


def inception_range(image):
  """Inception preprocessing's pixel scale: [0, 1] -> [-1, 1].

  The one definition of what the ResNet-50 backbone's inputs are: ImageNet
  training and evaluation end with it, and so does the detector's COCO
  pipeline, whose backbone starts from that ImageNet model.
  """
  return (image - 0.5) * 2.0


def inception_train_image(jpeg, seed, image_size: int):
  """slim's preprocess_for_train (fast mode) of JPEG bytes, in [-1, 1]."""
  import tensorflow as tf
  crop_seed, flip_seed, color_seed = tf.unstack(
      tf.random.experimental.stateless_split(seed, 3))
  window = inception_crop_window(tf.image.extract_jpeg_shape(jpeg), crop_seed)
  # Decoding only the window is slim's decode-then-slice, cheaper.
  image = tf.image.decode_and_crop_jpeg(jpeg, window, channels=3)
  image = resize_unit_range(image, [image_size, image_size])
  image = tf.image.stateless_random_flip_left_right(image, flip_seed)
  image = inception_distort_color(image, color_seed)
  return inception_range(image)


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
  return inception_range(resize_unit_range(image, [image_size, image_size]))


class ImageNetDataset(TfdsDataset):
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
