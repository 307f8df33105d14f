r"""The built-in default: a small ResNet v2 on `noisy_digits`, any normalization batch B.

    python -m evalnorm.main --config=configs/digits.py --workdir=/tmp/digits_b2 \
        --config.norm_batch_size=2

Runtime: about 2.5 minutes on 2 CPU cores (3000 steps of batch 128).
Expected result at B=2 (three seeds, see README): EMA evaluation ~77-83% top-1,
EvalNorm (estimated online) ~94%, rule of thumb 1/B^2 ~93-94%; at B=128 every mode
~95%. Variants: `configs/digits.py:dataset=digits` (plain 8x8 digits, where all
modes reach ~98%), `configs/digits.py:norm_batch_size=4`.
"""

from evalnorm.training import config_lib


def get_config(arg: str | None = None):
  config = config_lib.base_config()
  config.dataset = 'noisy_digits'    # 'noisy_digits' (24x24, warped, re-lit, noisy) or 'digits' (8x8)
  config.model = 'resnet_v2_cifar'   # pre-activation ResNet with 3 stages
  config.depth = 8                   # 6n+2: one basic block per stage, 7 norm layers
  config.width = 1                   # filters 16/32/64 times this
  config.stem_strides = 2            # 24x24 -> 12x12 before the stages (keeps CPU steps fast)
  config.batch_size = 128            # global SGD batch
  config.eval_batch_size = 256       # global evaluation batch (a multiple of devices * B)
  config.norm_batch_size = 2         # B: examples per normalization group
  config.num_train_steps = 3000      # about 280 epochs of 1350 digits, each freshly warped
  config.learning_rate = 0.1         # peak SGD learning rate (cosine decay to 0)
  config.weight_decay = 5e-4         # decoupled L2 on every parameter
  config.checkpoint_every_steps = 1000
  config.eval_every_steps = 1000
  config.log_every_steps = 100
  return config_lib.override(config, arg)
