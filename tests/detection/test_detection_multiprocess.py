"""Detection as 2 processes x 4 devices against 1 process x 8 devices.

Slow: a 2-process job of `python -m evalnorm.main` (``multiprocess_jobs``)
and a 1-process run of the same config. Also here, fast: only process 0
reads the ground truth and writes the COCO files.
"""

import json
import os
import shutil

import jax
import numpy as np
import pytest

from evalnorm.detection import evaluation as detection_evaluation
from evalnorm.detection import train as detection_train

import multiprocess_jobs
from test_detection_train import small_detection_config

# The tiny digit_scenes run of both jobs: 8 devices x 2 images; 20 eval
# images, 10 a process (a padded last batch on each).
# 60 steps at lr 0.06 give AP50 of 3-10 in every mode: APs to compare.
SETTINGS = dict(num_train_steps=60, checkpoint_every_steps=60,
                learning_rate=0.06, log_every_steps=20, eval_every_steps=1000)
COMMON = ['--config=configs/detection.py', '--config.batch_size=16',
          '--config.eval_batch_size=16', '--config.num_eval_images=20',
          '--config.num_proposals=8', '--config.rois_per_image=8',
          '--config.pre_nms_top_k=50', '--config.warmup_steps=0',
          '--config.fixed_alpha_beta=(0.5,)'] + [
              f'--config.{key}={value}' for key, value in SETTINGS.items()]
TIMEOUT_S = 120  # config.distributed_timeout_s: both processes compile
AP_TOLERANCE = 1e-6  # points of AP; measured: exactly 0


@pytest.fixture
def processes(tmp_path):
  with multiprocess_jobs.launcher(tmp_path, COMMON, TIMEOUT_S) as start_job:
    yield start_job


def listing(workdir) -> list[str]:
  """The workdir's entries, each TensorBoard file as 'events'."""
  return sorted('events' if name.startswith('events.out.tfevents') else name
                for name in os.listdir(workdir))


def coco_files(workdir) -> list[str]:
  return sorted(os.listdir(workdir / 'coco'))


@pytest.mark.slow  # a 2-process job, then 1 process evaluates: ~95 s on 2 busy cores.
@pytest.mark.xdist_group('multiprocess')
def test_two_processes_detect_as_one_process(tmp_path, processes):
  """The job's evaluation equals one process's of the same checkpoint.

  One process evaluates a copy of the job's workdir: it resumes at the last
  step, so it evaluates the very weights the job did (60 steps at lr 0.06
  are chaotic enough that two trainings, whose all-reduces add in another
  order, end 1e-3 apart in alpha/beta and several AP points apart).
  Measured: AP, AP50 and AP75 of every mode but train_stats are exactly
  equal (difference 0.0; train_stats 0.42 AP50 apart); the test allows
  AP_TOLERANCE.
  """
  two = tmp_path / 'two'
  job = processes(two)
  assert [p.wait(timeout=600) for p in job] == [0, 0]
  one = tmp_path / 'one'
  shutil.copytree(two / 'checkpoints', one / 'checkpoints')
  ours = detection_train.train_and_evaluate(small_detection_config(**SETTINGS),
                                            str(one))
  with open(two / 'eval.json') as f:
    theirs = json.load(f)
  assert theirs['step'] == ours['step'] == SETTINGS['num_train_steps']
  # train_stats normalizes groups of eval images cut from each process's
  # share: the one mode whose inputs differ.
  modes = set(ours['eval']) - {'train_stats'}
  differences = {mode: max(abs(theirs['eval'][mode][k] - ours['eval'][mode][k])
                           for k in detection_evaluation.METRICS)
                 for mode in modes}
  print('AP differences:', differences)
  assert max(differences.values()) <= AP_TOLERANCE, differences
  assert min(r['AP50'] for r in ours['eval'].values()) > 0  # APs to compare
  # One eval.json and one set of COCO files, which hold every process's
  # share of the images (ids 1, 3, ... are process 0's; 2, 4, ... process 1's).
  # (TensorBoard's file names hold the process id: only their count.)
  assert listing(two) == listing(one)
  assert coco_files(two) == coco_files(one)
  with open(two / 'coco' / 'detections_ema.json') as f:
    detected_ids = {d['image_id'] for d in json.load(f)}
  assert detected_ids & {1, 3, 5} and detected_ids & {2, 4, 6}
  for mode, metrics in theirs['eval'].items():
    assert detection_evaluation.score_files(
        two / 'coco' / 'ground_truth.json',
        two / 'coco' / f'detections_{mode}.json') == metrics


class NoGroundTruth:
  """A dataset whose ground truth must not be read."""

  def ground_truth(self):
    raise AssertionError('read on a process other than 0')


def test_only_process_0_reads_the_ground_truth_and_writes(tmp_path,
                                                          monkeypatch):
  detections = {'image_id': np.array([1], np.int32),
                'mask': np.array([1.0], np.float32),
                'modes': {'ema': {'boxes': np.zeros((1, 1, 4), np.float32),
                                  'category_ids': np.ones((1, 1), np.int32),
                                  'scores': np.ones((1, 1), np.float32),
                                  'valid': np.zeros((1, 1), bool)}}}
  monkeypatch.setattr(jax, 'process_index', lambda: 1)
  assert detection_evaluation.score_on_process_0(
      tmp_path, NoGroundTruth(), detections) is None
  assert not os.listdir(tmp_path)
  monkeypatch.setattr(jax, 'process_index', lambda: 0)
  ground_truth = detection_evaluation.ground_truth_json(
      [1], [(8, 8)], [np.zeros((0, 4))], [np.zeros(0, int)], {1: 'one'})
  dataset = type('Dataset', (), {'ground_truth': lambda self: ground_truth})()
  scores = detection_evaluation.score_on_process_0(tmp_path, dataset,
                                                   detections)
  assert set(scores) == {'ema'}
  assert sorted(os.listdir(tmp_path)) == ['detections_ema.json',
                                          'ground_truth.json']
