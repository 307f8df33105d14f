"""CIFAR-10/100 through tensorflow-datasets."""

from evalnorm.data.tfds_stream import TfdsDataset


# Per-channel statistics of the training images in [0, 1] (the true pixel
# standard deviations, not the widely copied (0.2023, 0.1994, 0.2010)).
_CIFAR_MEAN_STD = {
    'cifar10': ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    'cifar100': ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
_CIFAR_PADDING = 4


class CifarDataset(TfdsDataset):
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
