"""The READMEs' numbers are their results' (experiments/readme.py)."""

import copy
import dataclasses
import json
import zlib

import numpy as np
import pytest

from experiments import (command_line, quick_start, readme_numbers as readme,
                         run_all, runner, scales)


def test_every_readme_block_is_rendered_from_the_committed_results():
  assert readme.stale_blocks() == []


def test_every_renderer_has_its_block_in_a_readme():
  found = set()
  for filename in readme.README_FILES:
    with open(f'{readme.ROOT}/{filename}') as f:
      found |= set(readme.blocks_in(f.read()))
  assert set(readme.BLOCKS) <= found


def test_a_changed_result_makes_its_blocks_stale():
  sources = readme.Sources.load()
  changed = copy.deepcopy(sources.cost)
  setup = readme._setup(changed[('cifar', 'default')])  # pylint: disable=protected-access
  setup['ratios']['train_B2_amortized'] += 0.01
  stale = readme.stale_blocks(
      sources=dataclasses.replace(sources, cost=changed))
  assert stale == ['docs/cost.md: cost-table', 'docs/cost.md: cost-summary']


def test_check_exits_nonzero_naming_a_stale_block(tmp_path, capsys):
  (tmp_path / 'experiments').mkdir()
  (tmp_path / 'docs').mkdir()
  for filename in readme.README_FILES:
    with open(f'{readme.ROOT}/{filename}') as f:
      text = f.read()
    (tmp_path / filename).write_text(text.replace(
        '<!-- cost-table -->\n|', '<!-- cost-table -->\n| edited by hand |'))
  assert readme.stale_blocks(str(tmp_path)) == ['docs/cost.md: cost-table']
  readme.rewrite(str(tmp_path))
  assert readme.stale_blocks(str(tmp_path)) == []
  assert readme.main(['--check']) == 0
  assert 'stale' not in capsys.readouterr().out


# ---------------------------------------------------------------------------
# The run-based blocks, rendered from made-up results: each number must come
# from its own run and mode.

MODES = ('ema', 'evalnorm', 'rule_of_thumb', 'one_over_b', 'train_stats',
         'fixed_0.05', 'fixed_0.1', 'fixed_0.5', 'groupnorm')
LAYERS = ('backbone/stage1_block0/norm1', 'rcn/final_norm',
          'stage1_block0/norm1')


def made_up(name: str, mode: str) -> float:
  """A distinct, reproducible value for each (run, mode)."""
  return round(50 + (zlib.crc32(f'{name}/{mode}'.encode()) % 4000) / 100, 2)


def made_up_eval(name: str) -> dict:
  metrics = lambda m: {'top1': made_up(name, m), 'top5': 99.0, 'loss': 1.0,
                       'AP': made_up(name, m + 'AP')}
  return {'step': 3000, 'dataset': 'noisy_digits', 'norm': 'evalnorm',
          'norm_batch_size': 2, 'num_eval_examples': 1024,
          'wall_seconds': 60 * made_up(name, 'wall'),
          'eval': {m: metrics(m) for m in MODES},
          'alpha_beta': {l: {'alpha': made_up(name, l) / 100,
                             'beta': made_up(name, l + 'b') / 100}
                         for l in LAYERS}}


class MadeUpEvals(dict):

  def __missing__(self, name):
    self[name] = made_up_eval(name)
    return self[name]


@pytest.fixture
def made_up_sources(tmp_path):
  (tmp_path / 'fig1_histograms.md').write_text(
      '| trained at | statistics | mean | std | distance |\n'
      '|---|---:|---:|---:|---:|\n'
      '| B=128 | EMA statistics | 0 | 1 | 0.031 |\n'
      '| B=128 | EvalNorm statistics | 0 | 1 | 0.032 |\n'
      '| B=2 | EMA statistics | 0 | 1 | 0.275 |\n'
      '| B=2 | EvalNorm statistics | 0 | 1 | 0.179 |\n')
  every_k = {f'estimate_every_seed{s}': {'1': made_up_eval(f'k1_seed{s}')}
             for s in range(3)}
  provenance = {'commits': ['a' * 40], 'clean': True,
                'machine': {'cpu': 'Some CPU', 'cpu_cores': 2},
                'packages': {'jax': '0.10.2', 'flax': '0.12.8'},
                'minutes_per_script': {
                    run_all.script_name(s): 1.5 for s in run_all.SCRIPTS},
                'invocations': [
                    {'jobs': 2, 'started': '2026-01-02T00:00:00+00:00',
                     'commit': 'b' * 40},
                    {'jobs': 2, 'started': '2026-01-01T00:00:00+00:00',
                     'commit': 'a' * 40}]}
  return readme.Sources(readme.load_cost(), MadeUpEvals(), every_k,
                        provenance, str(tmp_path))


def test_quick_start_blocks_take_each_number_from_its_run(made_up_sources):
  evals = made_up_sources.evals
  table = readme.quick_start_table(made_up_sources)
  assert f"| ema | {made_up('quick_start_seed0', 'ema'):.2f} |" in table
  text = readme.quick_start_seeds(made_up_sources)
  words = ' '.join(text.split())
  ema = [made_up(f'quick_start_seed{s}', 'ema') for s in range(3)]
  assert f'EMA evaluation gives {min(ema):.2f}-{max(ema):.2f}' in words
  assert f"| 0, on 8 devices | {made_up('quick_start_seed0_8devices', 'ema'):.2f} |" in text
  every_step = made_up('k1_seed1', 'evalnorm')
  assert f'/ {every_step:.2f} /' in words
  assert 'Some CPU, 2 cores, jax 0.10.2' in words
  baselines = readme.baselines(made_up_sources)
  gain = (made_up('baseline_batchnorm_offline', 'evalnorm')
          - made_up('baseline_batchnorm', 'ema'))
  assert f'gains {gain:.1f} points' in ' '.join(baselines.split())
  assert 'quick_start_seed0' in evals


def test_reproduction_cells_take_each_number_from_its_run(made_up_sources):
  text = readme.reproduction_table(made_up_sources)
  ema_b2 = 100 - made_up('evalnorm_b2_seed0', 'ema')
  assert f'B=2: EMA {ema_b2:.1f}, EvalNorm' in text
  assert 'at B=2: EMA 0.275, EvalNorm 0.179 (B=128: 0.031 / 0.032)' in text
  table1_ema = made_up('imagenet_evalnorm_b2', 'ema')
  assert f'B=2: EMA {table1_ema:.2f}, EvalNorm' in text
  offline = made_up('imagenet_offline_b2', 'evalnorm')
  assert f'offline {offline:.2f}' in text
  gains = [made_up(f'detection_a_n2_seed{s}', 'evalnormAP')
           - made_up(f'detection_a_n2_seed{s}', 'emaAP') for s in range(3)]
  assert f'{np.mean(gains):+.1f} random init' in text
  transfer = (made_up('transfer_c_b2', 'evalnorm')
              - made_up('transfer_c_b2', 'ema'))
  assert f'{transfer:+.1f} BN frozen' in text
  detection = readme.detection_table(made_up_sources)
  frozen_alpha = made_up('detection_c_n2_seed0',
                         'backbone/stage1_block0/norm1') / 100
  assert f'mean alpha {frozen_alpha:.2f} in the base network' in ' '.join(
      detection.split())


def test_runtimes_count_each_run_once_with_its_median(made_up_sources):
  # A run finished as run_all was killed has no time: it is left out.
  del made_up_sources.evals['detection_a_n2_seed2']['wall_seconds']
  text = readme.runtimes_table(made_up_sources)
  names = [r.name for r in quick_start.planned_runs(
      command_line.Context(scales.SCALES['small'], '', '', 1))]
  median = np.median([made_up(n, 'wall') for n in names])
  total = sum(made_up(n, 'wall') for n in names)
  assert (f'| `quick_start.py` | {len(names)} | {median:.1f} | {total:.0f} |'
          in text)
  # Fig. 1, 3, 4 only read the Fig. 2 runs.
  assert '| `fig1_histograms.py` | 0 |  |  |' in text
  assert '(2 wall minutes for the three)' in ' '.join(text.split())


def test_findings_take_each_number_from_its_run(made_up_sources):
  text = ' '.join(readme.findings(made_up_sources).split())
  gains = [made_up(f'evalnorm_b2_seed{s}', 'evalnorm')
           - made_up(f'evalnorm_b2_seed{s}', 'ema') for s in range(3)]
  assert f'the gain at B=2 is {np.mean(gains):+.1f} points' in text
  positive = sum(g > 0 for g in gains)
  assert (f'positive for {positive} of 3 seeds' in text if positive < 3
          else 'positive for every seed' in text)
  renorm = made_up('baseline_renorm', 'ema')
  assert f'it reaches {renorm:.2f} at B=2' in text
  groupnorm = [made_up(f'imagenet_groupnorm_b{b}', 'groupnorm')
               for b in (2, 4, 8, 16, 32)]
  assert f'GroupNorm gives {min(groupnorm):.2f}-{max(groupnorm):.2f}' in text
  assert text.startswith('## What the small scale shows')


def test_a_difference_rounded_to_zero_prints_without_a_minus(monkeypatch):
  monkeypatch.setitem(readme.BLOCKS, 'gains',
                      lambda _: f'{-0.04:+.1f} to {-0.004:+.2f}; 1-0.0; -0.05\n')
  text = readme.render('<!-- gains -->\n<!-- /gains -->', sources=None)
  assert text == '<!-- gains -->\n+0.0 to +0.00; 1-0.0; -0.05\n<!-- /gains -->'


def test_agreement_names_the_paradigms_where_evalnorm_does_not_gain():
  first = {'(a) x': 3.0, '(b) y': 1.5, '(c) z': -2.0}
  later = {'(a) x': [1.5, 2.0], '(b) y': [0.9, 2.0], '(c) z': [-1.0, -3.0]}
  # A gain counts above readme.LEAST_GAIN (1 point): (b)'s 0.9 does not.
  assert (readme._agreement(first, later, 'N=2', 'N=4, 8')
          == 'at N=2 except (c); at N=4, 8 only in (a)')
  everywhere = {p: [1.5] for p in later}
  assert (readme._agreement({p: 0.5 for p in first}, everywhere, 'B=2',
                            'B=4, 8') == 'not at B=2; yes at B=4, 8')


def test_provenance_names_the_commits_in_the_order_they_ran(made_up_sources):
  text = ' '.join(readme.provenance_note(made_up_sources).split())
  assert ('by 2 invocations of `run_all`' in text
          and 'at commits aaaaaaa and bbbbbbb in that order, each on a clean '
          'tree, on Some CPU (2 cores)' in text), text


def test_the_committed_headlines_are_rebuilt_from_runs_json():
  context = command_line.Context(scales.SCALES['small'], '', runner.RESULTS_DIR,
                                 1)
  with open(f'{runner.RESULTS_DIR}/{run_all.HEADLINES}') as f:
    committed = json.load(f)
  rebuilt = json.loads(json.dumps(run_all.rebuilt_headlines(context)))
  assert rebuilt == committed
