"""Which code, libraries and machine produced the committed results.

``run_all`` records each of its invocations (the commit it ran at, whether
the tree was clean, the wall time each script added) in the workdir root,
because a regeneration interrupted and rerun is several invocations over one
set of runs; it then writes ``provenance.json`` to the results directory:
every invocation over that workdir root, the package versions, the machine,
and the minutes per script summed over the invocations.
"""

import datetime
import importlib.metadata
import os
import platform
import subprocess

from evalnorm import paths

# The libraries whose versions can change a number.
PACKAGES = ('jax', 'jaxlib', 'flax', 'optax', 'orbax-checkpoint', 'numpy',
            'ml-collections', 'clu', 'tensorflow-cpu', 'tensorflow-datasets',
            'pycocotools')
# What a regeneration or a benchmark writes: not a change of the code that
# produced it.
OUTPUTS = ('experiments/results/', 'benchmarks/results/')
INVOCATIONS = 'run_all_invocations.json'


def git_state(root: str) -> dict:
  """{'commit', 'clean'}: HEAD, and whether tracked or untracked files
  outside ``OUTPUTS`` differ from it (None for both outside a git tree)."""
  def git(*args):
    return subprocess.run(['git', *args], cwd=root, capture_output=True,
                          text=True, check=True).stdout
  try:
    commit = git('rev-parse', 'HEAD').strip()
    changed = [line[3:] for line in git('status', '--porcelain').splitlines()]
  except (OSError, subprocess.CalledProcessError):
    return {'commit': None, 'clean': None}
  return {'commit': commit,
          'clean': not [p for p in changed if not p.startswith(OUTPUTS)]}


def package_versions() -> dict[str, str | None]:
  versions = {'python': platform.python_version()}
  for name in PACKAGES:
    try:
      versions[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      versions[name] = None
  return versions


def cpu_model() -> str:
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def machine(gpus) -> dict:
  """The devices runs get: this CPU (runs fake their devices on it) or GPUs."""
  return {'cpu': cpu_model(), 'cpu_cores': os.cpu_count(),
          'gpus': list(gpus), 'xla_flags': os.environ.get('XLA_FLAGS', '')}


def start(root: str, scale: str, jobs: int) -> dict:
  """An invocation's record, before its scripts run."""
  return {'started': datetime.datetime.now(datetime.timezone.utc).isoformat(
      timespec='seconds'), 'scale': scale, 'jobs': jobs, **git_state(root)}


def finish(invocation: dict, seconds: dict[str, float], workdir_root: str,
           gpus, results_path: str) -> dict:
  """Appends ``invocation`` (with its per-script seconds) to the workdir
  root's list and writes the provenance record of all of them."""
  log = paths.path(workdir_root) / INVOCATIONS
  invocations = paths.read_json(log) if log.exists() else []
  invocations.append(dict(invocation, seconds=seconds))
  log.parent.mkdir(parents=True, exist_ok=True)
  paths.write_json(log, invocations)
  record = {
      'commits': sorted({i['commit'] for i in invocations if i['commit']}),
      'clean': all(i['clean'] for i in invocations),
      'packages': package_versions(),
      'machine': machine(gpus),
      'minutes_per_script': minutes_per_script(invocations),
      'invocations': invocations,
  }
  paths.write_json(paths.path(results_path), record)
  return record


def minutes_per_script(invocations: list[dict]) -> dict[str, float]:
  """Wall minutes each script added, summed over the invocations."""
  total = {}
  for invocation in invocations:
    for name, seconds in invocation['seconds'].items():
      total[name] = total.get(name, 0.0) + seconds / 60
  return {name: round(minutes, 1) for name, minutes in total.items()}
