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

from evalnorm.training import files

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


def start(root: str, scale: str, jobs: int, workdir_root: str) -> int:
  """Records an invocation in the workdir root before its scripts run, so a
  regeneration killed halfway still shows its commit and the scripts it
  finished; returns its index for ``script_done``."""
  record = {'started': datetime.datetime.now(datetime.timezone.utc).isoformat(
      timespec='seconds'), 'scale': scale, 'jobs': jobs, **git_state(root),
            'seconds': {}}
  invocations = _invocations(workdir_root)
  invocations.append(record)
  _save(workdir_root, invocations)
  return len(invocations) - 1


def script_done(workdir_root: str, index: int, name: str,
                seconds: float) -> None:
  """Adds a finished script's wall seconds to invocation ``index``."""
  invocations = _invocations(workdir_root)
  invocations[index]['seconds'][name] = round(seconds, 1)
  _save(workdir_root, invocations)


def _invocations(workdir_root: str) -> list[dict]:
  log = files.path(workdir_root) / INVOCATIONS
  return files.read_json(log) if log.exists() else []


def _save(workdir_root: str, invocations: list[dict]) -> None:
  log = files.path(workdir_root) / INVOCATIONS
  log.parent.mkdir(parents=True, exist_ok=True)
  files.write_json(log, invocations)


def finish(workdir_root: str, gpus, results_path: str,
           earlier: list[dict] = ()) -> dict:
  """Writes the provenance record of every invocation over the workdir root
  and of the ``earlier`` ones (a record that a regeneration of some scripts
  adds to), each once."""
  earlier = list(earlier)
  invocations = earlier + [i for i in _invocations(workdir_root)
                           if i not in earlier]
  record = {
      'commits': sorted({i['commit'] for i in invocations if i['commit']}),
      'clean': all(i['clean'] for i in invocations),
      'packages': package_versions(),
      'machine': machine(gpus),
      'minutes_per_script': minutes_per_script(invocations),
      'invocations': invocations,
  }
  files.write_json(files.path(results_path), record)
  return record


def minutes_per_script(invocations: list[dict]) -> dict[str, float]:
  """Wall minutes each script added, summed over the invocations."""
  total = {}
  for invocation in invocations:
    for name, seconds in invocation['seconds'].items():
      total[name] = total.get(name, 0.0) + seconds / 60
  return {name: round(minutes, 1) for name, minutes in total.items()}


def headlines(record: dict) -> dict:
  """What the README shows of a record: the commits in the order they ran,
  whether every tree was clean, the machine and the package versions."""
  invocations = sorted(record['invocations'], key=lambda i: i['started'])
  return {'commits': list(dict.fromkeys(i['commit'][:7] for i in invocations
                                        if i['commit'])),
          'clean': record['clean'], 'machine': record['machine'],
          'packages': record['packages']}
