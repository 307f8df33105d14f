r"""The paper's CIFAR setup: ResNet-20 v2 family, one SGD batch of 128 cut into groups of B.

    CUDA_VISIBLE_DEVICES=0 python -m evalnorm.main \
        --config=configs/cifar.py:dataset=cifar100,depth=20,width=1,norm_batch_size=2 \
        --workdir=/tmp/cifar100_r20_b2 [--config.data_dir=~/tensorflow_datasets]

Prepare the data once on a machine with internet: `tfds build cifar100` (and
cifar10). Arguments after the colon: dataset (cifar10, cifar100; the paper's
test-bed is CIFAR-100), depth (20, 56, 110, 254), width (1, 2, 4, 8),
norm_batch_size (B = 2..128), norm, seed.
One device: the paper's setup is one SGD batch of 128 cut into groups of B,
and pmap would split the batch over every device the process sees (on 8 GPUs,
16 a device, so B >= 32 fails validation); hence CUDA_VISIBLE_DEVICES=0 above.
`python -m experiments.run_all --scale full` gives each CIFAR run one GPU.
Offline estimation (`evalnorm.estimate`) runs one epoch of training batches.
Runtime: 128k steps of batch 128 (ResNet-20: a few hours on one GPU).
Expected result: the paper gives its CIFAR results as plots (Fig. 2-5): EMA
evaluation degrades as B falls, and EvalNorm recovers much of the loss.
"""

from evalnorm import data
from evalnorm.training import config_lib


def get_config(arg: str | None = None):
  config = config_lib.base_config()
  config.dataset = 'cifar100'        # the paper's test-bed; or 'cifar10' (tensorflow-datasets)
  config.model = 'resnet_v2_cifar'   # pre-activation ResNet, 3 stages of basic blocks
  config.depth = 20                  # 6n+2: 20, 56, 110 or 254
  config.width = 1                   # filters 16/32/64 times 1, 2, 4 or 8
  config.stem_strides = 1            # 32x32 inputs keep full resolution
  config.batch_size = 128            # one SGD batch ...
  config.norm_batch_size = 2         # ... cut into normalization groups of B (2..128)
  config.eval_batch_size = 256       # evaluation batch (a multiple of B)
  config.num_train_steps = 128_000   # as in the paper
  config.learning_rate = 0.1         # cosine decay to 0
  config.momentum = 0.9              # SGD momentum
  config.weight_decay = 1e-4         # as in the ResNet v2 paper
  config.bn_momentum = 0.99          # EMA momentum (not in the paper: flax's default)
  config.checkpoint_every_steps = 5000
  config.eval_every_steps = 10_000
  config.log_every_steps = 500
  # One epoch: offline estimation "requires a pass through data" (the paper).
  config.offline_estimation_steps = data.one_epoch_of_steps(
      config, 'cifar100')
  return config_lib.override(config, arg)
