"""The classifiers of evalnorm/models.py and their norm slot.

Shapes only (jax.eval_shape): nothing here computes a network.
"""

import functools

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from evalnorm import models
from evalnorm.layers import EvalNorm
from evalnorm.training import builders, finetune

from training_helpers import small_digits_config


def variable_shapes(model, image_shape, batch=2):
  return jax.eval_shape(functools.partial(model.init, train=False),
                        jax.random.PRNGKey(0),
                        jax.ShapeDtypeStruct((batch, *image_shape), jnp.float32))


def call_order(model, image_shape):
  """The paths of the modules ``model`` applies, in the order it applies them
  (a module's own path once, before those it calls)."""
  order = []

  def record(next_fun, args, kwargs, context):
    if context.method_name == '__call__' and context.module.path:
      order.append('/'.join(context.module.path))
    return next_fun(*args, **kwargs)
  with nn.intercept_methods(record):
    variable_shapes(model, image_shape)
  return order


def conv_kernels(params):
  """(path, shape) of every convolution kernel, in the order of the paths."""
  flat = flax.traverse_util.flatten_dict(params, sep='/')
  return sorted((path, value.shape) for path, value in flat.items()
                if path.endswith('kernel') and len(value.shape) == 4)


@pytest.mark.parametrize('depth,width', [(8, 1), (20, 2)])
def test_cifar_resnet_v2_depth_counts_weight_layers(depth, width):
  """ResNet-{depth}: stem + (depth - 2) block convolutions + the head, in
  3 stages of (depth - 2) / 6 blocks with 16/32/64 x width filters."""
  model = models.cifar_resnet_v2(depth, width, 10, functools.partial(EvalNorm))
  params = variable_shapes(model, (32, 32, 3))['params']
  blocks = (depth - 2) // 6
  assert sorted(params) == sorted(
      ['stem', 'final_norm', 'head'] +
      [f'stage{s}_block{b}' for s in (1, 2, 3) for b in range(blocks)])
  kernels = [(p, s) for p, s in conv_kernels(params) if 'projection' not in p]
  assert len(kernels) + 1 == depth  # + the head (a Dense layer)
  for path, shape in kernels:
    if path.startswith('stage'):
      stage = int(path[len('stage')])
      assert shape[:2] == (3, 3) and shape[-1] == 16 * width * 2**(stage - 1)
  assert params['head']['kernel'].shape == (64 * width, 10)


def test_resnet50_v2_is_fifty_layers_of_bottlenecks():
  model = models.resnet50_v2(1000, functools.partial(EvalNorm))
  params = variable_shapes(model, (64, 64, 3), batch=1)['params']
  for stage, blocks in zip((1, 2, 3, 4), (3, 4, 6, 3)):
    assert {k for k in params if k.startswith(f'stage{stage}_')} == {
        f'stage{stage}_block{b}' for b in range(blocks)}
  kernels = [(p, s) for p, s in conv_kernels(params) if 'projection' not in p]
  assert len(kernels) + 1 == 50
  assert kernels[0] == ('stage1_block0/conv1/kernel', (1, 1, 64, 64))
  assert params['stage4_block2']['conv3']['kernel'].shape == (1, 1, 512, 2048)
  assert params['stem']['kernel'].shape == (7, 7, 3, 64)
  assert params['head']['kernel'].shape == (2048, 1000)


def test_pre_activation_order():
  """ResNet v2: the stem is a bare convolution; each block normalizes (and
  ReLUs) before each convolution, the projection takes the pre-activation,
  and a final norm follows the last block."""
  model = models.cifar_resnet_v2(8, 1, 10, functools.partial(EvalNorm))
  order = call_order(model, (8, 8, 1))
  block = ['norm1', 'conv1', 'norm2', 'conv2']
  expected = ['stem']
  for stage in (1, 2, 3):
    name = f'stage{stage}_block0'
    steps = block if stage == 1 else ['norm1', 'projection'] + block[1:]
    expected += [name] + [f'{name}/{step}' for step in steps]
  assert order == expected + ['final_norm', 'head']


def test_bad_depth_names_the_allowed_depths():
  with pytest.raises(ValueError, match=r'depth=21 is not 6n\+2'):
    models.cifar_resnet_v2(21, 1, 10, functools.partial(EvalNorm))


NORM_LAYERS = {('final_norm',)} | {(f'stage{s}_block0', f'norm{i}')
                                   for s in (1, 2, 3) for i in (1, 2)}


@pytest.mark.parametrize('norm', sorted(builders.NORMS))
def test_every_norm_fills_the_slot_and_is_found_by_type(norm):
  config = small_digits_config(norm=norm)
  model = builders.build_model(config, 10)
  assert finetune.norm_layer_paths(model, 2, (8, 8, 1)) == NORM_LAYERS
  shapes = variable_shapes(model, (8, 8, 1))
  assert set(shapes['params']['stage1_block0']) >= {'conv1', 'norm1'}


def test_norm_layers_are_found_whatever_their_names():
  """The fine-tuning start resets norm layers by type, not by a naming rule."""
  class Odd(nn.Module):
    norm: models.ModuleDef

    @nn.compact
    def __call__(self, x, train=True):
      x = nn.Dense(4, name='dense')(x.reshape(len(x), -1))
      x = self.norm(use_running_average=not train, name='bn_first')(x)
      x = nn.Dense(4, name='normalizer')(x)  # named like one, is not one
      return self.norm(use_running_average=not train)(x)  # auto-named
  model = Odd(functools.partial(nn.BatchNorm, momentum=0.9))
  assert finetune.norm_layer_paths(model, 2, (3, 3, 1)) == {
      ('bn_first',), ('BatchNorm_0',)}
