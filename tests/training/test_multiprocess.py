"""Two real `python -m evalnorm.main` processes joined by jax.distributed.

Each process has 4 fake CPU devices (``multiprocess_jobs``). Slow: several
training processes. Also here, in one process: how the processes agree on
the step to stop after (preemption.StopAgreement).
"""

import functools
import os
import re
import signal
import time

import jax
import numpy as np
import pytest
from absl import flags

from evalnorm.training import checkpoint, preemption, trainer

import multiprocess_jobs
from multiprocess_jobs import log_of
from training_helpers import read_eval, small_digits_config

COMMON = ['--config=configs/digits.py', '--config.dataset=digits',
          '--config.stem_strides=1', '--config.batch_size=16',
          '--config.eval_batch_size=64', '--config.eval_every_steps=1000']
TIMEOUT_S = 30  # config.distributed_timeout_s of these runs


@pytest.fixture
def processes(tmp_path):
  """Starts the processes of a job; kills leftovers and prints logs after."""
  with multiprocess_jobs.launcher(tmp_path, COMMON, TIMEOUT_S) as start_job:
    yield start_job


# Every multi-process test runs on both ways of running the programs.
PARALLELISMS = pytest.mark.parametrize('parallelism', ['pmap', 'shard_map'])


@pytest.mark.slow  # 2 processes + a 1-process run: 3 min on 2 busy cores.
@pytest.mark.xdist_group('multiprocess')
@PARALLELISMS
def test_two_processes_train_as_one_process(tmp_path, processes, parallelism):
  job = processes(tmp_path / 'two', '--config.num_train_steps=6',
                  '--config.checkpoint_every_steps=3',
                  f'--config.parallelism={parallelism}')
  assert [p.wait(timeout=600) for p in job] == [0, 0]
  two = read_eval(tmp_path / 'two')
  assert sorted(os.listdir(tmp_path / 'two' / 'checkpoints')) == ['3', '6']
  # The reference is pmap on 8 devices in one process, whichever path ran.
  config = small_digits_config(num_train_steps=6, checkpoint_every_steps=3)
  one = trainer.train_and_evaluate(config, str(tmp_path / 'one'))  # 8 devices
  # train_stats normalizes groups of eval examples, and each process holds
  # its own share of the eval set: the one mode whose groups differ.
  for mode in set(one['eval']) - {'train_stats'}:
    assert two['eval'][mode]['loss'] == pytest.approx(
        one['eval'][mode]['loss'], abs=1e-5), mode
  for layer, values in one['alpha_beta'].items():
    assert two['alpha_beta'][layer] == pytest.approx(values, abs=1e-6)


def wait_for_checkpoint(workdir, step: int, process, timeout_s=400):
  """Returns once the checkpoint of ``step`` exists in ``workdir``."""
  checkpoints = workdir / 'checkpoints'
  deadline = time.time() + timeout_s
  while not (checkpoints.is_dir() and str(step) in os.listdir(checkpoints)):
    assert time.time() < deadline and process.poll() is None, 'no checkpoint'
    time.sleep(0.2)


@pytest.mark.slow  # two 2-process jobs: 7 min on 2 busy cores.
@pytest.mark.xdist_group('multiprocess')
@PARALLELISMS
def test_a_dead_process_stops_the_other_and_the_job_resumes(tmp_path,
                                                            processes,
                                                            parallelism):
  workdir = tmp_path / 'run'
  args = ('--config.num_train_steps=300', '--config.checkpoint_every_steps=20',
          '--config.log_every_steps=20', f'--config.parallelism={parallelism}')
  job = processes(workdir, *args)
  wait_for_checkpoint(workdir, 20, job[0])
  job[1].send_signal(signal.SIGKILL)
  killed_at = time.time()
  status = job[0].wait(timeout=TIMEOUT_S + 120)
  assert status != 0 and time.time() - killed_at < TIMEOUT_S + 60
  assert 'another task died' in log_of(job[0])
  saved = max(int(n) for n in os.listdir(workdir / 'checkpoints') if n.isdigit())
  rerun = processes(workdir, *args, name='rerun')
  assert [p.wait(timeout=900) for p in rerun] == [0, 0]
  assert f'Resumed from step {saved} ' in log_of(rerun[0])
  assert read_eval(workdir)['step'] == 300


def test_orbax_barriers_leave_the_devices_with_several_processes(monkeypatch):
  """Orbax's background-thread barriers must not be device all-reduces,
  which gloo can pair with another process's training step (see
  ``checkpoint.use_coordination_service_barriers``)."""
  barrier = flags.FLAGS['experimental_orbax_use_distributed_barrier']
  monkeypatch.setattr(barrier, 'value', barrier.value)
  monkeypatch.setattr(barrier, 'present', barrier.present)
  checkpoint.use_coordination_service_barriers()
  assert not barrier.value  # one process: nothing to pair
  monkeypatch.setattr(jax, 'process_count', lambda: 2)
  checkpoint.use_coordination_service_barriers()
  assert barrier.value


def test_processes_stop_after_the_same_step_one_step_late(monkeypatch):
  """The sum of the flags read back is the previous step's, the same on
  every process: a notice during step 2 stops them all after step 3."""
  monkeypatch.setattr(jax, 'process_count', lambda: 2)
  agreement = preemption.StopAgreement()
  sums = []

  def pmapped_step(state, batch, flags):  # both processes' flags: twice ours
    sums.append(jax.numpy.full(len(flags), 2 * flags.sum(), np.float32))
    return state + 1, {'batch': batch}, sums[-1]
  stops = [agreement.step(pmapped_step, step - 1, None, received)[2]
           for step, received in ((1, False), (2, True), (3, True))]
  assert stops == [False, False, True]


@pytest.mark.slow  # ~1 minute on 2 busy cores: compiles the train step twice.
def test_the_stop_flags_ride_on_the_steps_own_all_reduce(monkeypatch):
  """Folded into the step, the flags' psum adds no collective: XLA merges it
  into the step's one all-reduce of gradients and metrics."""
  from training_helpers import small_digits_config  # pylint: disable=g-import-not-at-top
  from evalnorm import data  # pylint: disable=g-import-not-at-top
  from evalnorm.training import builders, parallel
  config = small_digits_config()
  dataset = data.make_dataset(config)
  model = builders.build_model(config, dataset.num_classes)
  state = parallel.replicate(trainer.create_train_state(
      model, jax.random.PRNGKey(0), config.norm_batch_size,
      dataset.image_shape, trainer.Optimizers.from_config(config, 10)))
  batch = parallel.shard(next(dataset.train_batches(0)))

  def plain(state, batch):  # the SGD step that trainer.TrainPrograms wraps
    return trainer.sgd_step(state, trainer.classifier_forward(state, batch))
  monkeypatch.setattr(jax, 'process_count', lambda: 2)  # wrap as for 2

  def all_reduces(step_fn, *args):
    compiled = parallel.pmap(step_fn).lower(state, batch, *args).compile()
    return len(re.findall(r' all-reduce(?:-start)?\(', compiled.as_text()))
  flags = np.zeros(jax.local_device_count(), np.float32)
  assert all_reduces(preemption.StopAgreement().wrap(plain), flags) == (
      all_reduces(plain))


def preempted_step(process) -> int:
  """The step the process saved before exiting 143 (from its message)."""
  match = re.search(r'SIGTERM received: saved a checkpoint at step (\d+)',
                    log_of(process))
  assert match, 'no preemption message'
  return int(match.group(1))


@pytest.mark.slow  # three 2-process jobs: ~6 min on 2 busy cores.
@pytest.mark.xdist_group('multiprocess')
@PARALLELISMS
def test_sigterm_to_both_processes_saves_one_step_and_resumes_exactly(
    tmp_path, processes, parallelism):
  """The notices arrive at different moments (process 1's first, then the
  coordinator's); both processes stop after the same step, save it once and
  exit 143; rerunning both ends where the uninterrupted job ends."""
  args = ('--config.num_train_steps=40', '--config.checkpoint_every_steps=5',
          '--config.log_every_steps=5', f'--config.parallelism={parallelism}')
  start = functools.partial(processes, timeout_s=120)  # no process dies here
  reference = start(tmp_path / 'reference', *args, name='reference')
  assert [p.wait(timeout=600) for p in reference] == [0, 0]
  workdir = tmp_path / 'run'
  job = start(workdir, *args)
  wait_for_checkpoint(workdir, 5, job[0])
  job[1].send_signal(signal.SIGTERM)
  time.sleep(0.5)  # a few steps at most; the agreement may already be made
  job[0].send_signal(signal.SIGTERM)
  assert [p.wait(timeout=300) for p in job] == [143, 143]
  saved = preempted_step(job[0])
  assert preempted_step(job[1]) == saved and 5 <= saved < 40
  names = os.listdir(workdir / 'checkpoints')
  assert all(name.isdigit() for name in names), names  # no tmp directory
  assert max(int(name) for name in names) == saved, names
  assert not (workdir / 'eval.json').exists()
  rerun = start(workdir, *args, name='rerun')
  assert [p.wait(timeout=600) for p in rerun] == [0, 0]
  assert f'Resumed from step {saved} ' in log_of(rerun[0])
  expected, got = read_eval(tmp_path / 'reference'), read_eval(workdir)
  assert got['step'] == 40
  for mode, metrics in expected['eval'].items():
    assert got['eval'][mode]['loss'] == pytest.approx(metrics['loss'],
                                                      abs=1e-6), mode
  for layer, values in expected['alpha_beta'].items():
    assert got['alpha_beta'][layer] == pytest.approx(values, abs=1e-6)
