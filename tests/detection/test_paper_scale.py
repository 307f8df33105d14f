"""The paper-scale detector of `configs/detection.py:dataset=coco` end to end.

ResNet-50 v2 base network and RCN, the paper's anchors, 300 proposals and 64
ROIs per image, on tfds' mock `coco/2017`: one train step and the final
evaluation of every mode, then offline estimation of that checkpoint.
"""

import json
import os
import time

import pytest
import tensorflow_datasets as tfds

from evalnorm.detection import train as detection_train

from configs import detection as detection_config

IMAGE_SIZE = 600  # the paper's


def paper_config(**overrides):
  """The coco config as it is, but for what one step on 8 CPU devices needs:
  8 images (1 a device, B=1), one step, one estimation step."""
  config = detection_config.get_config('dataset=coco')
  config.update(dict(batch_size=8, norm_batch_size=1, eval_batch_size=8,
                     num_train_steps=1, warmup_steps=0,
                     checkpoint_every_steps=1, log_every_steps=1,
                     offline_estimation_steps=1, image_size=IMAGE_SIZE))
  config.update(overrides)
  return config


@pytest.mark.slow  # not yet timed: ResNet-50 at 600x600 on 8 CPU devices.
def test_the_paper_scale_detector_trains_evaluates_and_estimates(tmp_path):
  """One step, every mode scored with COCOeval, the checkpoint estimated.

  Not yet run: its wall time at IMAGE_SIZE 600 is to be measured, and the
  image size reduced (a config override, the model kept) if over ~4 min.
  """
  config = paper_config()
  assert config.model == 'resnet50_v2' and config.num_proposals == 300
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
