r"""The paper's CIFAR setup: ResNet-20 v2 family, one SGD batch of 128 cut into groups of B.

    python -m evalnorm.main --config=configs/cifar.py:depth=20,width=1,norm_batch_size=2 \
        --workdir=/tmp/cifar10_r20_b2 [--config.data_dir=~/tensorflow_datasets]

Prepare the data once on a machine with internet: `tfds build cifar10` (or cifar100).
Arguments after the colon: depth (20, 56, 110, 254), width (1, 2, 4, 8), dataset
(cifar10, cifar100), norm_batch_size (B = 2..128), norm, seed.
Runtime: 128k steps, roughly 3-4 hours for ResNet-20 on one modern GPU (not
measured here: this project's machines have no CIFAR data).
Expected result (paper, Fig. 2, CIFAR-10 ResNet-20 v2): at B=128 about 8% test
error in every mode; at B=2 EMA evaluation degrades sharply while EvalNorm stays
within about a point of the B=128 model.
"""

from evalnorm import config_lib


def get_config(arg: str | None = None):
  config = config_lib.base_config()
  config.dataset = 'cifar10'         # 'cifar10' or 'cifar100' (tensorflow-datasets)
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
  config.bn_momentum = 0.99          # EMA momentum
  config.checkpoint_every_steps = 5000
  config.eval_every_steps = 10_000
  config.log_every_steps = 500
  return config_lib.override(config, arg)
