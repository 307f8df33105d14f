"""Training system: step isolation, device equivalence, resume, configs end to end."""

import functools
import hashlib
import logging
import os
import shutil
import subprocess
import sys

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import jax_utils

from evalnorm import calibration, data
from evalnorm.training import (builders, checkpoint, config_lib, finetune,
                               parallel, trainer)
from evalnorm.variables import mean_alpha_beta, set_alpha_beta

from training_helpers import (ROOT, fresh_state, logged_steps, read_eval,
                              small_digits_config)

from configs import cifar as cifar_config
from configs import imagenet as imagenet_config

def one_step(config, estimate, num_steps=1):
  """State after ``num_steps`` train steps on 8 devices, and the last metrics."""
  dataset, _, state = fresh_state(config)
  steps = trainer.TrainPrograms(trainer.classifier_forward)
  state = parallel.replicate(state)
  batches = dataset.train_batches(0)
  for _ in range(num_steps):
    state, metrics = steps(state, parallel.shard(next(batches)), estimate)
  return parallel.to_host(state), metrics


@pytest.mark.slow
def test_frozen_batch_stats_train_everything_else():
  config = small_digits_config()
  dataset, _, state = fresh_state(config)
  steps = trainer.TrainPrograms(trainer.classifier_forward,
                                update_batch_stats=False)
  new_state, _ = steps(parallel.replicate(state),
                       parallel.shard(next(dataset.train_batches(0))), True)
  new_state = parallel.to_host(new_state)
  jax.tree_util.tree_map(np.testing.assert_array_equal, new_state.batch_stats,
                         state.batch_stats)
  moved = lambda a, b: not np.array_equal(a, b)
  assert all(jax.tree_util.tree_leaves(jax.tree_util.tree_map(
      moved, new_state.params['stem'], state.params['stem'])))
  assert any(jax.tree_util.tree_leaves(jax.tree_util.tree_map(
      moved, new_state.evalnorm, state.evalnorm)))
  # The training forward pass still used the groups' own statistics: the same
  # step with the EMA updated moves the parameters identically.
  updating, _ = one_step(config, estimate=True)
  jax.tree_util.tree_map(np.testing.assert_array_equal, updating.params,
                         new_state.params)


def test_frozen_bn_optimizer_leaves_the_norm_layers_alone():
  """Weight decay and momentum included: a norm layer's scale and bias take
  a zero update; every other weight its usual one."""
  config = small_digits_config(frozen_bn=True, weight_decay=0.1)
  model = builders.build_model(config, 10)
  variables = jax.jit(functools.partial(model.init, train=False))(
      jax.random.PRNGKey(0), jnp.zeros((2, 8, 8, 1)))
  optimizers = trainer.Optimizers.from_config(config, 10)
  tx = optimizers.weights_for(variables)
  params = variables['params']
  grads = jax.tree_util.tree_map(jnp.ones_like, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  usual, _ = optimizers.weights.update(
      grads, optimizers.weights.init(params), params)
  flat = flax.traverse_util.flatten_dict
  for path, update in flat(updates).items():
    if path[-2].startswith(('norm', 'final_norm')):
      assert not np.any(update), path
    else:
      np.testing.assert_array_equal(update, flat(usual)[path])


@pytest.mark.slow  # ~15 s on 2 cores: compiles the train step for 8 devices.
def test_frozen_bn_trains_everything_but_the_norm_layers():
  """frozen_bn: after estimating SGD steps the norm layers'
  scale, bias and moving averages are bit for bit as they started (from
  non-trivial values), every other weight moved, and the training forward
  pass is the 'ema' evaluation of the same weights."""
  config = small_digits_config(frozen_bn=True)
  dataset = data.make_dataset(config)
  model = builders.build_model(config, dataset.num_classes)
  state = trainer.create_train_state(
      model, jax.random.PRNGKey(0), config.norm_batch_size,
      dataset.image_shape, trainer.Optimizers.from_config(config, 10))
  state = state.replace(batch_stats=jax.tree_util.tree_map(
      lambda v: v * 1.3 + 0.3, state.batch_stats))
  steps = trainer.TrainPrograms(trainer.classifier_forward,
                                update_batch_stats=False)
  trained = parallel.replicate(state)
  batches = dataset.train_batches(0)
  for _ in range(2):
    trained, _ = steps(trained, parallel.shard(next(batches)), True)
  trained = parallel.to_host(trained)
  labels = flax.traverse_util.flatten_dict(
      trainer.norm_layer_labels({'params': state.params,
                                 'batch_stats': state.batch_stats}))
  before = flax.traverse_util.flatten_dict(state.params)
  after = flax.traverse_util.flatten_dict(trained.params)
  assert sorted(set(labels.values())) == ['frozen', 'trained']
  for path, label in labels.items():
    unchanged = np.array_equal(before[path], after[path])
    assert unchanged == (label == 'frozen'), (path, label)
  jax.tree_util.tree_map(np.testing.assert_array_equal, trained.batch_stats,
                         state.batch_stats)
  variables = {'params': trained.params, 'batch_stats': trained.batch_stats,
               'evalnorm': trained.evalnorm}
  image = next(batches)['image']
  training, _ = model.apply(variables, image, train=True,
                            mutable=['batch_stats'])
  ema = model.clone(norm=functools.partial(model.norm, eval_stats='ema'))
  np.testing.assert_array_equal(training,
                                ema.apply(variables, image, train=False))


@pytest.mark.parametrize('init_norm', ['pretrained', 'reset'])
def test_initialize_from_a_trained_run(trained_run, init_norm):
  pretrained_config, workdir, _ = trained_run
  config = small_digits_config(init_from=workdir, init_norm=init_norm, seed=5)
  dataset = data.make_dataset(config)
  model = builders.build_model(config, dataset.num_classes)
  fresh = trainer.create_train_state(
      model, jax.random.PRNGKey(5), config.norm_batch_size,
      dataset.image_shape, trainer.Optimizers.from_config(config, 10))
  state = finetune.initialize_from(
      fresh, config.init_from, config.init_norm,
      functools.partial(builders.build_model, config),
      config.norm_batch_size, dataset.image_shape)
  template = {'params': fresh.params, 'batch_stats': fresh.batch_stats,
              'evalnorm': fresh.evalnorm}
  saved = checkpoint.restore_variables(checkpoint.open_existing(workdir),
                                       template)
  equal = np.testing.assert_array_equal
  jax.tree_util.tree_map(equal, state.params['stem'], saved['params']['stem'])
  jax.tree_util.tree_map(equal, state.params['stage1_block0']['conv1'],
                         saved['params']['stage1_block0']['conv1'])
  jax.tree_util.tree_map(equal, state.params['head'], fresh.params['head'])
  jax.tree_util.tree_map(equal, state.evalnorm, fresh.evalnorm)
  source = saved if init_norm == 'pretrained' else {
      'params': fresh.params, 'batch_stats': fresh.batch_stats}
  jax.tree_util.tree_map(equal, state.params['final_norm'],
                         source['params']['final_norm'])
  jax.tree_util.tree_map(equal, state.batch_stats, source['batch_stats'])
  assert not np.array_equal(saved['batch_stats']['final_norm']['var'],
                            fresh.batch_stats['final_norm']['var'])


def test_initialize_from_a_missing_run_is_one_clear_error(tmp_path):
  config = small_digits_config(init_from=str(tmp_path / 'nothing'))
  with pytest.raises(checkpoint.CheckpointError, match='nothing'):
    trainer.train_and_evaluate(config, str(tmp_path / 'run'))


def steps_on_devices(config, num_devices, num_steps):
  """State after ``num_steps`` train steps pmapped over the first devices."""
  dataset, _, state = fresh_state(config, total_steps=30)
  devices = jax.devices()[:num_devices]
  steps = trainer.TrainPrograms(trainer.classifier_forward,
                                devices=parallel.Pmap(devices))
  state = jax_utils.replicate(state, devices=devices)
  batches = dataset.train_batches(0)
  for _ in range(num_steps):
    batch = jax.tree_util.tree_map(
        lambda x: x.reshape((num_devices, -1) + x.shape[1:]), next(batches))
    state, _ = steps(state, batch, True)
  # Not jax_utils.unreplicate: on a subset of devices it may return the
  # replicated array whole.
  return jax.tree_util.tree_map(lambda x: np.asarray(x)[0], state)


@pytest.mark.slow
def test_train_steps_on_eight_devices_match_one_device():
  """8 devices x 2 examples == one device with groups of 2, three steps.

  Measured differences (float32 round-off of another reduction order):
  parameters 3.5e-7, batch statistics 2.4e-7, alpha/beta 0; the tolerance
  is 2e-6. Normalizing over the wrong examples would move parameters by
  ~lr * grad ~ 1e-2. alpha/beta use SGD from 0.3 here: Adam's first steps
  move every alpha by +-lr whatever the gradient's size, which would
  compare only the gradients' signs.
  """
  config = small_digits_config(alpha_init=0.3, beta_init=0.3,
                               alpha_beta_optimizer='sgd',
                               alpha_beta_learning_rate=0.1)
  eight, one = steps_on_devices(config, 8, 3), steps_on_devices(config, 1, 3)
  for name in ('params', 'batch_stats', 'evalnorm'):
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=2e-6),
        getattr(eight, name), getattr(one, name))
  alphas = [float(v) for v in jax.tree_util.tree_leaves(one.evalnorm)]
  assert max(alphas) - min(alphas) > 1e-2  # values, not one shared step


@pytest.mark.slow  # a second training process: ~1 minute on 2 cores.
def test_eight_devices_match_one_device_end_to_end(tmp_path):
  """eval.json of a 30-step run on 8 devices x 2 equals the 1-device run.

  The learning rate is lowered from 0.1: with groups of 2, a normalization's
  derivative reaches 1/sqrt(epsilon) ~ 300 where two activations nearly
  coincide, so the float32 round-off of a different reduction order (pmean of
  8 means vs one mean, ~1e-7 per step, see the test above) grows ~1.6x per
  step at lr 0.1 and reaches 1e-1 after 30 steps. At lr 0.002 it stays < 1e-3.
  """
  assert jax.local_device_count() == 8
  args = ['--config.dataset=digits', '--config.stem_strides=1',
          '--config.batch_size=16', '--config.norm_batch_size=2',
          '--config.num_train_steps=30', '--config.eval_batch_size=64',
          '--config.learning_rate=0.002', '--config.checkpoint_every_steps=30']
  config = small_digits_config(learning_rate=0.002)
  trainer.train_and_evaluate(config, str(tmp_path / 'eight'))
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=1',
             JAX_PLATFORMS='cpu')
  one = subprocess.run(
      [sys.executable, '-m', 'evalnorm.main', '--config=configs/digits.py',
       f'--workdir={tmp_path / "one"}', *args],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert one.returncode == 0, one.stderr[-2000:]
  eight, single = read_eval(tmp_path / 'eight'), read_eval(tmp_path / 'one')
  assert set(eight['eval']) == set(single['eval'])
  for mode in ('ema', 'evalnorm', 'rule_of_thumb', 'one_over_b'):
    assert eight['eval'][mode]['loss'] == pytest.approx(
        single['eval'][mode]['loss'], abs=1e-3)
  for layer, values in eight['alpha_beta'].items():
    for name, value in values.items():
      assert value == pytest.approx(single['alpha_beta'][layer][name], abs=1e-3)


def set_alpha_beta_in_checkpoint(config, workdir, step, value):
  """Rewrites checkpoint ``step`` of ``workdir`` with every alpha/beta = value."""
  dataset = data.make_dataset(config)
  model = builders.build_model(config, dataset.num_classes)
  template = trainer.create_train_state(
      model, jax.random.PRNGKey(0), config.norm_batch_size,
      dataset.image_shape, trainer.Optimizers.from_config(config, 1))
  manager = checkpoint.make_manager(workdir, asynchronous=False)
  state, meta = checkpoint.restore(manager, template, step)
  manager.delete(step)  # orbax writes a step only once
  checkpoint.save(manager, state.replace(
      evalnorm=set_alpha_beta(state.evalnorm, value)), meta)
  manager.close()


def test_resume_continues_from_the_saved_state(trained_run, tmp_path, caplog):
  """A rerun trains on from the latest checkpoint's own state.

  Its alpha/beta are set to 0.5 there: the resumed run must carry them on
  (a fresh start ends near 0 instead) while its weights, which alpha/beta
  never influence, end exactly as the uninterrupted run's.
  """
  config, original, uninterrupted = trained_run
  workdir = str(tmp_path / 'run')
  shutil.copytree(original, workdir)
  # Pretend the run died after the step-10 checkpoint.
  shutil.rmtree(os.path.join(workdir, 'checkpoints', '20'))
  os.remove(os.path.join(workdir, 'eval.json'))
  set_alpha_beta_in_checkpoint(config, workdir, 10, 0.5)
  caplog.set_level(logging.INFO)
  resumed = trainer.train_and_evaluate(config, workdir)
  assert resumed['step'] == 20 and min(logged_steps(caplog)) > 10
  for mode, metrics in uninterrupted['eval'].items():
    if mode != 'evalnorm':  # the one mode alpha/beta change
      assert resumed['eval'][mode] == metrics, mode
  for layer, values in resumed['alpha_beta'].items():
    assert values == pytest.approx({'alpha': 0.5, 'beta': 0.5}, abs=0.05)
    assert uninterrupted['alpha_beta'][layer]['alpha'] < 0.1


def test_fine_tuning_rerun_resumes_its_own_checkpoint(trained_run, tmp_path):
  config, original, _ = trained_run
  workdir = str(tmp_path / 'finetune')
  shutil.copytree(os.path.join(original, 'checkpoints'),
                  os.path.join(workdir, 'checkpoints'))
  shutil.rmtree(os.path.join(workdir, 'checkpoints', '20'))
  # init_from's latest checkpoint (step 20) differs from the run's own (10).
  config = small_digits_config(num_train_steps=20, init_from=original)
  dataset = data.make_dataset(config)
  model = builders.build_model(config, dataset.num_classes)
  manager = checkpoint.make_manager(workdir)
  fresh = trainer.create_train_state(
      model, jax.random.PRNGKey(0), config.norm_batch_size,
      dataset.image_shape, trainer.Optimizers.from_config(config, 20))
  state = trainer.restore_or_create(
      manager, fresh, trainer.fine_tuning_start(config, dataset.image_shape))
  own, _ = checkpoint.restore(manager, state, 10)
  assert int(state.step) == 10
  jax.tree_util.tree_map(np.testing.assert_array_equal, state.params,
                         own.params)


def test_alpha_beta_are_clipped_to_0_1_after_each_update():
  tx = calibration.alpha_beta_optimizer('sgd', 1.0)
  evalnorm = {'a': {'alpha': jnp.float32(0.5), 'beta': jnp.full(3, 0.5)}}
  grads = {'a': {'alpha': jnp.float32(-2.0), 'beta': jnp.array([2.0, 0.1, -0.2])}}
  updated, _ = calibration.update_alpha_beta(tx, grads, tx.init(evalnorm),
                                             evalnorm)
  assert float(updated['a']['alpha']) == 1.0
  np.testing.assert_allclose(updated['a']['beta'], [0.0, 0.4, 0.7], rtol=1e-6)


def test_mean_alpha_beta_weighs_every_layer_equally():
  evalnorm = {'block': {'norm1': {'alpha': np.float32(0.2), 'beta': np.float32(0.4)},
                        'norm2': {'alpha': np.array([0.0, 1.0, 0.5, 0.5]),
                                  'beta': np.array([0.0, 0.0, 0.0, 0.4])}}}
  assert mean_alpha_beta(evalnorm) == pytest.approx((0.35, 0.25))


def test_eval_json_has_every_mode_and_layer(trained_run):
  _, workdir, report = trained_run
  assert report == read_eval(workdir)
  assert set(report['eval']) == {'ema', 'evalnorm', 'rule_of_thumb',
                                 'one_over_b', 'train_stats', 'fixed_0.05',
                                 'fixed_0.1', 'fixed_0.5'}
  assert report['step'] == 20 and report['norm_batch_size'] == 2
  assert len(report['alpha_beta']) == 7  # 3 blocks x 2 norms + final norm
  for metrics in report['eval'].values():
    assert 0 <= metrics['top1'] <= 100 and np.isfinite(metrics['loss'])


@pytest.mark.slow
def test_batchnorm_model_reports_fixed_modes(tmp_path):
  # flax's BatchNorm normalizes the whole per-device batch: 16 / 8 devices = 2.
  config = small_digits_config(norm='batchnorm', num_train_steps=10,
                               fixed_alpha_beta=(0.25,))
  report = trainer.train_and_evaluate(config, str(tmp_path))
  assert set(report['eval']) == {'ema', 'rule_of_thumb', 'one_over_b',
                                 'train_stats', 'fixed_0.25'}


@pytest.mark.parametrize('key, value, fragment', [
    ('dataset', 'mnist', "config.dataset='mnist'"),
    ('norm', 'layernorm', "config.norm='layernorm'"),
    ('model', 'vit', "config.model='vit'"),
    ('norm_batch_size', 3, 'norm_batch_size=3'),
    ('batch_size', 12, 'batch_size=12'),
    ('num_train_steps', 0, 'num_train_steps=0'),
    ('init_norm', 'random', "config.init_norm='random'"),
    ('learning_rate', -0.1, 'learning_rate=-0.1'),
    ('depth', 21, 'depth=21'),
    ('alpha_init', 1.5, 'alpha_init=1.5'),
    ('alpha_beta_optimizer', 'lbfgs', "alpha_beta_optimizer='lbfgs'"),
    ('eval_modes_at_once', -1, 'eval_modes_at_once=-1'),
])
def test_invalid_config_values_name_key_and_value(key, value, fragment):
  config = small_digits_config()
  config[key] = value
  with pytest.raises(config_lib.ConfigError) as error:
    builders.validate(config, num_devices=8)
  message = str(error.value)
  assert fragment in message and '\n' not in message


def test_frozen_bn_is_evalnorms():
  config = small_digits_config(norm='batchnorm', frozen_bn=True)
  with pytest.raises(config_lib.ConfigError) as error:
    builders.validate(config, num_devices=8)
  assert str(error.value) == (
      "config.frozen_bn=True is invalid: frozen BN is built into "
      "norm='evalnorm' (config.norm='batchnorm')")


@pytest.mark.slow
def test_bad_config_on_command_line_is_one_line_and_exit_2(tmp_path):
  result = subprocess.run(
      [sys.executable, '-m', 'evalnorm.main', '--config=configs/digits.py',
       f'--workdir={tmp_path}', '--config.norm_batch_size=3'],
      cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert result.returncode == 2
  assert 'Traceback' not in result.stderr
  errors = [l for l in result.stderr.splitlines() if l.startswith('error:')]
  assert len(errors) == 1 and 'norm_batch_size=3' in errors[0]


def test_config_arguments_parse_and_reject_unknown_keys():
  config = cifar_config.get_config('depth=56,width=2,dataset=cifar100')
  assert (config.depth, config.width, config.dataset) == (56, 2, 'cifar100')
  with pytest.raises(config_lib.ConfigError, match='depht'):
    cifar_config.get_config('depht=56')
  config = imagenet_config.get_config('norm_batch_size=4')
  assert config.batch_size == 32 and config.learning_rate == pytest.approx(0.0125)
  config.norm_batch_size = 16  # as --config.norm_batch_size=16 would
  assert config.batch_size == 128 and config.learning_rate == pytest.approx(0.05)


def test_num_epochs_overrides_steps():
  config = small_digits_config(num_epochs=2.0, batch_size=100)
  assert config_lib.num_train_steps(config, num_train_examples=1350) == 27


@pytest.mark.slow
def test_cifar_config_one_step_on_mock_data(tmp_path):
  import tensorflow_datasets as tfds
  config = cifar_config.get_config('norm_batch_size=2')
  config.update(dict(num_train_steps=1, batch_size=16, eval_batch_size=16,
                     depth=8, checkpoint_every_steps=1,
                     # mock_data swaps the file system while it builds a
                     # pipeline, which would race an async checkpoint write.
                     async_checkpointing=False))
  with tfds.testing.mock_data(num_examples=20):
    report = trainer.train_and_evaluate(config, str(tmp_path))
  assert report['num_eval_examples'] == 20
  assert set(report['eval']) >= {'ema', 'evalnorm', 'rule_of_thumb'}


@pytest.mark.slow  # ~100 s on 2 cores: compiling ResNet-50 for 8 devices.
def test_imagenet_config_one_step_on_mock_data_8_devices(tmp_path):
  import tensorflow_datasets as tfds
  config = imagenet_config.get_config('norm_batch_size=2')
  config.update(dict(image_size=32, num_epochs=None, num_train_steps=1,
                     checkpoint_every_steps=1, async_checkpointing=False))
  assert config.batch_size == 16  # 8 devices x B=2, one group per device
  with tfds.testing.mock_data(num_examples=16):
    report = trainer.train_and_evaluate(config, str(tmp_path))
  assert report['step'] == 1 and len(report['alpha_beta']) == 49  # 16 blocks x 3 + final


@pytest.mark.parametrize('dataset', ['digits', 'noisy_digits'])
def test_built_in_training_batches_do_not_depend_on_the_process_count(
    dataset, monkeypatch):
  """1, 2 and 4 processes see the same global batches; 1 is pinned bitwise."""
  config = small_digits_config(dataset=dataset, batch_size=16, seed=3)
  source = data.make_dataset(config)
  one = next(source.train_batches(7))
  golden = {'digits': '20fcb02d494f26d1', 'noisy_digits': '080d5a9a3d571321'}
  digest = hashlib.sha256(one['image'].tobytes() + one['label'].tobytes())
  assert digest.hexdigest()[:16] == golden[dataset]
  for count in (2, 4):
    monkeypatch.setattr(jax, 'process_count', lambda count=count: count)
    shares = []
    for index in range(count):
      monkeypatch.setattr(jax, 'process_index', lambda index=index: index)
      shares.append(next(source.train_batches(7)))
    for key in ('image', 'label'):
      np.testing.assert_array_equal(
          np.concatenate([share[key] for share in shares]), one[key])


@pytest.mark.slow
def test_amortized_estimation_trains_identically_and_resumes(trained_run,
                                                             tmp_path):
  """Estimating every 3rd step: weights as with the default k, exact resume.

  (Every step against never, on the quick start's model: test_golden.py.)
  The checkpoint at step 11 falls between estimating steps (1, 4, 7, 10, 13),
  so the resumed run must pick the plain step up where the first one left.
  """
  every_step_config, _, every_step = trained_run
  config = small_digits_config(num_train_steps=20, estimate_every_steps=3,
                               checkpoint_every_steps=11)
  assert config.estimate_every_steps != every_step_config.estimate_every_steps
  workdir = str(tmp_path / 'amortized')
  amortized = trainer.train_and_evaluate(config, workdir)
  for mode, metrics in every_step['eval'].items():
    if mode != 'evalnorm':  # alpha/beta took fewer steps: the one mode that differs
      assert amortized['eval'][mode] == metrics, mode
  assert amortized['alpha_beta'] != every_step['alpha_beta']
  assert all(v['alpha'] > 0 for v in amortized['alpha_beta'].values())
  shutil.rmtree(os.path.join(workdir, 'checkpoints', '20'))
  os.remove(os.path.join(workdir, 'eval.json'))
  assert trainer.train_and_evaluate(config, workdir) == amortized
