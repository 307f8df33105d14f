"""EvalNorm swapped into training programs written for nn.BatchNorm.

The program here is written the way flax's ImageNet example writes one: a
ResNet whose norm slot is ``partial(nn.BatchNorm, use_running_average=not
train, momentum=0.9, epsilon=1e-5, axis_name='batch')``, a train state that
keeps only ``params`` and ``batch_stats`` of what ``init`` returned, a pmapped
train step that makes ``batch_stats`` mutable and an eval step with
``mutable=False``. The only change is the class in the norm slot.
"""

import functools
import re
import warnings
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import jax_utils, traverse_util
from flax.training import train_state

import evalnorm
from readme import readme_text

NUM_DEVICES = 8
PER_DEVICE = 4
STEPS = 5
WARNING = r"no 'evalnorm' collection, so it evaluates with its moving averages"


class ResNetBlock(nn.Module):
  filters: int
  norm: Any

  @nn.compact
  def __call__(self, x):
    y = nn.relu(self.norm()(nn.Conv(self.filters, (3, 3))(x)))
    y = self.norm(scale_init=nn.initializers.zeros)(
        nn.Conv(self.filters, (3, 3))(y))
    return nn.relu(x + y)


class ResNet(nn.Module):
  """flax's example ResNet, cut down; ``norm_cls`` is the one line a user edits."""
  norm_cls: Any = nn.BatchNorm
  axis_name: str | None = 'batch'

  @nn.compact
  def __call__(self, x, train: bool = True):
    norm = functools.partial(self.norm_cls, use_running_average=not train,
                             momentum=0.9, epsilon=1e-5,
                             axis_name=self.axis_name)
    x = nn.relu(norm(name='bn_init')(nn.Conv(8, (3, 3), name='conv_init')(x)))
    for _ in range(2):
      x = ResNetBlock(8, norm)(x)
    return nn.Dense(10)(jnp.mean(x, axis=(1, 2)))


class TrainState(train_state.TrainState):
  batch_stats: Any


def create_train_state(model, x):
  variables = model.init(jax.random.key(0), x, train=False)
  return TrainState.create(apply_fn=model.apply, params=variables['params'],
                           tx=optax.sgd(0.1, 0.9),
                           batch_stats=variables['batch_stats'])


def train_step(state, batch):
  def loss_fn(params):
    logits, new_model_state = state.apply_fn(
        {'params': params, 'batch_stats': state.batch_stats}, batch['image'],
        mutable=['batch_stats'])
    loss = optax.softmax_cross_entropy_with_integer_labels(
        logits, batch['label']).mean()
    return loss, new_model_state
  (loss, new_model_state), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(state.params)
  grads = jax.lax.pmean(grads, 'batch')
  new_state = state.apply_gradients(
      grads=grads, batch_stats=new_model_state['batch_stats'])
  return new_state, jax.lax.pmean(loss, 'batch')


def eval_step(state, batch):
  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  return state.apply_fn(variables, batch['image'], train=False, mutable=False)


def batches(seed=0):
  rng = np.random.default_rng(seed)
  while True:
    yield {'image': rng.normal(size=(NUM_DEVICES, PER_DEVICE, 6, 6, 3)
                               ).astype(np.float32),
           'label': rng.integers(0, 10, (NUM_DEVICES, PER_DEVICE))}


def run_program(norm_cls):
  """The BatchNorm program, unchanged but for ``norm_cls``: (losses, the
  final host state, eval logits)."""
  model = ResNet(norm_cls)
  data = batches()
  state = create_train_state(model, next(data)['image'][0])
  state = jax_utils.replicate(state, jax.local_devices()[:NUM_DEVICES])
  p_train = jax.pmap(train_step, axis_name='batch')
  p_eval = jax.pmap(eval_step, axis_name='batch')
  losses = []
  for _ in range(STEPS):
    state, loss = p_train(state, next(data))
    losses.append(np.asarray(loss))
  logits = np.asarray(p_eval(state, next(data)))
  return losses, jax.device_get(jax.tree.map(lambda v: v[0], state)), logits


def as_evalnorm_names(tree):
  """``tree`` with flax's auto-names BatchNorm_k as EvalNorm_k (the names
  the same layers get when the class in the slot is EvalNorm)."""
  flat = traverse_util.flatten_dict(tree)
  return traverse_util.unflatten_dict(
      {tuple(k.replace('BatchNorm_', 'EvalNorm_') for k in path): value
       for path, value in flat.items()})


def assert_trees_equal(got, want):
  jax.tree.map(np.testing.assert_array_equal, as_evalnorm_names(got),
               as_evalnorm_names(want))


@pytest.fixture(scope='module')
def batchnorm_run():
  return run_program(nn.BatchNorm)


@pytest.fixture(scope='module')
def evalnorm_run():
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    run = run_program(evalnorm.EvalNorm)
  return run, [str(w.message) for w in caught
               if issubclass(w.category, UserWarning)]


def test_evalnorm_in_a_batchnorm_program_trains_and_evaluates_as_batchnorm(
    batchnorm_run, evalnorm_run):
  (losses, state, logits), _ = evalnorm_run
  bn_losses, bn_state, bn_logits = batchnorm_run
  np.testing.assert_array_equal(losses, bn_losses)
  assert_trees_equal(state.batch_stats, bn_state.batch_stats)
  assert_trees_equal(state.params, bn_state.params)
  np.testing.assert_array_equal(logits, bn_logits)


def test_it_warns_once_a_program_naming_a_layer_and_the_remedy(evalnorm_run):
  _, messages = evalnorm_run
  about = [m for m in messages if "'evalnorm' collection" in m]
  # Once per traced program (the train step traces twice: its first state
  # is weakly typed), not once per layer or per step.
  assert 1 <= len(about) < STEPS and len(set(about)) == 1, messages
  assert "EvalNorm layer '/bn_init'" in about[0]
  assert 'evalnorm.calibrate' in about[0] and 'init returns' in about[0]


def test_readme_quotes_the_warning(evalnorm_run):
  _, messages = evalnorm_run
  quoted = re.search(r"`(EvalNorm layer '/bn_init'.*?)`", readme_text(), re.S)
  assert quoted, 'README no longer quotes the warning'
  assert ' '.join(quoted.group(1).split()) in messages


def test_calibrate_gives_the_batchnorm_program_evalnorm_evaluation(
    evalnorm_run):
  (_, state, _), _ = evalnorm_run
  model = ResNet(evalnorm.EvalNorm)
  variables = evalnorm.batchnorm_to_evalnorm(
      {'params': state.params, 'batch_stats': state.batch_stats})
  images = (b['image'].reshape(-1, 6, 6, 3) for b in batches(seed=1))
  estimated = evalnorm.calibrate(
      functools.partial(model.apply, train=True), variables, images,
      group_size=NUM_DEVICES * PER_DEVICE, num_steps=20, axis_name='batch')
  alphas = [v for p, v in jax.tree_util.tree_leaves_with_path(estimated)]
  assert len(alphas) == 2 * 5 and all(0 <= float(a) <= 1 for a in alphas)
  x = next(batches(seed=2))['image'].reshape(-1, 6, 6, 3)
  ema = model.apply(variables, x, train=False)
  calibrated = model.apply({**variables, 'evalnorm': estimated}, x,
                           train=False)
  assert not np.allclose(ema, calibrated)
  # Without the collection the layers evaluate as the moving averages do.
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')
    np.testing.assert_array_equal(
        model.apply({k: variables[k] for k in ('params', 'batch_stats')}, x,
                    train=False), ema)


def test_a_collection_missing_some_layers_is_an_error_naming_one():
  x = jnp.ones((4, 6, 6, 3))
  model = ResNet(evalnorm.EvalNorm)
  variables = model.init(jax.random.key(0), x, train=False)
  partial = dict(variables['evalnorm'])
  del partial['bn_init']
  with pytest.raises(ValueError, match="'/bn_init' has no alpha/beta"):
    model.apply({**variables, 'evalnorm': partial}, x, train=False)


# Lifted transforms: nn.remat passes every collection on; nn.scan and nn.vmap
# with variable_axes that do not list 'evalnorm' hide it, and the layers
# inside then have none and behave as nn.BatchNorm. Either way the model
# trains and evaluates as the BatchNorm model does (alpha = beta = 0).


class Scanned(nn.Module):
  norm_cls: Any

  @nn.compact
  def __call__(self, x, train: bool):
    layer = nn.scan(
        lambda mdl, carry, _: (nn.relu(mdl.norm_cls(
            use_running_average=not train)(nn.Dense(4)(carry))), None),
        variable_axes={'params': 0, 'batch_stats': 0},
        split_rngs={'params': True}, length=2)
    return layer(self, x, None)[0]


class Rematerialized(nn.Module):
  norm_cls: Any

  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.remat(self.norm_cls)(use_running_average=not train)(x)
    return nn.Dense(4)(x)


class PerExample(nn.Module):
  norm_cls: Any

  @nn.compact
  def __call__(self, x, train: bool):
    vmapped = nn.vmap(
        lambda mdl, x: mdl.norm_cls(use_running_average=not train,
                                    axis_name='examples')(x),
        variable_axes={'params': None, 'batch_stats': None},
        split_rngs={'params': False}, axis_name='examples')
    return vmapped(self, x)


@pytest.mark.parametrize('model_cls, has_evalnorm', [
    (Scanned, False), (Rematerialized, True), (PerExample, False)])
def test_lifted_transforms_act_as_batchnorm(model_cls, has_evalnorm):
  x = jnp.asarray(np.random.default_rng(0).normal(size=(6, 4)), jnp.float32)
  outputs = {}
  for norm_cls in (nn.BatchNorm, evalnorm.EvalNorm):
    model = model_cls(norm_cls)
    with warnings.catch_warnings():
      warnings.simplefilter('ignore')
      variables = model.init(jax.random.key(0), x, train=False)
      y, updates = model.apply(variables, x, train=True,
                               mutable=['batch_stats'])
      evaluated = model.apply({**variables, **updates}, x, train=False)
    if norm_cls is evalnorm.EvalNorm:
      assert ('evalnorm' in variables) == has_evalnorm
    outputs[norm_cls] = {'y': y, 'updates': updates, 'evaluated': evaluated}
  assert_trees_equal(outputs[evalnorm.EvalNorm], outputs[nn.BatchNorm])


def test_frozen_statistics_in_a_batchnorm_program():
  """freeze_batch_stats: a train step with batch_stats immutable."""
  x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 6, 6, 3)),
                  jnp.float32)
  model = ResNet(functools.partial(evalnorm.EvalNorm, freeze_batch_stats=True),
                 axis_name=None)
  variables = model.init(jax.random.key(0), x, train=False)
  carried = {k: variables[k] for k in ('params', 'batch_stats')}
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')
    y = model.apply(carried, x, train=True, mutable=False)
  assert y.shape == (4, 10) and np.all(np.isfinite(y))
