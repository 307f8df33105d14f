"""The first steps of the quick start, for the golden-values test.

Kept importable on its own (no test framework) so that the same function can
be run on another checkout to compare numerics.
"""

import functools
import os
import sys

import jax

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'configs'))

import digits as digits_config  # noqa: E402


def quick_start_metrics(num_steps: int) -> dict[str, list[float]]:
  """Per-step loss, aux loss and gradient norm of the quick start's config.

  Noisy digits, ResNet-8 v2, batch 128 over the local devices in groups of
  B = 2, online estimation on: the quick start's first ``num_steps`` steps,
  on one device as the quick start runs on a CPU.
  """
  from evalnorm import data, train  # after conftest set up the devices
  config = digits_config.get_config()
  dataset = data.make_dataset(config)
  model = train.build_model(config, dataset.num_classes)
  state = train.create_train_state(config, model, dataset.image_shape,
                                   config.num_train_steps,
                                   jax.random.PRNGKey(config.seed))
  one_device = jax.local_devices()[:1]
  state = jax.tree.map(lambda v: v[None], state)
  step = jax.pmap(functools.partial(train.train_step, estimate=True),
                  axis_name=train.PMAP_AXIS, devices=one_device)
  batches = dataset.train_batches(0)
  metrics = {'loss': [], 'aux_loss': [], 'grad_norm': []}
  for _ in range(num_steps):
    batch = jax.tree.map(lambda v: v[None], next(batches))
    state, step_metrics = step(state, batch)
    for name, values in metrics.items():
      values.append(float(step_metrics[name][0]))
  return metrics


if __name__ == '__main__':
  print(quick_start_metrics(int(sys.argv[1])))
