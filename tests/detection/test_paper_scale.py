"""The paper-scale detector of `configs/detection.py:dataset=coco` end to end.

ResNet-50 v2 base network and RCN, the paper's anchors, sampling and 64 ROIs
per training image, on tfds' mock `coco/2017` over 8 CPU devices: one train
step and the final evaluation of every mode, then offline estimation of that
checkpoint. Two settings are smaller than the paper's so that 2 CPU cores
finish in minutes: 224x224 images (600x600) and 64 proposals per image in
evaluation (300), where every proposal goes through the RCN's stage 4.
"""

import json
import os
import time

import pytest
import tensorflow_datasets as tfds

from evalnorm.detection import train as detection_train

from configs import detection as detection_config

IMAGE_SIZE = 224
PROPOSALS = 64


def paper_config(**overrides):
  """The coco config as it is, but for what one step on 8 CPU devices needs:
  8 images (1 a device, B=1), one step, one estimation step; 224x224
  images and 64 proposals in evaluation (the paper: 600x600 and 300), the
  modes without the fixed ones."""
  config = detection_config.get_config('dataset=coco')
  config.update(dict(batch_size=8, norm_batch_size=1, eval_batch_size=8,
                     num_train_steps=1, warmup_steps=0,
                     checkpoint_every_steps=1, log_every_steps=1,
                     offline_estimation_steps=1, image_size=IMAGE_SIZE,
                     num_proposals=PROPOSALS, fixed_alpha_beta=()))
  config.update(overrides)
  return config


@pytest.mark.slow
def test_the_paper_scale_detector_trains_evaluates_and_estimates(tmp_path):
  """One step, every mode scored with COCOeval, the checkpoint estimated."""
  paper = detection_config.get_config('dataset=coco')
  assert (paper.model, paper.image_size, paper.num_proposals,
          paper.rois_per_image) == ('resnet50_v2', 600, 300, 64)
  # alpha/beta start inside (0, 1), so that the one estimation step moves
  # them whichever way their gradient points.
  config = paper_config(alpha_init=0.3, beta_init=0.3)
  trained, offline = tmp_path / 'trained', tmp_path / 'offline'
  start = time.time()
  with tfds.testing.mock_data(num_examples=8):
    results = detection_train.train_and_evaluate(config, str(trained))
    print(f'train + evaluate: {time.time() - start:.0f} s')
    estimated = detection_train.estimate_and_evaluate(config, str(trained),
                                                      str(offline))
  print(f'with offline estimation: {time.time() - start:.0f} s')
  for record, workdir in ((results, trained), (estimated, offline)):
    assert record['step'] == 1 and record['num_eval_examples'] == 8
    assert set(record['eval']) >= {'ema', 'evalnorm', 'train_stats'}
    for metrics in record['eval'].values():
      assert all(0.0 <= v <= 100.0 for v in metrics.values()), metrics
    with open(workdir / 'eval.json') as f:
      assert json.load(f)['eval'] == record['eval']
    with open(workdir / 'coco' / 'ground_truth.json') as f:
      assert len(json.load(f)['images']) == 8
    assert {f'detections_{mode}.json' for mode in record['eval']} <= set(
        os.listdir(workdir / 'coco'))
  layers = estimated['alpha_beta']
  assert any(name.startswith('rcn/stage4') for name in layers), list(layers)
  assert any(name.startswith('backbone/stage3') for name in layers)
  assert estimated['offline_examples'] == 8
  moved = [abs(v['alpha'] - 0.3) + abs(v['beta'] - 0.3) for v in layers.values()]
  assert max(moved) > 1e-4  # the estimation took a step from alpha_init
