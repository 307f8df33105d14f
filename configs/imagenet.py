r"""The paper's ImageNet setup: ResNet-50 v2, 8 devices, B examples per device.

    python -m evalnorm.main --config=configs/imagenet.py:norm_batch_size=2 \
        --workdir=/tmp/imagenet_b2 --config.data_dir=/data/tensorflow_datasets

Prepare the data once: put ILSVRC2012_img_{train,val}.tar in
<data_dir>/downloads/manual and run `tfds build imagenet2012 --data_dir=<data_dir>`.
The SGD batch is N = 8B (per-device batch B, one normalization group per
device, statistics never cross devices), learning rate 0.1 x N/256, cosine, 60
epochs, 229x229 crops. On fewer than 8 devices the same computation runs as
groups of B within each device's batch (same numbers, slower). On a TPU pod
slice add --config.distributed=true and start the same command on every host.
Preprocessing: Inception preprocessing as TF-slim's inception_preprocessing
does it (fast mode, its default; see evalnorm/data/imagenet.py). Training crops a
random box of 5-100% of the image area (at least 10% in effect: the box must
cover 10% of the whole image, min_object_covered) with aspect ratio 0.75-1.33
(100 attempts, else the whole image), resizes it bilinearly to 229x229, flips
it at random, shifts brightness by up to 32/255 and scales saturation by
0.5-1.5 (in a random order), and maps values to [-1, 1]; evaluation takes the
central 87.5% of each side, resized the same way.
Offline estimation (`evalnorm.estimate`) runs one epoch of training batches.
Runtime: at B=2 the 60 epochs are 4.8M steps of batch 16 (days on 8 GPUs).
Expected result (paper, Table 1, B=2): Prec@1 64.80 with EMA, 70.98 with EvalNorm.
"""

from evalnorm import data
from evalnorm.training import config_lib

NUM_DEVICES = 8  # the paper's setup: 8 workers, B examples each


def get_config(arg: str | None = None):
  config = config_lib.base_config()
  config.dataset = 'imagenet2012'    # tensorflow-datasets, manual download
  config.image_size = 229            # training and evaluation crop size, as in the paper
  config.model = 'resnet50_v2'       # pre-activation bottleneck ResNet-50
  config.norm_batch_size = 2         # B per device: 2, 4, 8, 16 or 32
  config.num_epochs = 60             # training length (overrides num_train_steps)
  config.momentum = 0.9              # SGD momentum
  config.weight_decay = 1e-4         # as in the ResNet papers
  config.bn_momentum = 0.99          # EMA momentum (not in the paper: flax's default)
  config.checkpoint_every_steps = 2000
  config.eval_every_steps = 50_000
  config.log_every_steps = 200
  # Derived from B by reference, so `:norm_batch_size=4` and
  # `--config.norm_batch_size=4` both keep the paper's N = 8B and lr 0.1 N/256.
  config.batch_size = config.get_ref('norm_batch_size') * NUM_DEVICES
  config.eval_batch_size = config.get_ref('batch_size') * 8
  config.learning_rate = config.get_ref('batch_size').to_float() * (0.1 / 256)
  # One epoch: offline estimation "requires a pass through data" (the paper).
  config.offline_estimation_steps = data.one_epoch_of_steps(
      config, 'imagenet2012')
  return config_lib.override(config, arg)
