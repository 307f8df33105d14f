"""Failures: divergence, damaged checkpoints, preemption (SIGTERM) and SIGKILL."""

import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from evalnorm import checkpoint, train

from digits_runs import ROOT, read_eval, small_digits_config


def test_divergence_stops_with_one_line_and_saves_no_bad_state(tmp_path):
  config = small_digits_config(learning_rate=1e6, num_train_steps=30,
                               log_every_steps=5, checkpoint_every_steps=5)
  with pytest.raises(train.TrainingDiverged) as error:
    train.train_and_evaluate(config, str(tmp_path))
  message = str(error.value)
  assert 'diverged' in message and 'step' in message and '\n' not in message
  # Whatever was saved before the blow-up is finite.
  manager = checkpoint.make_manager(str(tmp_path), create=False)
  if manager.latest_step() is not None:
    model = train.build_model(config, 10)
    template = model.init(jax.random.PRNGKey(0), jnp.zeros((2, 8, 8, 1)),
                          train=False)
    saved = checkpoint.restore_variables(manager, template)
    assert all(np.all(np.isfinite(v)) for v in jax.tree_util.tree_leaves(saved))


def garble(directory):
  """Truncates every file of a checkpoint, as a full disk or cut copy would."""
  for root, _, files in os.walk(directory):
    for name in files:
      with open(os.path.join(root, name), 'r+b') as f:
        f.truncate(max(os.path.getsize(f.name) // 3, 1))
        f.seek(0)
        f.write(b'garbage')


def test_damaged_latest_checkpoint_falls_back_and_resumes_exactly(trained_run,
                                                                tmp_path):
  config, original, uninterrupted = trained_run
  workdir = str(tmp_path / 'run')
  shutil.copytree(original, workdir)
  garble(os.path.join(workdir, 'checkpoints', '20'))
  os.remove(os.path.join(workdir, 'eval.json'))
  resumed = train.train_and_evaluate(config, workdir)
  assert resumed['eval'] == uninterrupted['eval']
  assert resumed['alpha_beta'] == uninterrupted['alpha_beta']
  assert os.listdir(os.path.join(workdir, 'unreadable_checkpoints'))


def test_no_readable_checkpoint_is_an_error_not_a_fresh_start(trained_run,
                                                               tmp_path):
  config, original, _ = trained_run
  workdir = str(tmp_path / 'run')
  shutil.copytree(original, workdir)
  for step in ('10', '20'):
    garble(os.path.join(workdir, 'checkpoints', step))
  with pytest.raises(checkpoint.CheckpointError, match='no usable checkpoint'):
    train.train_and_evaluate(config, workdir)
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['10', '20']


def start_run(workdir, *extra):
  args = [sys.executable, '-m', 'evalnorm.main', '--config=configs/digits.py',
          f'--workdir={workdir}', '--config.dataset=digits',
          '--config.stem_strides=1', '--config.num_train_steps=400',
          '--config.checkpoint_every_steps=50', '--config.log_every_steps=50',
          '--config.batch_size=32', '--config.eval_batch_size=64', *extra]
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=1')
  os.makedirs(workdir, exist_ok=True)
  # Logs go to a file: an undrained pipe would block the run once it fills.
  log = open(os.path.join(os.path.dirname(workdir), f'{os.path.basename(workdir)}.log'), 'a')
  process = subprocess.Popen(args, cwd=ROOT, env=env, stdout=log, stderr=log)
  process.log_path = log.name
  return process


def log_of(process):
  with open(process.log_path) as f:
    return f.read()


def wait_for_checkpoint(workdir, process, timeout=240):
  checkpoints = os.path.join(workdir, 'checkpoints')
  deadline = time.time() + timeout
  while time.time() < deadline and process.poll() is None:
    if os.path.isdir(checkpoints) and any(
        name.isdigit() for name in os.listdir(checkpoints)):
      return
    time.sleep(0.2)
  raise AssertionError('no checkpoint appeared')


@pytest.mark.slow  # three training processes, ~2 minutes on 2 cores.
@pytest.mark.parametrize('kill_signal', [signal.SIGKILL, signal.SIGTERM])
def test_killed_run_resumes_to_the_uninterrupted_result(tmp_path, kill_signal):
  reference = start_run(str(tmp_path / 'reference'))
  assert reference.wait(timeout=600) == 0, log_of(reference)[-2000:]
  workdir = str(tmp_path / 'killed')
  run = start_run(workdir)
  wait_for_checkpoint(workdir, run)
  run.send_signal(kill_signal)
  status = run.wait(timeout=120)
  if kill_signal == signal.SIGTERM:
    assert status == 143 and 'rerun the same command' in log_of(run)
  else:
    assert status == -signal.SIGKILL
  assert not os.path.exists(os.path.join(workdir, 'eval.json'))
  rerun = start_run(workdir)
  assert rerun.wait(timeout=600) == 0, log_of(rerun)[-2000:]
  expected, got = read_eval(tmp_path / 'reference'), read_eval(workdir)
  for mode, metrics in expected['eval'].items():
    assert got['eval'][mode]['loss'] == pytest.approx(metrics['loss'], abs=1e-6)
  for layer, values in expected['alpha_beta'].items():
    assert got['alpha_beta'][layer] == pytest.approx(values, abs=1e-6)
