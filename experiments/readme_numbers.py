r"""The READMEs' numbers, rendered from the committed results.

    python -m experiments.readme_numbers [--check]

Every number README.md and experiments/README.md give about a run or a
benchmark sits in a block between ``<!-- name -->`` and ``<!-- /name -->``,
and ``BLOCKS[name]`` renders that block from the committed results:
``benchmarks/results/cost_<model>_<flags>.json`` (``python -m
benchmarks.cost --output``). Without ``--check`` the blocks are rewritten
in place; with it nothing is written and the command exits 1 naming each
block that differs from its rendering. ``tests/test_readme_numbers.py`` runs the
check, so a README number cannot drift from the result it comes from.
"""

import argparse
import dataclasses
import os
import re
import sys
from collections.abc import Callable

from evalnorm import paths
from evalnorm.report import markdown_table

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README_FILES = ('README.md', os.path.join('experiments', 'README.md'))
COST_DIR = os.path.join(ROOT, 'benchmarks', 'results')
# The cost runs the README shows: (model, XLA flags) -> the file's suffix.
COST_MODELS = {'cifar': 'ResNet-20', 'resnet50': 'ResNet-50'}
COST_FLAGS = {'default': 'default flags', 'eigen': 'Eigen'}
BLOCK = re.compile(r'<!-- ([a-z0-9-]+) -->\n(.*?)<!-- /\1 -->', re.DOTALL)


@dataclasses.dataclass(frozen=True)
class Sources:
  """The committed results the blocks are rendered from."""
  cost: dict[tuple[str, str], dict]   # (model, flags) -> benchmarks.cost record

  @classmethod
  def load(cls, cost_dir: str = COST_DIR) -> 'Sources':
    cost = {}
    for model in COST_MODELS:
      for flags in COST_FLAGS:
        path = os.path.join(cost_dir, f'cost_{model}_{flags}.json')
        if os.path.exists(path):
          cost[(model, flags)] = paths.read_json(path)
    return cls(cost)


# ---------------------------------------------------------------------------
# Cost (benchmarks/cost.py).


def _setup(record: dict) -> dict:
  """The one model a cost record measured."""
  (setup,) = record['setups'].values()
  return setup


def _times(value: float) -> str:
  return f'{value:.2f}x'


# (row label, ratios key or a function of the setup) of the cost table.
def _cost_rows(small: int, every: int):
  return (
      ('SGD step, EvalNorm B = the whole per-device batch',
       lambda s: s['ratios'][f"train_B{s['batch']}"]),
      (f'SGD step, EvalNorm B={small}',
       lambda s: s['ratios'][f'train_B{small}']),
      (f'alpha/beta step, EvalNorm B={small}',
       lambda s: s['ratios'][f'alpha_beta_B{small}']),
      (f'mean step at k = {every}, EvalNorm B={small} (amortized)',
       lambda s: s['ratios'][f'train_B{small}_amortized']),
      (f'estimating step (both programs), EvalNorm B={small}',
       lambda s: s['ratios'][f'train_B{small}_estimating']),
      ("evaluation, EvalNorm `eval_stats='evalnorm'` (against BatchNorm's "
       'evaluation)', lambda s: s['ratios']['eval_evalnorm']),
  )


def cost_columns(sources: Sources) -> list[tuple[str, str]]:
  """The (model, flags) of the committed cost runs, in the table's order."""
  return [(m, f) for m in COST_MODELS for f in COST_FLAGS
          if (m, f) in sources.cost]


def cost_table(sources: Sources) -> str:
  from evalnorm import config_lib  # pylint: disable=g-import-not-at-top
  columns = cost_columns(sources)
  setups = {c: _setup(sources.cost[c]) for c in columns}
  every = config_lib.base_config().estimate_every_steps
  rows = [[label] + [_times(value(setups[c])) for c in columns]
          for label, value in _cost_rows(2, every)]
  rows.append(['interleaved rounds timed'] + [str(setups[c]['repeats'])
                                              for c in columns])
  headers = ["against flax `nn.BatchNorm`'s train step"] + [
      f'{COST_MODELS[m]}, {COST_FLAGS[f]}' for m, f in columns]
  return markdown_table(headers, rows) + '\n'


def _bytes_ratio(setup: dict, key: str) -> float:
  return setup['train'][key]['bytes'] / setup['train']['batchnorm']['bytes']


def cost_summary(sources: Sources) -> str:
  """The sentences under the table: machine, bytes, the goal, the spread."""
  from evalnorm import config_lib  # pylint: disable=g-import-not-at-top
  every = config_lib.base_config().estimate_every_steps
  setups = {c: _setup(sources.cost[c]) for c in cost_columns(sources)}
  record = sources.cost[('cifar', 'default')]
  cifar, eigen = setups[('cifar', 'default')], setups.get(('cifar', 'eigen'))
  sgd = _bytes_ratio(cifar, 'evalnorm_B2')
  aux = _bytes_ratio(cifar, 'evalnorm_B2_alpha_beta')
  amortized = lambda c: setups[c]['ratios']['train_B2_amortized']
  goal = lambda c: ('within' if amortized(c) <= 1.05 else 'above')
  bn = lambda s: s['train']['batchnorm']
  device = record['device']
  text = [
      f"Measured on {device['cpu']} ({device['cpu_cores']} cores, nothing "
      f"else running), jax {record['versions']['jax']}, flax "
      f"{record['versions']['flax']}"
      + (f", commit {record['commit'][:7]}" if record.get('commit') else '')
      + ('' if record.get('clean') else ' with uncommitted changes')
      + '; each column is one run, ratio of minimums; '
      '`benchmarks/results/cost_<model>_<flags>.json` holds every row '
      '(medians, memory, bytes).',
      "By XLA's bytes accessed, which do not depend on machine load (CIFAR): "
      f"the SGD step at B = 2 reads {_times(sgd)} BatchNorm's bytes and the "
      f'alpha/beta step {_times(aux)}, so the mean step at k = {every} reads '
      f'{_times(sgd + aux / every)} and estimating every step '
      f'{_times(sgd + aux)}.',
  ]
  if eigen is not None:
    text.append(
        f"The amortized CIFAR step is {_times(amortized(('cifar', 'eigen')))} "
        f"with Eigen kernels ({goal(('cifar', 'eigen'))} the 1.05x goal) and "
        f"{_times(amortized(('cifar', 'default')))} with the default flags "
        f"({goal(('cifar', 'default'))} it); YNNPACK's call-to-call spread "
        "is larger than the differences measured: BatchNorm's median "
        f"step was {bn(cifar)['median_s'] / bn(cifar)['min_s']:.2f}x its "
        f"minimum, against {bn(eigen)['median_s'] / bn(eigen)['min_s']:.2f}x "
        "with Eigen kernels, which make BatchNorm's CIFAR step "
        f"{bn(cifar)['min_s'] / bn(eigen)['min_s']:.1f}x faster "
        f"({bn(cifar)['min_s']:.2f} s against {bn(eigen)['min_s']:.2f} s).")
  resnet50 = [c for c in setups if c[0] == 'resnet50']
  if resnet50:
    shares = sorted(setups[c]['ratios']['alpha_beta_B2'] for c in resnet50)
    costs = sorted(amortized(c) for c in resnet50)
    text.append(
        f"At ResNet-50's batch of {setups[resnet50[0]]['batch']} the alpha/beta "
        f'step is a larger share of a step ({_range(shares)}), so the mean '
        f'step at k = {every} is {_range(costs)} there.')
  text.append(
      "The evaluation pass with `eval_stats='evalnorm'` reads the per-example "
      f"statistics too ({cifar['eval']['evalnorm']['bytes'] / 1e9:.2f} GB "
      f"accessed against {cifar['eval']['batchnorm']['bytes'] / 1e9:.2f} GB "
      'for CIFAR).')
  return '\n'.join(_wrap(' '.join(text))) + '\n'


def _range(values: list[float]) -> str:
  low, high = f'{min(values):.2f}', f'{max(values):.2f}'
  return f'{low}x' if low == high else f'{low}-{high}x'


def _wrap(text: str, width: int = 88) -> list[str]:
  """Lines of at most ``width`` characters, as the READMEs are written."""
  import textwrap  # pylint: disable=g-import-not-at-top
  return textwrap.wrap(text, width, break_long_words=False,
                       break_on_hyphens=False)


BLOCKS: dict[str, Callable[[Sources], str]] = {
    'cost-table': cost_table,
    'cost-summary': cost_summary,
}


# ---------------------------------------------------------------------------
# Reading and rewriting the READMEs.


def blocks_in(text: str) -> dict[str, str]:
  """{block name: its current content} of one README."""
  return {m.group(1): m.group(2) for m in BLOCK.finditer(text)}


def render(text: str, sources: Sources) -> str:
  """``text`` with every known block replaced by its rendering."""
  def replace(match):
    name = match.group(1)
    if name not in BLOCKS:
      return match.group(0)
    return f'<!-- {name} -->\n{BLOCKS[name](sources)}<!-- /{name} -->'
  return BLOCK.sub(replace, text)


def stale_blocks(root: str = ROOT, sources: Sources | None = None
                 ) -> list[str]:
  """'file: block' of every block whose content is not its rendering."""
  sources = sources or Sources.load()
  stale = []
  for filename in README_FILES:
    with open(os.path.join(root, filename)) as f:
      current = blocks_in(f.read())
    for name, content in current.items():
      if name in BLOCKS and BLOCKS[name](sources) != content:
        stale.append(f'{filename}: {name}')
  return stale


def rewrite(root: str = ROOT, sources: Sources | None = None) -> None:
  sources = sources or Sources.load()
  for filename in README_FILES:
    path = os.path.join(root, filename)
    with open(path) as f:
      text = f.read()
    rendered = render(text, sources)
    if rendered != text:
      with open(path, 'w') as f:
        f.write(rendered)
      print(f'rewrote the blocks of {filename}')


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--check', action='store_true',
                      help='write nothing; exit 1 if a block is stale')
  args = parser.parse_args(argv)
  if args.check:
    stale = stale_blocks()
    for block in stale:
      print(f'stale: {block} (python -m experiments.readme_numbers rewrites it)')
    return 1 if stale else 0
  rewrite()
  return 0


if __name__ == '__main__':
  sys.exit(main())
