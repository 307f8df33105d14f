"""Every file the programs write or read goes through evalnorm.training.files (epath).

A bucket is faked with ``epath.testing.mock_epath``: ``gs://bucket/...`` is
served from a local directory, but only to code that goes through epath; a
plain ``open`` or ``os.makedirs`` of such a path would write ``gs:/bucket``
under the current directory instead (and the tests would not find the
files). A real run is tested with a local workdir given as an epath.Path.
"""

import os

import numpy as np
import pytest
from etils import epath
from etils.epath import gpath

from evalnorm.detection import evaluation as detection_evaluation
from evalnorm.training import checkpoint, files
from experiments import command_line, result_files, runner, scales

from training_helpers import small_digits_config


@pytest.fixture
def bucket(tmp_path, monkeypatch):
  """``gs://bucket/...`` served from ``tmp_path/bucket/...``."""
  cwd = tmp_path / 'cwd'  # where a write that bypassed epath would land
  cwd.mkdir()
  monkeypatch.chdir(cwd)

  def local(path):
    path = os.fspath(path)
    if path.startswith('gs://'):
      return os.fspath(tmp_path / path[len('gs://'):])
    return path

  def one(original, path, *args, **kwargs):
    return original(local(path), *args, **kwargs)

  def two(original, path, dst, *args, **kwargs):
    return original(local(path), local(dst), *args, **kwargs)

  def glob(original, pattern):
    found = original(local(pattern))
    if not os.fspath(pattern).startswith('gs://'):
      return found
    return ['gs://' + os.path.relpath(f, tmp_path) for f in found]

  def walk(original, top, **kwargs):
    for directory, names, filenames in original(local(top), **kwargs):
      yield directory, names, filenames

  # With TensorFlow installed, epath takes gs:// to tf.io.gfile whatever
  # the mock says; without it, to the (mocked) backend of its table.
  monkeypatch.setattr(gpath, '_is_tf_installed', lambda: False)
  with epath.testing.mock_epath(
      open=one, exists=one, isdir=one, listdir=one, makedirs=one, mkdir=one,
      rmtree=one, remove=one, stat=one, rename=two, replace=two, copy=two,
      glob=glob, walk=walk):
    yield tmp_path
  assert not os.listdir(cwd), 'a write bypassed epath'


def test_bucket_paths_stay_as_given_and_local_ones_become_absolute(tmp_path,
                                                                   monkeypatch):
  assert os.fspath(files.path('gs://b/run')) == 'gs://b/run'
  # os.path.abspath would make it '<cwd>/gs:/b/run/checkpoints'.
  assert os.fspath(checkpoint.directory_of('gs://b/run')) == (
      'gs://b/run/checkpoints')
  monkeypatch.chdir(tmp_path)
  assert os.fspath(files.path('run')) == os.fspath(tmp_path / 'run')
  assert os.fspath(checkpoint.directory_of(epath.Path('run'))) == os.fspath(
      tmp_path / 'run' / 'checkpoints')
  assert files.join('gs://b', 'run') == 'gs://b/run'
  assert files.join('w', 'x') == 'w/x'  # command lines keep relative paths


def test_coco_files_in_a_bucket_score_as_written(bucket):
  ground_truth = {
      'images': [{'id': 1, 'height': 40, 'width': 40}],
      'annotations': [{'id': 1, 'image_id': 1, 'category_id': 1,
                       'bbox': [2, 3, 10, 10], 'area': 100, 'iscrowd': 0}],
      'categories': [{'id': 1, 'name': 'a'}]}
  found = [{'image_id': 1, 'category_id': 1, 'bbox': [2, 3, 10, 10],
            'score': 0.9}]
  scores = detection_evaluation.write_and_score('gs://bucket/run/coco', ground_truth,
                                                {'ema': found, 'none': []})
  assert scores['ema'] == pytest.approx({'AP': 100, 'AP50': 100, 'AP75': 100})
  written = bucket / 'bucket' / 'run' / 'coco'
  assert sorted(os.listdir(written)) == [
      'detections_ema.json', 'detections_none.json', 'ground_truth.json']
  assert detection_evaluation.score_files(
      'gs://bucket/run/coco/ground_truth.json',
      'gs://bucket/run/coco/detections_ema.json') == scores['ema']


def test_experiment_runs_and_results_in_a_bucket(bucket, monkeypatch):
  """A run's log and eval.json, a finished run's reuse, the results files."""
  context = command_line.Context(scales.SCALES['small'], 'gs://bucket/work',
                                 'gs://bucket/results', jobs=1)

  def fake_run(args, cwd, stdout, stderr, env):
    del cwd, stderr, env
    workdir = next(a for a in args if a.startswith('--workdir='))
    assert workdir == '--workdir=gs://bucket/work/x'
    stdout.write('training...\n')
    stdout.flush()
    files.write_json('gs://bucket/work/x/eval.json', {'eval': {}, 'step': 3})
    return 0
  monkeypatch.setattr(runner.subprocess, 'call', fake_run)
  run = runner.make_run('x', context.scale)
  assert context.execute([run])['x']['step'] == 3
  work = bucket / 'bucket' / 'work' / 'x'
  log = (work / 'log.txt').read_text()
  assert '--workdir=gs://bucket/work/x' in log.splitlines()[0]
  assert log.endswith('training...\n')
  assert files.read_json(work / 'eval.json')['wall_seconds'] >= 0
  monkeypatch.setattr(runner.subprocess, 'call', None)  # reused, not rerun
  assert context.execute([run])['x']['step'] == 3

  result_files.write_markdown(context.output('t.md'), 'T', 'body\n')
  assert (bucket / 'bucket' / 'results' / 't.md').read_text() == '# T\n\nbody\n'
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  figure = plt.figure()
  result_files.save_figure(figure, context.output('f.png'))
  plt.close(figure)
  png = (bucket / 'bucket' / 'results' / 'f.png').read_bytes()
  assert png[:8] == b'\x89PNG\r\n\x1a\n'


@pytest.mark.slow  # ~80 s on 2 busy cores: a 2-step run, evaluated twice.
def test_a_run_writes_its_files_through_an_epath_workdir(tmp_path,
                                                         monkeypatch):
  """A relative epath.Path workdir (orbax needs it made absolute), then the
  same run resumed through a string."""
  from evalnorm.training import trainer  # pylint: disable=g-import-not-at-top
  monkeypatch.chdir(tmp_path)
  config = small_digits_config(num_train_steps=2, checkpoint_every_steps=2,
                               log_every_steps=1)
  report = trainer.train_and_evaluate(config, epath.Path('run'))
  workdir = epath.Path(tmp_path) / 'run'
  written = files.read_json(workdir / 'eval.json')
  assert written['step'] == 2 and written['eval'] == report['eval']
  assert [p.name for p in (workdir / 'checkpoints').iterdir()] == ['2']
  assert list(workdir.glob('events.out.tfevents.*'))
  # Nothing left to train: the saved state is evaluated again.
  again = trainer.train_and_evaluate(config, 'run')
  np.testing.assert_equal(again['eval'], report['eval'])
