"""Running the training and estimation jobs that the experiment scripts share.

Every experiment is a set of `Run`s: one `python -m evalnorm.main` (training)
or `python -m evalnorm.estimate` (offline estimation) command each, in its own
process so that each can have its own number of (fake CPU) devices and a crash
in one does not take the others down. A run whose workdir already holds an
``eval.json`` is not run again: the scripts share runs (Fig. 2, 3 and 4 read
the same sweep), and an interrupted regeneration resumes where it stopped
(``evalnorm.main`` itself resumes from the last checkpoint).

Each run's process sees ``Run.devices`` devices: that many fake CPU devices
on a CPU machine, and that many of the machine's GPUs on a GPU machine (taken
from a pool, so that concurrent runs get different GPUs). So a CIFAR run is
one device, SGD batch 128 cut into groups of B, whatever the machine.
"""

import concurrent.futures
import contextlib
import dataclasses
import functools
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from typing import Any

from evalnorm.training import files
from experiments.scales import Scale


# Where the code is (the runs' working directory; configs are read from
# there). Every file the runs write or read goes through evalnorm.training.files:
# --workdir_root and --results_dir may be bucket paths (gs://...).
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS_DIR = files.join(ROOT, 'experiments', 'results')
WORKDIR_ROOT = files.join(ROOT, 'experiments', 'workdirs')


@dataclasses.dataclass(frozen=True)
class Run:
  """One command: train (``checkpoint`` None) or estimate offline from a run."""
  name: str
  config: str
  overrides: tuple[tuple[str, Any], ...]
  devices: int = 1                  # devices its process sees (CPU or GPU)
  checkpoint: str | None = None     # offline estimation: the trained run's name


def make_run(name: str, scale: Scale, devices: int = 1,
             checkpoint: str | None = None, config: str | None = None,
             **overrides) -> Run:
  """A run of ``scale`` (its config and shared overrides) plus ``overrides``."""
  merged = dict(scale.overrides if config is None else {})
  merged.update(overrides)
  return Run(name, config or scale.config, tuple(sorted(merged.items())),
             devices, checkpoint)


def _format_value(value) -> str:
  if isinstance(value, (tuple, list)):
    return '(' + ','.join(str(v) for v in value) + ',)'
  return str(value)


def command(run: Run, workdir_root: str) -> list[str]:
  """The command line of ``run``, as a user would type it."""
  workdir = files.join(workdir_root, run.name)
  module = 'evalnorm.main' if run.checkpoint is None else 'evalnorm.estimate'
  args = [sys.executable, '-m', module, f'--config={run.config}',
          f'--workdir={workdir}']
  if run.checkpoint is not None:
    args.append(f'--checkpoint={files.join(workdir_root, run.checkpoint)}')
  args += [f'--config.{k}={_format_value(v)}' for k, v in run.overrides]
  return args


class RunFailed(RuntimeError):
  """A run exited with an error; the message ends with its log's tail."""


def _environment(devices: int, gpus: Sequence[str]) -> dict[str, str]:
  """A run's environment: ``devices`` fake CPU devices, and ``gpus`` if any.

  pmap splits the SGD batch over every device a process sees, so limiting
  what it sees is what keeps the paper's one-device CIFAR setup on a
  multi-GPU machine.
  """
  env = dict(os.environ)
  flags = [f for f in env.get('XLA_FLAGS', '').split()
           if not f.startswith('--xla_force_host_platform_device_count')]
  flags.append(f'--xla_force_host_platform_device_count={devices}')
  env['XLA_FLAGS'] = ' '.join(flags)
  if gpus:
    env['CUDA_VISIBLE_DEVICES'] = ','.join(gpus)
  env.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  return env


@functools.cache
def machine_gpus() -> tuple[str, ...]:
  """This machine's NVIDIA GPUs (as CUDA_VISIBLE_DEVICES would name them)."""
  visible = os.environ.get('CUDA_VISIBLE_DEVICES')
  if visible is not None:
    return tuple(v.strip() for v in visible.split(',') if v.strip())
  try:
    listed = subprocess.run(
        ['nvidia-smi', '--query-gpu=index', '--format=csv,noheader'],
        capture_output=True, text=True, timeout=60, check=True)
  except (OSError, subprocess.SubprocessError):
    return ()
  return tuple(listed.stdout.split())


class DevicePool:
  """Hands each run its own GPUs, waiting while concurrent runs hold them."""

  def __init__(self, gpus: Sequence[str]):
    self._free = list(gpus)
    self._count = len(gpus)
    self._changed = threading.Condition()

  @contextlib.contextmanager
  def take(self, devices: int):
    """Up to ``devices`` GPUs (none on a machine without GPUs)."""
    # A machine with fewer GPUs than asked runs the same groups of B on
    # fewer devices (more per device); the config's validation checks it.
    count = min(devices, self._count)
    with self._changed:
      self._changed.wait_for(lambda: len(self._free) >= count)
      taken, self._free = self._free[:count], self._free[count:]
    try:
      yield taken
    finally:
      with self._changed:
        self._free += taken
        self._changed.notify_all()


def read_eval(workdir: files.PathLike) -> dict | None:
  path = files.path(workdir) / 'eval.json'
  if not path.exists():
    return None
  return files.read_json(path)


@contextlib.contextmanager
def appending(path):
  """A local file object whose writes end up appended to ``path``.

  A child process writes to a file descriptor, which only a local file
  has: a bucket's log is written locally and appended to it at the end.
  """
  if not files.is_remote(path):
    with path.open('a') as log:
      yield log
    return
  with tempfile.TemporaryFile('w+') as log:
    try:
      yield log
    finally:
      log.seek(0)
      before = path.read_text() if path.exists() else ''
      path.write_text(before + log.read())


def prerequisites(run: Run, workdir_root: str) -> set[str]:
  """Names of the runs ``run`` reads: its checkpoint, or its ``init_from``."""
  names = {run.checkpoint} if run.checkpoint else set()
  init_from = dict(run.overrides).get('init_from')
  if init_from and os.path.dirname(init_from) == workdir_root:
    names.add(os.path.basename(init_from))
  return names


def _execute_one(run: Run, workdir_root: str, pool: DevicePool,
                 before: Sequence[concurrent.futures.Future] = ()) -> dict:
  workdir = files.path(workdir_root) / run.name
  done = read_eval(workdir)
  if done is not None:
    return done
  for future in before:  # the runs it reads; their failure is its failure
    future.result()
  workdir.mkdir(parents=True, exist_ok=True)
  log_path = workdir / 'log.txt'
  started = time.time()
  with appending(log_path) as log, pool.take(run.devices) as gpus:
    log.write(' '.join(command(run, workdir_root)) + '\n')
    log.flush()
    status = subprocess.call(command(run, workdir_root), cwd=ROOT,
                             stdout=log, stderr=subprocess.STDOUT,
                             env=_environment(run.devices, gpus))
  if status != 0:
    tail = ''.join(log_path.read_text().splitlines(keepends=True)[-15:])
    raise RunFailed(f'run {run.name} exited with status {status}; '
                    f'log {log_path} ends with:\n{tail}')
  result = read_eval(workdir)
  result['wall_seconds'] = round(time.time() - started, 1)
  files.write_json(workdir / 'eval.json', result)
  print(f'  {run.name}: done in {result["wall_seconds"]:.0f} s', flush=True)
  return result


def execute(runs: Sequence[Run], workdir_root: str, jobs: int = 1
            ) -> dict[str, dict]:
  """Runs what has no eval.json yet (``jobs`` at a time); {name: eval.json}.

  A run that reads another (``prerequisites``) starts once that one is done;
  listed after it, it cannot wait for a run that waits for a free job.
  """
  todo = [r for r in runs if read_eval(files.join(workdir_root, r.name)) is None]
  if todo:
    print(f'{len(todo)} of {len(runs)} runs to do in {workdir_root}', flush=True)
  devices = DevicePool(machine_gpus())
  with concurrent.futures.ThreadPoolExecutor(max(1, jobs)) as pool:
    futures = {}
    for r in runs:
      before = [futures[n] for n in prerequisites(r, workdir_root)
                if n in futures]
      futures[r.name] = pool.submit(_execute_one, r, workdir_root, devices,
                                    before)
    return {name: f.result() for name, f in futures.items()}


# What a finished run's eval.json says, in the units the paper reports.


def top1(result: dict, mode: str) -> float:
  return result['eval'][mode]['top1']


def top5(result: dict, mode: str) -> float:
  """Top-5 in percent (the paper's Recall@5); NaN for a run evaluated
  before eval.json recorded it."""
  return result['eval'][mode].get('top5', float('nan'))


def error(result: dict, mode: str) -> float:
  """Test error in percent, as the paper plots it."""
  return 100.0 - top1(result, mode)
