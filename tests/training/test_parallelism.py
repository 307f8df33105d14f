"""pmap and jax.jit + shard_map on a device mesh: the same computation.

Both run the same per-device programs (statistics per device or per group
of B, gradients averaged with ``lax.pmean``), so over 8 host devices they
agree to float round-off. Measured over 10 steps under default flags, AVX2,
SSE4_2 and Eigen kernels: losses and weights to the last bit, alpha/beta to
1.9e-9 (one float32 step at 0.03: the separate alpha/beta step's pmean is
summed in another order) and the moving averages to 3.7e-8. The tolerances
below are a few times those, so that another CPU's reduction order passes
and a missing or extra average over devices does not. Also: a plain
``jax.jit`` of EvalNorm on a batch sharded over devices computes group
statistics without a collective.
"""

import functools
import os
import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import evalnorm
from evalnorm import data
from evalnorm.training import builders, evaluation, parallel, trainer

from training_helpers import fresh_state, small_digits_config

STEPS = 10
PATHS = (parallel.Pmap, parallel.ShardMap)


def train(devices, estimation: str, config):
  """(per-step losses, host state) of STEPS steps, estimating every step."""
  dataset, _, host = fresh_state(config, total_steps=STEPS)
  programs = trainer.TrainPrograms(trainer.classifier_forward,
                                   devices=devices, estimation=estimation)
  state = devices.replicate(host)
  batches = dataset.train_batches(0)
  losses = []
  for _ in range(STEPS):
    state, metrics = programs(state, devices.shard(next(batches)), True)
    losses.append(float(devices.to_host(metrics)['loss']))
  return losses, devices.to_host(state)


def assert_trees_close(got, want, atol):
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=0,
                                 atol=atol), got, want)


@pytest.fixture(scope='module', params=[
    'separate', pytest.param('fused', marks=pytest.mark.slow)])
def both_paths(request):
  config = small_digits_config()
  return {path.name: train(path(), request.param, config) for path in PATHS}


def test_shard_map_trains_as_pmap(both_paths):
  (losses, state), (mesh_losses, mesh_state) = (both_paths['pmap'],
                                                 both_paths['shard_map'])
  np.testing.assert_allclose(mesh_losses, losses, rtol=1e-6)
  assert_trees_close(mesh_state.params, state.params, atol=1e-7)
  assert_trees_close(mesh_state.evalnorm, state.evalnorm, atol=1e-8)
  assert_trees_close(mesh_state.batch_stats, state.batch_stats, atol=1e-6)
  assert int(mesh_state.step) == STEPS


def test_every_evaluation_mode_agrees(both_paths):
  _, state = both_paths['pmap']
  config = small_digits_config()
  dataset = data.make_dataset(config)
  results = {}
  for path in PATHS:
    model = builders.build_model(config, dataset.num_classes)
    evaluator = evaluation.Evaluator(
        model, model, evaluation.ModeSettings.from_config(config, True),
        devices=path())
    results[path.name] = evaluator(state.params, evaluator.modes(state),
                                   dataset)
  assert set(results['shard_map']) == set(results['pmap'])
  for mode, metrics in results['pmap'].items():
    got = results['shard_map'][mode]
    assert (got['top1'], got['top5']) == (metrics['top1'], metrics['top5'])
    assert got['loss'] == pytest.approx(metrics['loss'], rel=1e-6), mode


def test_a_pmap_checkpoint_resumes_on_the_mesh(trained_run, tmp_path):
  """The trained run (pmap, checkpoints at 10 and 20) resumed from step 10
  with parallelism='shard_map' ends where it ended."""
  config, workdir, expected = trained_run
  resumed = str(tmp_path / 'resumed')
  shutil.copytree(workdir, resumed)
  shutil.rmtree(os.path.join(resumed, 'checkpoints', '20'))
  os.remove(os.path.join(resumed, 'eval.json'))
  config = config.copy_and_resolve_references()
  config.parallelism = 'shard_map'
  got = trainer.train_and_evaluate(config, resumed)
  for mode, metrics in expected['eval'].items():
    assert got['eval'][mode]['loss'] == pytest.approx(metrics['loss'],
                                                      abs=1e-5), mode
  for layer, values in expected['alpha_beta'].items():
    assert got['alpha_beta'][layer] == pytest.approx(values, abs=1e-6)


# The layer itself under a plain jax.jit whose batch is sharded over devices.


class Net(nn.Module):
  group_size: int | None

  @nn.compact
  def __call__(self, x):
    x = nn.Dense(16)(x)
    # Frozen moving averages: what the call computes is the normalization
    # alone (their update would average every group, one all-reduce of C
    # values, as the pmap step's pmean of batch_stats does).
    return evalnorm.EvalNorm(use_running_average=False,
                             group_size=self.group_size,
                             freeze_batch_stats=True)(x)


def compiled_training_call(group_size: int | None) -> str:
  """The optimized HLO of a training call on 64 examples sharded over 8
  devices (8 a device)."""
  mesh = jax.make_mesh((8,), ('data',))
  x = jax.device_put(jnp.ones((64, 4)), NamedSharding(mesh, P('data')))
  model = Net(group_size)
  variables = model.init(jax.random.key(0), x)
  return jax.jit(model.apply).lower(variables, x).compile().as_text()


def collectives(hlo: str) -> list[str]:
  return [op for op in ('all-reduce', 'all-gather', 'reduce-scatter',
                        'all-to-all', 'collective-permute') if op in hlo]


@pytest.mark.parametrize('group_size', [2, 8])
def test_groups_within_a_device_need_no_collective_under_jit(group_size):
  assert collectives(compiled_training_call(group_size)) == []


def test_the_whole_sharded_batch_is_one_group_under_jit():
  """group_size=None under jit: the global batch, as synchronized BN."""
  assert 'all-reduce' in collectives(compiled_training_call(None))


def test_axis_name_needs_shard_map_or_pmap():
  x = jnp.ones((8, 4))
  layer = evalnorm.EvalNorm(use_running_average=False, axis_name='data')
  variables = layer.init(jax.random.key(0), x)
  with pytest.raises(NameError, match='unbound axis name: data'):
    jax.jit(functools.partial(layer.apply, mutable=['batch_stats']))(
        variables, x)
