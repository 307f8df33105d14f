"""provenance.json: which commits, trees and machines the results come from,
and whether the committed results are a release of HEAD."""

import os
import subprocess

import pytest

from training_helpers import ROOT
from benchmarks import cost_table
from evalnorm.training import files
from experiments import provenance, runner


def git(repo, *args) -> str:
  return subprocess.run(
      ['git', '-c', 'user.name=t', '-c', 'user.email=t@t', *args], cwd=repo,
      check=True, capture_output=True, text=True).stdout.strip()


def commit(repo, files: dict[str, str]) -> str:
  for name, text in files.items():
    (repo / name).parent.mkdir(parents=True, exist_ok=True)
    (repo / name).write_text(text)
  git(repo, 'add', '.')
  git(repo, 'commit', '-qm', 'c')
  return git(repo, 'rev-parse', 'HEAD')


@pytest.fixture
def repo(tmp_path):
  git(tmp_path, 'init', '-q')
  return tmp_path


def test_provenance_tells_a_clean_tree_from_changed_code(repo, tmp_path):
  commit(repo, {'experiments/results/fig.md': 'old\n',
                'train.py': 'lr = 0.1\n'})
  state = provenance.git_state(str(repo))
  assert state['clean'] and len(state['commit']) == 40
  # Rewritten results are the regeneration's output, not a code change ...
  (repo / 'experiments' / 'results' / 'fig.md').write_text('new\n')
  assert provenance.git_state(str(repo))['clean']
  # ... an edited or a new source file is.
  (repo / 'train.py').write_text('lr = 0.2\n')
  assert not provenance.git_state(str(repo))['clean']
  git(repo, 'checkout', 'train.py')
  (repo / 'extra.py').write_text('')
  assert not provenance.git_state(str(repo))['clean']
  outside = tmp_path.parent / f'{tmp_path.name}_not_a_repository'
  outside.mkdir()
  assert provenance.git_state(str(outside)) == {'commit': None, 'clean': None}


def test_an_interrupted_regeneration_keeps_its_record(tmp_path):
  workdirs = str(tmp_path / 'w')
  # Killed after its first script: its commit and that script stay recorded.
  first = provenance.start(ROOT, 'small', 2, workdirs)
  provenance.script_done(workdirs, first, 'quick_start', 600.0)
  # The rerun finishes every script, reusing the runs.
  second = provenance.start(ROOT, 'small', 2, workdirs)
  for name, seconds in (('quick_start', 6.0), ('fig2_error_vs_b', 120.0)):
    provenance.script_done(workdirs, second, name, seconds)
  record = provenance.finish(workdirs, (), str(tmp_path / 'provenance.json'))
  assert [i['seconds'] for i in record['invocations']] == [
      {'quick_start': 600.0}, {'quick_start': 6.0, 'fig2_error_vs_b': 120.0}]
  assert record['minutes_per_script'] == {'quick_start': 10.1,
                                          'fig2_error_vs_b': 2.0}
  here = provenance.git_state(ROOT)['commit']
  assert record['commits'] == [here]
  assert record['by_script'] == {'quick_start': [here],
                                 'fig2_error_vs_b': [here]}


def invocation(commit_id: str, started: str, seconds: dict, cpu='Old CPU'):
  return {'started': started, 'commit': commit_id, 'clean': True,
          'seconds': seconds,
          'machine': {'cpu': cpu, 'cpu_cores': 2, 'gpus': []}}


def regenerate(tmp_path, group: str, earlier: dict, scripts: dict) -> dict:
  """``run_all --scripts`` over a fresh workdir root: ``scripts`` {name:
  wall seconds} rerun at this checkout's HEAD, merged into ``earlier``."""
  workdirs = str(tmp_path / group)
  index = provenance.start(ROOT, 'small', 2, workdirs)
  for name, seconds in scripts.items():
    provenance.script_done(workdirs, index, name, seconds)
  return provenance.finish(workdirs, (), str(tmp_path / f'{group}.json'),
                           earlier, list(scripts))


def test_regenerating_every_script_in_groups_names_one_commit(tmp_path):
  """A record from before commits were kept per script names every script
  at all of its commits; regenerating some scripts keeps the others' and
  their invocations; once every script is regenerated at one commit, the
  record names that commit alone and drops the invocations no result comes
  from."""
  a, b, here = 'a' * 40, 'b' * 40, provenance.git_state(ROOT)['commit']
  legacy = {'commits': [a, b], 'clean': True,
            'machine': {'cpu': 'Old CPU', 'cpu_cores': 2, 'gpus': []},
            'invocations': [
                invocation(a, '2026-01-01T00:00:00+00:00',
                           {'quick_start': 600.0, 'fig2_error_vs_b': 60.0}),
                invocation(b, '2026-01-02T00:00:00+00:00',
                           {'quick_start': 1.0, 'fig2_error_vs_b': 1.0})]}
  first = regenerate(tmp_path, 'first', legacy, {'fig2_error_vs_b': 120.0})
  assert first['by_script'] == {'quick_start': [a, b],
                                'fig2_error_vs_b': [here]}
  assert first['commits'] == sorted([a, b, here])
  assert len(first['invocations']) == 3
  # Only this group's own minutes count for the script it reran.
  assert first['minutes_per_script'] == {'quick_start': 10.0,
                                         'fig2_error_vs_b': 2.0}
  second = regenerate(tmp_path, 'second', first, {'quick_start': 1200.0})
  assert second['commits'] == [here]
  assert [i['commit'] for i in second['invocations']] == [here, here]
  assert second['minutes_per_script'] == {'fig2_error_vs_b': 2.0,
                                          'quick_start': 20.0}
  shown = provenance.headlines(second)
  assert shown['commits'] == [here[:7]]
  assert shown['machines'] == [{'cpu': provenance.cpu_model(),
                                'cpu_cores': os.cpu_count(),
                                'gpus': []}]


def test_the_readme_names_every_machine_once():
  record = {'clean': True, 'packages': {},
            'machine': {'cpu': 'C', 'cpu_cores': 4, 'gpus': [],
                        'xla_flags': ''},
            'invocations': [
                invocation('a' * 40, '2026-01-03', {}, cpu='B'),
                invocation('b' * 40, '2026-01-01', {}, cpu='A'),
                invocation('c' * 40, '2026-01-02', {}, cpu='B')]}
  del record['invocations'][1]['machine']  # written before machines were
  shown = provenance.headlines(record)
  assert shown['commits'] == ['bbbbbbb', 'ccccccc', 'aaaaaaa']
  assert [m['cpu'] for m in shown['machines']] == ['C', 'B']


def test_release_problems_name_what_keeps_the_results_from_heads_code(repo):
  code = {'evalnorm/layers.py': 'x = 1\n', 'benchmarks/cost.py': 'y = 1\n',
          'experiments/results/fig.md': 'old\n'}
  released = commit(repo, code)
  record = {'commits': [released], 'clean': True}
  cost = {'ResNet-20, default flags': {'commit': released, 'clean': True}}
  problems = lambda: provenance.release_problems(str(repo), record, cost)
  # Results, documents and tests committed after the regeneration: a release.
  commit(repo, {'experiments/results/fig.md': 'new\n', 'README.md': 'r\n',
                'experiments/README.md': 'r\n', 'tests/test_x.py': 't = 1\n'})
  assert problems() == []
  # Code that differs from the results' is named, as is a benchmark change
  # from the cost record's.
  commit(repo, {'evalnorm/layers.py': 'x = 2\n',
                'benchmarks/cost.py': 'y = 2\n'})
  assert problems() == [
      f"the results: {released[:7]}'s code differs from HEAD's in "
      'evalnorm/layers.py',
      f"the cost record ResNet-20, default flags: {released[:7]}'s code "
      "differs from HEAD's in benchmarks/cost.py, evalnorm/layers.py"]
  # Two commits, an unclean tree, a commit this repository lacks.
  head = git(repo, 'rev-parse', 'HEAD')
  record = {'commits': [head, 'f' * 40], 'clean': False}
  cost = {}
  assert problems() == [
      f'the results name 2 commits, not one: {head[:7]}, fffffff',
      'a regeneration ran with uncommitted code changes',
      'the results: fffffff is not in this repository']


def shallow_clone() -> bool:
  """A shallow clone lacks the release commit; its check would fail for that
  alone, not for results that are not HEAD's."""
  return git(ROOT, 'rev-parse', '--is-shallow-repository') == 'true'


@pytest.mark.skipif(shallow_clone(), reason='a shallow clone lacks the release '
                    'commit; clone with history to check the release')
def test_the_committed_results_and_cost_records_are_a_release_of_head():
  record = files.read_json(os.path.join(runner.RESULTS_DIR, 'provenance.json'))
  cost_records = {**cost_table.load(),
                  'shard_map against pmap': cost_table.load_parallelism()}
  assert provenance.release_problems(ROOT, record, cost_records) == []
