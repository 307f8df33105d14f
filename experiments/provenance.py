"""Which code, libraries and machine produced the committed results.

``run_all`` records each of its invocations (the commit it ran at, whether
the tree was clean, the machine, the wall time each script added) in the
workdir root, because a regeneration interrupted and rerun is several
invocations over one set of runs; it then writes ``provenance.json`` to the
results directory: per script, the commits its results come from; the
invocations at those commits; the package versions; and the minutes per
script summed over those invocations. A regeneration of some scripts
(``run_all --scripts``) replaces those scripts' commits and keeps the
others', so invocations whose every result was regenerated since leave the
record. ``release_problems`` says whether the results and the cost records
come from one commit whose code is HEAD's.
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
# The code a result depends on: a commit that differs from HEAD only outside
# it (results, docs, tests) produced what HEAD would.
CODE = ('evalnorm/', 'configs/', 'experiments/')
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


def start(root: str, scale: str, jobs: int, workdir_root: str,
          gpus=()) -> int:
  """Records an invocation in the workdir root before its scripts run, so a
  regeneration killed halfway still shows its commit and the scripts it
  finished; returns its index for ``script_done``."""
  record = {'started': datetime.datetime.now(datetime.timezone.utc).isoformat(
      timespec='seconds'), 'scale': scale, 'jobs': jobs, **git_state(root),
            'machine': machine(gpus), 'seconds': {}}
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
           earlier: dict | None = None, scripts=None) -> dict:
  """Writes the provenance record of the invocations over the workdir root.

  With ``earlier`` (the committed record) and ``scripts`` (the names this
  regeneration reran), the other scripts keep their commits from
  ``earlier`` and its invocations at those commits stay in the record.
  """
  here = _invocations(workdir_root)
  commits_here = sorted({i['commit'] for i in here if i['commit']})
  by_script = script_commits(earlier) if earlier else {}
  by_script |= {name: commits_here for name in (
      scripts or {n for i in here for n in i['seconds']})}
  commits = sorted({c for cs in by_script.values() for c in cs})
  kept = [i for i in (earlier or {}).get('invocations', [])
          if i['commit'] in commits and i not in here]
  invocations = kept + here
  record = {
      'commits': commits,
      'by_script': by_script,
      'clean': all(i['clean'] for i in invocations),
      'packages': package_versions(),
      'machine': machine(gpus),
      'minutes_per_script': minutes_per_script(invocations, by_script),
      'invocations': invocations,
  }
  files.write_json(files.path(results_path), record)
  return record


def script_commits(record: dict) -> dict[str, list[str]]:
  """{script: the commits its results come from}; a record written before
  they were kept per script gives every script all of its commits."""
  if 'by_script' in record:
    return dict(record['by_script'])
  return {name: record['commits'] for i in record['invocations']
          for name in i['seconds']}


def minutes_per_script(invocations: list[dict],
                       by_script: dict[str, list[str]]) -> dict[str, float]:
  """Wall minutes each script added, summed over the invocations at the
  commits its results come from."""
  total = {}
  for invocation in invocations:
    for name, seconds in invocation['seconds'].items():
      if invocation['commit'] in by_script.get(name, ()):
        total[name] = total.get(name, 0.0) + seconds / 60
  return {name: round(minutes, 1) for name, minutes in total.items()}


def headlines(record: dict) -> dict:
  """What the README shows of a record: the commits in the order they ran,
  whether every tree was clean, the machines and the package versions."""
  invocations = sorted(record['invocations'], key=lambda i: i['started'])
  machines = []
  for invocation in invocations:
    m = invocation.get('machine', record['machine'])
    m = {key: m[key] for key in ('cpu', 'cpu_cores', 'gpus')}
    if m not in machines:
      machines.append(m)
  return {'commits': list(dict.fromkeys(i['commit'][:7] for i in invocations
                                        if i['commit'])),
          'clean': record['clean'], 'machines': machines,
          'packages': record['packages']}


def code_changes(root: str, commit: str, under=CODE) -> list[str] | None:
  """The Python files under ``under`` that differ between ``commit`` and
  HEAD; None when the repository does not have ``commit``."""
  diff = subprocess.run(['git', 'diff', '--name-only', commit, 'HEAD', '--',
                         *under], cwd=root, capture_output=True, text=True)
  if diff.returncode:
    return None
  return [p for p in diff.stdout.split() if p.endswith('.py')]


def release_problems(root: str, record: dict,
                     cost_records: dict[str, dict]) -> list[str]:
  """Why the results (their provenance ``record``) and the cost records
  are not a release of HEAD: more than one commit, a commit whose code
  differs from HEAD's, or an unclean tree; [] when they are."""
  problems = []
  if len(record['commits']) != 1:
    problems.append(f"the results name {len(record['commits'])} commits, not "
                    f"one: {', '.join(c[:7] for c in record['commits'])}")
  if not record['clean']:
    problems.append('a regeneration ran with uncommitted code changes')
  sources = [('the results', c, CODE) for c in record['commits']]
  sources += [(f'the cost record {title}', r['commit'], CODE + ('benchmarks/',))
              for title, r in cost_records.items()]
  problems += [f'the cost record {title} was measured with uncommitted code '
               'changes' for title, r in cost_records.items() if not r['clean']]
  for what, commit, under in sources:
    changed = code_changes(root, commit, under)
    if changed is None:
      problems.append(f'{what}: {commit[:7]} is not in this repository')
    elif changed:
      problems.append(f"{what}: {commit[:7]}'s code differs from HEAD's in "
                      + ', '.join(changed))
  return problems
