r"""Renders the READMEs' result tables: python -m experiments.readme_blocks.

Each sits between ``<!-- name -->`` and ``<!-- /name -->`` and is rendered by
``BLOCKS[name]`` from experiments/results/headlines.json (a script's own
tables take its headlines) and the benchmarks' records in benchmarks/results
(the cost records, the parallelism record). With
``--check`` nothing is written and the command exits 1 naming each block that
differs.
"""

import argparse
import os
import re
import sys
import typing

from benchmarks import cost_table, parallelism
from evalnorm.training import files, summary
from experiments import (estimation_programs, quick_start, reproduction,
                         run_all, runner, table2_detection)
from experiments.result_files import markdown_table, signed

README_FILES = ('README.md', 'experiments/README.md', 'docs/cost.md',
                'docs/detection.md', 'docs/training.md')
BLOCK = re.compile(r'<!-- ([a-z0-9-]+) -->\n(.*?)<!-- /\1 -->', re.DOTALL)
# The scripts whose headlines have a 'gain' ({row: {B or N: gain}}).
GAINS = {'Fig. 2': 'fig2_error_vs_b', 'Seeds': 'seeds',
         'Fig. 5': 'fig5_deeper_wider', 'Table 1': 'table1_imagenet',
         'Table 2': 'table2_detection', 'Table 2 analog': 'table2_transfer'}


class Sources(typing.NamedTuple):
  headlines: dict        # experiments/results/headlines.json
  cost: dict[str, dict]  # column title -> benchmarks.cost record
  parallelism: dict      # benchmarks.parallelism's record


def load(results_dir: str = runner.RESULTS_DIR) -> Sources:
  """The committed headlines and benchmark records."""
  return Sources(files.read_json(os.path.join(results_dir, run_all.HEADLINES)),
                 cost_table.load(), cost_table.load_parallelism())


def digits_table(s: Sources) -> str:
  """The table the quick start prints, without its first line."""
  first = s.headlines['quick_start']['quick_start_table']
  return summary.results_table(first).split('\n\n', 1)[1] + '\n'


def provenance(s: Sources) -> str:
  p = s.headlines['provenance']
  records = ', '.join(f'[{name}]({reproduction.RESULTS}/{name})' for name in (
      'provenance.json', 'runs.json', 'headlines.json'))
  machines = '; '.join(f"{m['cpu']}, {m['cpu_cores']} cores"
                       + ''.join(f', GPU {g}' for g in m['gpus'])
                       for m in p['machines'])
  return summary.markdown_table(
      ('commits, in the order they ran', 'clean tree', 'machine', 'jax',
       'flax', 'records'),
      [[', '.join(p['commits']), 'yes' if p['clean'] else 'no', machines,
        p['packages']['jax'], p['packages']['flax'], records]], 'l' * 6) + '\n'


def estimation_table(s: Sources) -> str:
  """The estimation programs over seeds, with each one's train-step cost
  over the ResNet-20 columns of the cost table."""
  numbers = s.headlines['estimation_programs']
  cost = {name: cost_table.time_range(
      s.cost, cost_table.mean_step_key(row['estimation'], row['k']),
      cost_table.MODELS['cifar']) for name, row in numbers['programs'].items()}
  return estimation_programs.table(numbers, cost)


def findings(s: Sources) -> str:
  """EvalNorm's gain over EMA in every experiment, by B (N in Table 2)."""
  rows = [[f'{name}, {label}'] + [signed(g[b]) if b in g else ''
                                  for b in ('2', '4', '8')]
          for name, script in GAINS.items()
          for label, g in s.headlines[script]['gain'].items()]
  return markdown_table(('gain (points of top-1; AP in Table 2)',
                         'B or N = 2', '4', '8'), rows)


def renorm(s: Sources) -> str:
  """Batch Renorm's top-1 beside EMA's and EvalNorm's at the same setting."""
  sweep, quick = s.headlines['seeds']['top1'], s.headlines['quick_start']
  table1 = s.headlines['table1_imagenet']['top1']
  rows = [['Fig. 2 runs (600 steps), B=2, mean of 3 seeds',
           *(sweep[run]['2'][mode]['mean'] for run, mode in (
               ('evalnorm', 'ema'), ('renorm', 'ema'),
               ('evalnorm', 'evalnorm')))],
          ['quick start (3000 steps), B=2, seed 0',
           quick['top1_by_seed']['0']['ema'],
           quick['baselines'][quick_start.RENORM]['top1']['ema'],
           quick['top1_by_seed']['0']['evalnorm']]]
  rows += [[f'Table 1 (8 devices x B), B={b}', *(table1[row][b] for row in (
      'EMA', 'Batch Renorm', 'EvalNorm (online)'))] for b in ('2', '32')]
  return markdown_table(('top-1 (%)', 'EMA', 'Batch Renorm', 'EvalNorm'),
                        [[label] + [f'{v:.2f}' for v in values]
                         for label, *values in rows])


BLOCKS = {
    'digits-table': digits_table,
    'quick-start-seeds': lambda s: quick_start.seeds_table(
        s.headlines['quick_start']),
    'baselines': lambda s: quick_start.baselines_table(
        s.headlines['quick_start']),
    'provenance': provenance,
    'reproduction': lambda s: reproduction.table(s.headlines),
    'detection-table': lambda s: table2_detection.summary_table(
        s.headlines['table2_detection']),
    'cost-table': lambda s: cost_table.table(s.cost),
    'estimation-programs': estimation_table,
    'parallelism': lambda s: parallelism.table(s.parallelism),
    'runtimes': lambda s: run_all.runtimes_table(s.headlines['runtimes'])
                          + '\n',
    'findings': findings,
    'renorm': renorm,
}


def render(text: str, sources: Sources) -> str:
  """``text`` with every block that ``BLOCKS`` knows rendered."""
  def block(match):
    name = match[1]
    if name not in BLOCKS:
      return match[0]
    return f'<!-- {name} -->\n{BLOCKS[name](sources)}<!-- /{name} -->'
  return BLOCK.sub(block, text)


def update(root: str = runner.ROOT, sources: Sources | None = None,
           write: bool = True) -> list[str]:
  """'file: block' of every block that differs from its rendering; with
  ``write`` the files are rewritten with every block rendered."""
  sources = sources or load()
  stale = []
  for filename in README_FILES:
    path = os.path.join(root, filename)
    with open(path) as f:
      text = f.read()
    rendered = render(text, sources)
    old, new = BLOCK.findall(text), BLOCK.findall(rendered)
    stale += [f'{filename}: {name}' for (name, a), (_, b) in zip(old, new)
              if a != b]
    if write and rendered != text:
      with open(path, 'w') as f:
        f.write(rendered)
  return stale


def main(argv=None, root: str = runner.ROOT) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--check', action='store_true',
                      help='write nothing; exit 1 if a block is stale')
  check = parser.parse_args(argv).check
  stale = update(root, write=not check)
  for block in stale:
    print(f"{'stale' if check else 'rewrote'}: {block}")
  return 1 if check and stale else 0


if __name__ == '__main__':
  sys.exit(main())
