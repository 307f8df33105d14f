"""The scales the experiments run at: configs, training lengths, every grid.

``smoke`` (seconds, for tests), ``small`` (this 2-core machine, built-in digits
data; the committed results) and ``full`` (the paper's CIFAR/ImageNet configs,
for accelerators with the prepared data). A script's grid at a scale (B values,
models, seeds) is a field of `Scale`, so that every script reads the same one.
"""

import dataclasses
from typing import Any

@dataclasses.dataclass(frozen=True)
class DetectionGrid:
  """Table 2's detector runs at one scale."""
  config: str                       # the detector's config (file[:args])
  n_values: tuple[int, ...]         # images per SGD step = normalization batch
  seeds: tuple[int, ...]            # at N=2; one seed at the other N
  images: int                       # images seen in training, whatever N
  learning_rate_per_image: float
  pretrain_steps: int | None        # the digits classifier's (None: ImageNet's)
  overrides: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Scale:
  """How the experiments run at one scale: configs, overrides, every grid."""
  name: str
  config: str                       # config file, relative to the repository
  overrides: dict[str, Any]         # applied to every run; 'dataset' is the test-bed
  b_values: tuple[int, ...]         # the normalization batches of the B sweeps
  renorm_warmup_fraction: float     # Batch Renorm clip ramp, as a share of steps
  imagenet_config: str              # Table 1's config
  imagenet_overrides: dict[str, Any]
  # Fig. 5: (depths at width 1, widths at the smallest depth), and its B values.
  fig5_models: tuple[tuple[int, ...], tuple[int, ...]]
  fig5_b_values: tuple[int, ...]
  # Table 1: its B columns, and the examples each run sees (None: the config's).
  table1_b_values: tuple[int, ...]
  table1_examples: int | None
  # Table 2 analog: the B of pre-training and of fine-tuning, (source, target).
  transfer_pretrain_b: int
  transfer_b_values: tuple[int, ...]
  transfer_datasets: tuple[str, str]
  estimate_every_ks: tuple[int, ...]   # the k values of estimate_every
  detection: DetectionGrid
  more_fig2_datasets: tuple[str, ...] = ()  # Fig. 2's panels besides the test-bed

  @property
  def dataset(self) -> str:
    """The test-bed: what Fig. 1, 3, 4, 5 and the seeds train on."""
    return self.overrides['dataset']


SMALL_STEPS = 600

SCALES = {
    # Enough to exercise every code path in seconds; the numbers mean nothing.
    'smoke': Scale(
        'smoke', 'configs/digits.py',
        dict(dataset='digits', stem_strides=1, num_train_steps=3,
             batch_size=16, eval_batch_size=64, checkpoint_every_steps=3,
             eval_every_steps=1000, log_every_steps=1,
             offline_estimation_steps=2),
        (2, 4), 0.5, 'configs/digits.py',
        dict(dataset='digits', stem_strides=1, eval_batch_size=64,
             checkpoint_every_steps=1000, eval_every_steps=1000,
             log_every_steps=1, offline_estimation_steps=2),
        fig5_models=((8, 14), (1, 2)), fig5_b_values=(2,),
        table1_b_values=(2,), table1_examples=2 * 8 * 2,
        transfer_pretrain_b=2,  # batch 16
        transfer_b_values=(2,), transfer_datasets=('digits', 'digits'),
        estimate_every_ks=(1, 2),
        detection=DetectionGrid(
            'configs/detection.py', (2,), (0,), 32, 0.01, pretrain_steps=3,
            overrides=dict(num_eval_images=16, num_proposals=8,
                           rois_per_image=8, pre_nms_top_k=50,
                           warmup_steps=0, eval_batch_size=16))),
    # The built-in noisy digits at a size this 2-core machine runs in minutes.
    'small': Scale(
        'small', 'configs/digits.py',
        dict(dataset='noisy_digits', num_train_steps=SMALL_STEPS,
             checkpoint_every_steps=SMALL_STEPS, eval_every_steps=SMALL_STEPS,
             log_every_steps=100),
        (2, 4, 8, 16, 32, 64, 128), 1 / 3, 'configs/digits.py',
        dict(checkpoint_every_steps=1000, eval_every_steps=100_000,
             log_every_steps=100, offline_estimation_steps=300),
        # Reduced to run on 2 cores; B = 2 is the only B at which EMA
        # evaluation breaks down on the built-in data (see Fig. 2).
        fig5_models=((8, 14, 20), (1, 2)), fig5_b_values=(2, 4, 8),
        table1_b_values=(2, 4, 8, 16, 32), table1_examples=38_400,
        transfer_pretrain_b=128, transfer_b_values=(2, 4, 8),
        transfer_datasets=('digits', 'noisy_digits'),
        estimate_every_ks=(1, 2, 4, 8, 16),
        detection=DetectionGrid('configs/detection.py', (2, 4, 8), (0, 1, 2),
                                6000, 0.01, pretrain_steps=3000)),
    # The paper's setups; needs prepared tfds data and an accelerator.
    # CIFAR-100 is the paper's test-bed; Fig. 2 also has a CIFAR-10 panel.
    'full': Scale(
        'full', 'configs/cifar.py', dict(dataset='cifar100'),
        (2, 4, 8, 16, 32, 64, 128), 0.04, 'configs/imagenet.py', {},
        fig5_models=((20, 56, 110, 254), (1, 2, 4, 8)), fig5_b_values=(4, 8),
        table1_b_values=(2, 4, 8, 16, 32), table1_examples=None,
        transfer_pretrain_b=128, transfer_b_values=(2, 4, 8),
        transfer_datasets=('cifar100', 'cifar10'),
        estimate_every_ks=(1, 2, 4, 8, 16),
        detection=DetectionGrid('configs/detection.py:dataset=coco', (2, 4, 8),
                                (0, 1, 2), 64 * 118_287, 0.015 / 8,
                                pretrain_steps=None),
        more_fig2_datasets=('cifar10',)),
}



DEFAULT_SEEDS = (0, 1, 2)
