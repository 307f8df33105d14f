"""The first steps of the quick start, for the golden-values test.

Kept importable on its own (no test framework) so that the same function can
be run on another checkout to compare numerics.
"""

import os
import sys

import jax

# The repository root, for running this file on its own from any checkout.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import digits as digits_config  # noqa: E402


def quick_start_run(num_steps: int, estimate: bool = True, steps=None,
                    norm_batch_size: int | None = None):
  """Per-step metrics and the final state of the quick start's first steps.

  Noisy digits, ResNet-8 v2, batch 128 over the local devices in groups of
  B = 2: the quick start's first ``num_steps`` steps, on one device as the
  quick start runs on a CPU, estimating alpha/beta every step (``estimate``)
  or never. ``steps``: the ``trainer.TrainPrograms`` to run (default: new ones); pass
  the same to two calls to compile once.

  Returns ({'loss': [...], 'grad_norm': [...], 'aux_loss': [...] when
  estimating}, host state after the last step).
  """
  from evalnorm import data  # after conftest set up the devices
  from evalnorm.training import builders, trainer
  config = digits_config.get_config()
  if norm_batch_size is not None:
    config.norm_batch_size = norm_batch_size
  dataset = data.make_dataset(config)
  model = builders.build_model(config, dataset.num_classes)
  state = trainer.create_train_state(
      model, jax.random.PRNGKey(config.seed),
      config.norm_batch_size, dataset.image_shape,
      trainer.Optimizers.from_config(config, config.num_train_steps))
  steps = steps or quick_start_steps()
  state = jax.tree.map(lambda v: v[None], state)
  batches = dataset.train_batches(0)
  names = ('loss', 'aux_loss', 'grad_norm') if estimate else ('loss', 'grad_norm')
  metrics = {name: [] for name in names}
  for _ in range(num_steps):
    batch = jax.tree.map(lambda v: v[None], next(batches))
    state, step_metrics = steps(state, batch, estimating=estimate)
    for name, values in metrics.items():
      values.append(float(step_metrics[name][0]))
  return metrics, jax.device_get(jax.tree.map(lambda v: v[0], state))


def quick_start_steps():
  """The train loop's programs on one device, as the quick start runs."""
  from evalnorm.training import parallel, trainer
  return trainer.TrainPrograms(trainer.classifier_forward,
                               devices=parallel.Pmap(jax.local_devices()[:1]))


if __name__ == '__main__':
  print(quick_start_run(int(sys.argv[1]))[0])
