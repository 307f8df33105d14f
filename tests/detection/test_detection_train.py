"""digit_scenes data, the detector's train step on 8 devices, and a run end to end."""

import functools
import json
import os

import flax.linen as nn
import jax
import numpy as np
import pytest

from evalnorm.data import digits
from evalnorm.detection import (digit_scenes,
                                evaluation as detection_evaluation, faster_rcnn,
                                train as detection_train)
from evalnorm.layers import EvalNorm
from evalnorm.training import (builders, checkpoint, config_lib, parallel,
                               trainer)

from configs import detection as detection_config


def small_detection_config(**overrides):
  """The detection config shrunk to seconds: 8 fake devices x 2 images."""
  config = detection_config.get_config()
  config.update(dict(batch_size=16, eval_batch_size=16, num_eval_images=20,
                     num_train_steps=2, log_every_steps=1,
                     checkpoint_every_steps=2, num_proposals=8,
                     rois_per_image=8, pre_nms_top_k=50,
                     warmup_steps=0, fixed_alpha_beta=(0.5,)))
  config.update(overrides)
  return config


def test_scenes_are_a_function_of_seed_and_step():
  dataset = digit_scenes.DigitScenesDataset(small_detection_config())
  a, b = next(dataset.train_batches(7)), next(dataset.train_batches(7))
  jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)
  other = digit_scenes.DigitScenesDataset(small_detection_config(seed=1))
  assert not np.array_equal(a['image'], next(other.train_batches(7))['image'])
  # The evaluation set does not depend on the seed.
  np.testing.assert_array_equal(dataset.eval_set['image'], other.eval_set['image'])
  assert a['image'].shape == (16, 64, 64, 1)
  assert a['boxes'].shape == (16, 4, 4) and a['classes'].shape == (16, 4)


def test_scene_boxes_hold_the_digits():
  eval_set = digit_scenes.DigitScenesDataset(small_detection_config()).eval_set
  classes, boxes = eval_set['classes'], eval_set['boxes']
  assert np.all((classes >= 0) & (classes <= 10)) and np.all(classes.max(1) > 0)
  real = boxes[classes > 0]
  assert np.all(real[:, 2:] > real[:, :2] + 4) and np.all(real >= 0)
  assert np.all(real <= 64)
  # Digits are brighter than the background (contrast is always positive).
  inside = np.zeros(eval_set['image'].shape[:3], bool)
  for i, j in zip(*np.nonzero(classes)):
    x1, y1, x2, y2 = boxes[i, j].astype(int)
    inside[i, y1:y2, x1:x2] = True
  image = eval_set['image'][..., 0]
  assert image[inside].mean() > image[~inside].mean() + 0.3


def test_ink_boxes_are_tight():
  canvas = np.zeros((1, 16, 16), np.float32)
  canvas[0, 3:7, 5:12] = 1.0
  np.testing.assert_array_equal(digits.ink_boxes(canvas), [[5, 3, 12, 7]])


def test_rcn_normalizes_the_rois_of_each_group_of_images():
  norm = functools.partial(EvalNorm, group_size=2, momentum=0.9)
  assert faster_rcnn.rcn_norm(norm, 16).keywords['group_size'] == 32
  assert faster_rcnn.rcn_norm(nn.BatchNorm, 16) is nn.BatchNorm


def test_config_validation_names_the_key():
  config = small_detection_config(num_proposals=0)
  with pytest.raises(config_lib.ConfigError, match='num_proposals'):
    detection_train.validate(config, 8)
  config = small_detection_config(norm_batch_size=3)
  with pytest.raises(config_lib.ConfigError, match='norm_batch_size'):
    detection_train.validate(config, 8)


@pytest.mark.slow  # ~1 minute on 2 cores: compiles the train step for 8 devices.
def test_train_step_on_8_devices_learns_and_keeps_replicas_equal():
  config = small_detection_config()
  dataset = detection_train.make_dataset(config)
  model = detection_train.build_detector(config, dataset.num_classes)
  state = trainer.create_train_state(
      model, jax.random.PRNGKey(0), config.norm_batch_size,
      dataset.image_shape, trainer.Optimizers.from_config(config, 10))
  steps = trainer.TrainPrograms(functools.partial(
      detection_train.detector_forward, seed=0,
      rpn_samples=config.rpn_samples))
  batch = parallel.shard(next(dataset.train_batches(0)))
  new_state, metrics = steps(parallel.replicate(state), batch, True)
  for name in ('loss', 'rpn_cls', 'rpn_box', 'rcn_cls', 'rcn_box', 'aux_loss'):
    assert np.all(np.isfinite(metrics[name])), name
  assert float(metrics['rcn_cls'][0]) > 0 and float(metrics['aux_loss'][0]) > 0
  # Replicas stay identical; both parts of the network trained.
  for leaf in jax.tree_util.tree_leaves((new_state.params, new_state.batch_stats)):
    np.testing.assert_array_equal(leaf[0], leaf[7])
  new_state = parallel.to_host(new_state)
  for part in ('backbone', 'rpn', 'rcn'):
    moved = jax.tree_util.tree_map(lambda a, b: not np.array_equal(a, b),
                                   new_state.params[part], state.params[part])
    assert any(jax.tree_util.tree_leaves(moved)), part
  assert not np.array_equal(
      new_state.batch_stats['rcn']['final_norm']['mean'],
      state.batch_stats['rcn']['final_norm']['mean'])


@pytest.mark.slow  # ~1 minute on 2 cores: compiles training and evaluation.
def test_a_run_writes_coco_files_that_reproduce_eval_json(tmp_path):
  config = small_detection_config()
  results = detection_train.train_and_evaluate(config, str(tmp_path))
  with open(tmp_path / 'eval.json') as f:
    written = json.load(f)
  assert written['eval'] == results['eval'] and written['step'] == 2
  modes = {'ema', 'evalnorm', 'rule_of_thumb', 'one_over_b', 'fixed_0.5',
           'train_stats'}
  assert set(written['eval']) == modes
  coco = tmp_path / 'coco'
  for mode in modes:
    recomputed = detection_evaluation.score_files(
        str(coco / 'ground_truth.json'), coco / f'detections_{mode}.json')
    assert recomputed == written['eval'][mode]
  assert written['alpha_beta'] and os.path.isdir(tmp_path / 'checkpoints')


@pytest.mark.slow  # ~2 minutes on 2 cores: trains, estimates and evaluates.
def test_offline_estimation_of_a_batchnorm_detector(tmp_path):
  """evalnorm.estimate on a detection checkpoint: a plain nn.BatchNorm
  detector, converted, frozen; alpha/beta estimated in the base network and
  the RCN, every mode evaluated with COCOeval."""
  trained = str(tmp_path / 'trained')
  config = small_detection_config(norm='batchnorm', offline_estimation_steps=2,
                                  alpha_init=0.3, beta_init=0.3)
  detection_train.train_and_evaluate(config, trained)
  out = tmp_path / 'offline'
  results = detection_train.estimate_and_evaluate(config, trained, str(out))
  with open(out / 'eval.json') as f:
    assert json.load(f) == results
  assert set(results['eval']) == {'ema', 'evalnorm', 'rule_of_thumb',
                                  'one_over_b', 'fixed_0.5', 'train_stats'}
  assert results['offline_examples'] == 2 * 16 and results['step'] == 2
  layers = results['alpha_beta']
  assert any(name.startswith('rcn/') for name in layers)
  assert any(name.startswith('backbone/') for name in layers)
  moved = [abs(v['alpha'] - 0.3) + abs(v['beta'] - 0.3) for v in layers.values()]
  assert max(moved) > 1e-4  # the estimation took steps from alpha_init
  assert os.path.isfile(out / 'coco' / 'detections_evalnorm.json')
  with pytest.raises(config_lib.ConfigError, match="config.norm='groupnorm'"):
    detection_train.estimate_and_evaluate(
        small_detection_config(norm='groupnorm'), trained, str(out))


@pytest.mark.slow  # ~30 s on 2 cores: compiles a classifier's and the detector's init.
@pytest.mark.parametrize('init_norm', ['pretrained', 'reset'])
def test_detector_starts_from_a_classifier(tmp_path, init_norm):
  from training_helpers import small_digits_config
  classifier_config = small_digits_config(dataset='noisy_digits', stem_strides=2)
  classifier = builders.build_model(classifier_config, 10)
  source = trainer.create_train_state(
      classifier, jax.random.PRNGKey(1), classifier_config.norm_batch_size,
      (24, 24, 1), trainer.Optimizers.from_config(classifier_config, 10))
  # Distinct values, so that a copied variable is recognizable.
  source = source.replace(batch_stats=jax.tree_util.tree_map(
      lambda v: v + 0.5, source.batch_stats))
  manager = checkpoint.make_manager(str(tmp_path))
  checkpoint.save(manager, source, trainer.checkpoint_meta(classifier_config, 10))
  manager.wait_until_finished()

  config = small_detection_config(init_from=str(tmp_path), init_norm=init_norm)
  model = detection_train.build_detector(config, 10)
  fresh = trainer.create_train_state(
      model, jax.random.PRNGKey(0), config.norm_batch_size,
      (64, 64, 1), trainer.Optimizers.from_config(config, 10))
  state = detection_train.fine_tuning_start(config, 1)(fresh)
  same = lambda a, b: jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)
  same(state.params['backbone']['stem'], source.params['stem'])
  same(state.params['rcn']['stage3_block0']['conv2'],
       source.params['stage3_block0']['conv2'])
  same(state.params['rpn'], fresh.params['rpn'])  # no counterpart: fresh
  same(state.params['rcn']['classifier'], fresh.params['rcn']['classifier'])
  loaded_norm = state.params['rcn']['final_norm'], state.batch_stats['backbone']
  if init_norm == 'reset':
    same(loaded_norm, (fresh.params['rcn']['final_norm'],
                       fresh.batch_stats['backbone']))
  else:
    same(loaded_norm, (source.params['final_norm'],
                       {k: source.batch_stats[k] for k in
                        ('stage1_block0', 'stage2_block0')}))
