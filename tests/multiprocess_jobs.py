"""Jobs of real `python -m evalnorm.main` processes joined by jax.distributed.

Each process has its own fake CPU devices (gloo collectives between them);
they find each other through the config keys coordinator_address,
num_processes and process_id. The multi-process tests of classification and
detection start their jobs with ``launcher``.
"""

import contextlib
import os
import socket
import subprocess
import sys

from training_helpers import ROOT


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def log_of(process) -> str:
  with open(process.log_path) as f:
    return f.read()


@contextlib.contextmanager
def launcher(log_dir, common_args, timeout_s: int, devices_per_process: int = 4):
  """Yields ``start_job(workdir, *extra, name='job', timeout_s=timeout_s)``,
  which starts 2 processes of ``common_args`` plus ``extra`` (their logs in
  ``log_dir``); on exit kills leftovers and prints each log's end.

  ``timeout_s``: the jobs' ``config.distributed_timeout_s`` by default.
  """
  started = []

  def start_job(workdir, *extra, name='job', timeout_s=timeout_s):
    port = free_port()
    job = []
    for process_id in range(2):
      log = open(os.path.join(log_dir, f'{name}-{process_id}.log'), 'w')
      args = [sys.executable, '-m', 'evalnorm.main', f'--workdir={workdir}',
              *common_args, '--config.distributed=true',
              f'--config.coordinator_address=localhost:{port}',
              '--config.num_processes=2', f'--config.process_id={process_id}',
              f'--config.distributed_timeout_s={timeout_s}', *extra]
      env = dict(os.environ, JAX_PLATFORMS='cpu',
                 XLA_FLAGS='--xla_force_host_platform_device_count='
                 f'{devices_per_process}')
      # Not the session's compilation cache: only process 0 writes it, so a
      # later job's process 0 would start at once and wait for process 1,
      # compiling, at the first collective, longer than the timeout.
      env.pop('JAX_COMPILATION_CACHE_DIR', None)
      process = subprocess.Popen(args, cwd=ROOT, env=env, stdout=log,
                                 stderr=subprocess.STDOUT)
      process.log_path = log.name
      job.append(process)
    started.extend(job)
    return job
  try:
    yield start_job
  finally:
    for process in started:
      if process.poll() is None:
        process.kill()
        process.wait()
      print(f'--- {process.log_path}\n{log_of(process)[-3000:]}')
