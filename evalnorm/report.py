"""Markdown tables: the one printed at the end of a run (from eval.json) and
the helper every report of the project writes its tables with."""

from collections.abc import Sequence
from typing import Any

MODE_DESCRIPTIONS = {
    'ema': 'moving averages (plain BatchNorm evaluation)',
    'evalnorm': 'EvalNorm, estimated alpha/beta',
    'rule_of_thumb': 'EvalNorm, alpha = beta = 1/B^2',
    'one_over_b': 'EvalNorm, alpha = beta = 1/B',
    'precise_ema': 'recomputed averages (PreciseBN)',
    'train_stats': 'batch statistics of groups of B (reference)',
    'groupnorm': 'GroupNorm (no batch statistics)',
}


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]],
                   align: str | None = None) -> str:
  """A markdown table (no trailing newline); cells are written with str().

  ``align`` has one letter per column, ``l`` or ``r``; by default the first
  column is left-aligned (labels) and the others right-aligned (numbers).
  """
  align = align or 'l' + 'r' * (len(headers) - 1)
  rules = {'l': '---', 'r': '---:'}
  lines = ['| ' + ' | '.join(headers) + ' |',
           '|' + '|'.join(rules[a] for a in align) + '|']
  lines += ['| ' + ' | '.join(str(c) for c in row) + ' |' for row in rows]
  return '\n'.join(lines)


def describe(mode: str) -> str:
  if mode.startswith('fixed_'):
    return f"EvalNorm, alpha = beta = {mode.removeprefix('fixed_')}"
  return MODE_DESCRIPTIONS.get(mode, '')


# (eval.json key, column heading, format) of each metric a table shows.
CLASSIFICATION_COLUMNS = (('top1', 'top-1 (%)', '.2f'), ('top5', 'top-5 (%)', '.2f'),
                          ('loss', 'loss', '.4f'))
DETECTION_COLUMNS = (('AP', 'AP', '.1f'), ('AP50', 'AP50', '.1f'),
                     ('AP75', 'AP75', '.1f'))


def results_table(results: dict, columns=CLASSIFICATION_COLUMNS,
                  examples: str = 'eval examples') -> str:
  """A markdown table of the metrics in ``columns`` per evaluation mode."""
  modes = results['eval']
  ordered = [m for m in MODE_DESCRIPTIONS if m in modes]
  ordered += sorted(set(modes) - set(ordered))
  rows = [[mode] + [format(modes[mode][key], spec) for key, _, spec in columns]
          + [describe(mode)] for mode in ordered]
  table = markdown_table(['mode'] + [c[1] for c in columns] + ['meaning'], rows,
                         align='l' + 'r' * len(columns) + 'l')
  return (f"{results['dataset']}, norm={results['norm']}, "
          f"B={results['norm_batch_size']}, step {results['step']}, "
          f"{results['num_eval_examples']} {examples}\n\n" + table)
