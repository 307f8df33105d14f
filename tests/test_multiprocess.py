"""Two real `python -m evalnorm.main` processes joined by jax.distributed.

Each process has 4 fake CPU devices (gloo collectives between them); they find
each other through the config keys coordinator_address, num_processes and
process_id. Slow: several training processes.
"""

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from evalnorm import train

from training_helpers import ROOT, read_eval, small_digits_config

COMMON = ['--config=configs/digits.py', '--config.dataset=digits',
          '--config.stem_strides=1', '--config.batch_size=16',
          '--config.eval_batch_size=64', '--config.eval_every_steps=1000']
TIMEOUT_S = 30  # config.distributed_timeout_s of these runs


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


@pytest.fixture
def processes(tmp_path):
  """Starts the processes of a job; kills leftovers and prints logs after."""
  started = []

  def start_job(workdir, *extra, name='job'):
    port = free_port()
    job = []
    for process_id in range(2):
      log = open(tmp_path / f'{name}-{process_id}.log', 'w')
      args = [sys.executable, '-m', 'evalnorm.main', f'--workdir={workdir}',
              *COMMON, '--config.distributed=true',
              f'--config.coordinator_address=localhost:{port}',
              '--config.num_processes=2', f'--config.process_id={process_id}',
              f'--config.distributed_timeout_s={TIMEOUT_S}', *extra]
      env = dict(os.environ, JAX_PLATFORMS='cpu',
                 XLA_FLAGS='--xla_force_host_platform_device_count=4')
      process = subprocess.Popen(args, cwd=ROOT, env=env, stdout=log,
                                 stderr=subprocess.STDOUT)
      process.log_path = log.name
      job.append(process)
    started.extend(job)
    return job
  yield start_job
  for process in started:
    if process.poll() is None:
      process.kill()
      process.wait()
    with open(process.log_path) as f:
      print(f'--- {process.log_path}\n{f.read()[-3000:]}')


def log_of(process):
  with open(process.log_path) as f:
    return f.read()


@pytest.mark.slow  # 2 processes + a 1-process run: 3 min on 2 busy cores.
@pytest.mark.xdist_group('multiprocess')
def test_two_processes_train_as_one_process(tmp_path, processes):
  job = processes(tmp_path / 'two', '--config.num_train_steps=6',
                  '--config.checkpoint_every_steps=3')
  assert [p.wait(timeout=600) for p in job] == [0, 0]
  two = read_eval(tmp_path / 'two')
  assert sorted(os.listdir(tmp_path / 'two' / 'checkpoints')) == ['3', '6']
  config = small_digits_config(num_train_steps=6, checkpoint_every_steps=3)
  one = train.train_and_evaluate(config, str(tmp_path / 'one'))  # 8 devices
  # train_stats normalizes groups of eval examples, and each process holds
  # its own share of the eval set: the one mode whose groups differ.
  for mode in set(one['eval']) - {'train_stats'}:
    assert two['eval'][mode]['loss'] == pytest.approx(
        one['eval'][mode]['loss'], abs=1e-5), mode
  for layer, values in one['alpha_beta'].items():
    assert two['alpha_beta'][layer] == pytest.approx(values, abs=1e-6)


@pytest.mark.slow  # two 2-process jobs: 7 min on 2 busy cores.
@pytest.mark.xdist_group('multiprocess')
def test_a_dead_process_stops_the_other_and_the_job_resumes(tmp_path,
                                                            processes):
  workdir = tmp_path / 'run'
  args = ('--config.num_train_steps=300', '--config.checkpoint_every_steps=20',
          '--config.log_every_steps=20')
  job = processes(workdir, *args)
  checkpoints = workdir / 'checkpoints'
  deadline = time.time() + 400
  while not (checkpoints.is_dir() and '20' in os.listdir(checkpoints)):
    assert time.time() < deadline and job[0].poll() is None, 'no checkpoint'
    time.sleep(0.5)
  job[1].send_signal(signal.SIGKILL)
  killed_at = time.time()
  status = job[0].wait(timeout=TIMEOUT_S + 120)
  assert status != 0 and time.time() - killed_at < TIMEOUT_S + 60
  assert 'another task died' in log_of(job[0])
  saved = max(int(n) for n in os.listdir(checkpoints) if n.isdigit())
  rerun = processes(workdir, *args, name='rerun')
  assert [p.wait(timeout=900) for p in rerun] == [0, 0]
  assert f'Resumed from step {saved} ' in log_of(rerun[0])
  assert read_eval(workdir)['step'] == 300
