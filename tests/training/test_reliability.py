"""Failures: divergence, damaged checkpoints, preemption (SIGTERM) and SIGKILL."""

import functools
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import jax_utils

from evalnorm import data
from evalnorm.training import (builders, checkpoint, evaluation, parallel,
                               preemption, trainer)

from training_helpers import ROOT, logged_steps, read_eval, small_digits_config


def spy_on_managers(monkeypatch):
  """The checkpoint managers a run makes, each counting its waits for saves."""
  managers = []

  def make_manager(*args, **kwargs):
    manager = make(*args, **kwargs)
    wait = manager.wait_until_finished
    manager.waits = 0

    def counting_wait():
      manager.waits += 1
      wait()
    manager.wait_until_finished = counting_wait
    managers.append(manager)
    return manager
  make = checkpoint.make_manager
  monkeypatch.setattr(checkpoint, 'make_manager', make_manager)
  return managers


def test_divergence_stops_with_one_line_and_saves_no_bad_state(tmp_path,
                                                               monkeypatch):
  """Checkpoints every step, written asynchronously, until the loss is NaN.

  The run waits for the save in flight before the error leaves it, so the
  last checkpoint is complete, finite and readable.
  """
  config = small_digits_config(learning_rate=1e6, num_train_steps=30,
                               log_every_steps=1, checkpoint_every_steps=1)
  managers = spy_on_managers(monkeypatch)
  with pytest.raises(trainer.TrainingDiverged) as error:
    trainer.train_and_evaluate(config, str(tmp_path))
  message = str(error.value)
  assert 'diverged' in message and 'step' in message and '\n' not in message
  assert managers[0].waits > 0
  assert not [name for name in os.listdir(tmp_path / 'checkpoints')
              if 'tmp' in name]
  manager = checkpoint.make_manager(str(tmp_path), create=False)
  assert manager.latest_step() is not None  # a save happened before the NaN
  model = builders.build_model(config, 10)
  # Shapes only (an eager init compiles every layer's initializer).
  template = jax.eval_shape(functools.partial(model.init, train=False),
                            jax.random.PRNGKey(0), jnp.zeros((2, 8, 8, 1)))
  saved = checkpoint.restore_variables(manager, template)
  assert all(np.all(np.isfinite(v)) for v in jax.tree_util.tree_leaves(saved))


def test_a_non_finite_state_is_never_saved(tmp_path):
  """The saved arrays are checked, not only the loss (computed before the
  step's update): finite metrics with a NaN statistic are refused."""
  config = small_digits_config()
  model = builders.build_model(config, 10)
  state = trainer.create_train_state(
      model, jax.random.PRNGKey(0), config.norm_batch_size,
      (8, 8, 1), trainer.Optimizers.from_config(config, 10))
  stats = state.batch_stats
  stats = {**stats, 'final_norm': {**stats['final_norm'],
                                   'var': stats['final_norm']['var'].at[3].set(
                                       jnp.nan)}}
  state = state.replace(batch_stats=stats)
  metrics = {name: np.zeros(8) for name in ('loss', 'aux_loss', 'grad_norm')}
  manager = checkpoint.make_manager(str(tmp_path), asynchronous=False)
  with pytest.raises(trainer.TrainingDiverged, match='batch_stats/final_norm/var'):
    trainer.save_checkpoint(manager, parallel.Pmap(), 1,
                            jax_utils.replicate(state), metrics, {})
  assert manager.latest_step() is None


def garble(directory):
  """Truncates every file of a checkpoint, as a full disk or cut copy would."""
  for root, _, files in os.walk(directory):
    for name in files:
      with open(os.path.join(root, name), 'r+b') as f:
        f.truncate(max(os.path.getsize(f.name) // 3, 1))
        f.seek(0)
        f.write(b'garbage')


def test_damaged_latest_checkpoint_falls_back_and_resumes_exactly(
    trained_run, tmp_path, caplog):
  """Step 20 is garbled: the run restores step 10 and trains on from it."""
  config, original, uninterrupted = trained_run
  workdir = str(tmp_path / 'run')
  shutil.copytree(original, workdir)
  garble(os.path.join(workdir, 'checkpoints', '20'))
  os.remove(os.path.join(workdir, 'eval.json'))
  caplog.set_level(logging.INFO)
  resumed = trainer.train_and_evaluate(config, workdir)
  # Steps 11-20 ran again (step 10 logged by a fresh start would show), from
  # step 10's state: the uninterrupted result, alpha/beta's Adam state too.
  assert min(logged_steps(caplog)) > 10
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
    trainer.train_and_evaluate(config, workdir)
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['10', '20']


def send_sigterm_first(function):
  """``function``, called after this process sent itself SIGTERM."""
  def wrapper(*args, **kwargs):
    # Without a handler of the run's, SIGTERM would end pytest itself.
    assert callable(signal.getsignal(signal.SIGTERM)), 'SIGTERM is unhandled'
    os.kill(os.getpid(), signal.SIGTERM)
    return function(*args, **kwargs)
  return wrapper


def test_sigterm_during_start_up_stops_with_a_message(tmp_path, monkeypatch):
  before = signal.getsignal(signal.SIGTERM)
  monkeypatch.setattr(data, 'make_dataset', send_sigterm_first(data.make_dataset))
  with pytest.raises(preemption.Preempted, match='start-up.*nothing new to save'):
    trainer.train_and_evaluate(small_digits_config(), str(tmp_path))
  assert signal.getsignal(signal.SIGTERM) == before


def test_sigterm_during_final_evaluation_keeps_the_trained_state(
    trained_run, tmp_path, monkeypatch):
  config, original, _ = trained_run
  workdir = str(tmp_path / 'run')
  shutil.copytree(original, workdir)
  os.remove(os.path.join(workdir, 'eval.json'))
  monkeypatch.setattr(evaluation.Evaluator, '__call__',
                      send_sigterm_first(evaluation.Evaluator.__call__))
  with pytest.raises(preemption.Preempted, match='final evaluation.*step 20'):
    trainer.train_and_evaluate(config, workdir)
  assert not os.path.exists(os.path.join(workdir, 'eval.json'))
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['10', '20']


def start_run(workdir, *extra, log_name=None):
  args = [sys.executable, '-m', 'evalnorm.main', '--config=configs/digits.py',
          f'--workdir={workdir}', '--config.dataset=digits',
          '--config.stem_strides=1', '--config.num_train_steps=400',
          '--config.checkpoint_every_steps=50', '--config.log_every_steps=50',
          '--config.batch_size=32', '--config.eval_batch_size=64', *extra]
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=1')
  os.makedirs(workdir, exist_ok=True)
  # Logs go to a file: an undrained pipe would block the run once it fills.
  log_name = log_name or f'{os.path.basename(workdir)}.log'
  log = open(os.path.join(os.path.dirname(workdir), log_name), 'a')
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
  saved = max(int(name) for name in os.listdir(os.path.join(workdir, 'checkpoints'))
              if name.isdigit())
  rerun = start_run(workdir, log_name='rerun.log')
  assert rerun.wait(timeout=600) == 0, log_of(rerun)[-2000:]
  # The rerun trained from the saved step on (a fresh start logs step 50).
  steps = [int(n) for n in re.findall(r'step (\d+)/\d+:', log_of(rerun))]
  assert saved >= 50 and min(steps) > saved, (saved, steps[:3])
  expected, got = read_eval(tmp_path / 'reference'), read_eval(workdir)
  for mode, metrics in expected['eval'].items():
    assert got['eval'][mode]['loss'] == pytest.approx(metrics['loss'], abs=1e-6)
  for layer, values in expected['alpha_beta'].items():
    assert got['alpha_beta'][layer] == pytest.approx(values, abs=1e-6)


@pytest.mark.slow  # two training processes, ~1 minute on 2 cores.
def test_diverged_run_leaves_complete_checkpoints_and_no_traceback(tmp_path):
  """A save every step, asynchronous, when the loss turns NaN: the process
  waits for the save in flight, prints one line, exits 1, and a rerun at a
  sane learning rate resumes from the last (complete) checkpoint."""
  workdir = str(tmp_path / 'run')
  run = start_run(workdir, '--config.learning_rate=1e6',
                  '--config.checkpoint_every_steps=1')
  assert run.wait(timeout=300) == 1, log_of(run)[-2000:]
  log = log_of(run)
  errors = [line for line in log.splitlines() if line.startswith('error:')]
  assert 'Traceback' not in log and len(errors) == 1 and 'diverged' in errors[0]
  names = os.listdir(os.path.join(workdir, 'checkpoints'))
  assert names and all(name.isdigit() for name in names), names
  latest = max(int(name) for name in names)
  rerun = start_run(workdir, '--config.num_train_steps=20',
                    '--config.learning_rate=0.01', log_name='rerun.log')
  rerun.wait(timeout=300)
  assert f'Resumed from step {latest} ' in log_of(rerun)
  assert 'Traceback' not in log_of(rerun)
