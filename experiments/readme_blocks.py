r"""Renders the READMEs' result tables: python -m experiments.readme_blocks.

Each sits between ``<!-- name -->`` and ``<!-- /name -->`` and is rendered by
``BLOCKS[name]`` from experiments/results/headlines.json and the cost records
benchmarks/results/cost_<model>_<flags>.json. With ``--check`` nothing is
written and the command exits 1 naming each block that differs.
"""

import argparse
import os
import re
import sys

from evalnorm.training import files
from experiments import readme_tables as tables, reproduction, run_all, runner

README_FILES = ('README.md', 'experiments/README.md', 'docs/cost.md',
                'docs/detection.md', 'docs/training.md')
COST_DIR = os.path.join(runner.ROOT, 'benchmarks', 'results')
BLOCK = re.compile(r'<!-- ([a-z0-9-]+) -->\n(.*?)<!-- /\1 -->', re.DOTALL)
BLOCKS = {
    'digits-table': tables.digits_table,
    'quick-start-seeds': tables.quick_start_seeds,
    'baselines': tables.baselines,
    'provenance': tables.provenance,
    'reproduction': lambda s: reproduction.table(s.headlines),
    'detection-table': tables.detection,
    'cost-table': tables.cost_table,
    'cost-summary': tables.cost_summary,
    'runtimes': tables.runtimes,
    'findings': tables.findings,
    'renorm': tables.renorm,
}


def load(results_dir: str = runner.RESULTS_DIR,
         cost_dir: str = COST_DIR) -> tables.Sources:
  """The committed headlines and cost records."""
  paths = {(m, f): os.path.join(cost_dir, f'cost_{m}_{f}.json')
           for m in tables.COST_MODELS for f in tables.COST_FLAGS}
  return tables.Sources(
      files.read_json(os.path.join(results_dir, run_all.HEADLINES)),
      {run: files.read_json(p) for run, p in paths.items()
       if os.path.exists(p)})


def blocks_in(text: str) -> dict[str, str]:
  """{block name: its current content} of one README."""
  return {m.group(1): m.group(2) for m in BLOCK.finditer(text)}


def render(text: str, sources: tables.Sources) -> str:
  """``text`` with every block that ``BLOCKS`` knows rendered."""
  def block(match):
    name = match[1]
    if name not in BLOCKS:
      return match[0]
    return f'<!-- {name} -->\n{BLOCKS[name](sources)}<!-- /{name} -->'
  return BLOCK.sub(block, text)


def update(root: str = runner.ROOT, sources: tables.Sources | None = None,
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
    stale += [f'{filename}: {name}' for name, content in blocks_in(text).items()
              if content != blocks_in(rendered)[name]]
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
