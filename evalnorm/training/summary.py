"""Markdown tables: the one printed at the end of a run (from eval.json) and
the helper every report of the project writes its tables with; and eval.json.

jax is imported only by the functions that need it: the experiments' reports
use ``markdown_table`` without it.
"""

from collections.abc import Sequence
from typing import Any

from evalnorm.training import files


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


def write_eval_json(workdir: str, config, step: int, num_eval_examples: int,
                    results: dict, evalnorm=None, **extra) -> dict:
  """Writes (from process 0) and returns the record of workdir/eval.json.

  ``results``: {mode: metrics}; ``evalnorm``: the alpha/beta to record by
  layer (None: none estimated); ``extra``: keys of the command's own.
  """
  import jax  # pylint: disable=import-outside-toplevel
  from evalnorm.variables import alpha_beta_by_layer  # pylint: disable=import-outside-toplevel
  record = {'step': step, 'norm_batch_size': config.norm_batch_size,
            'dataset': config.dataset, 'norm': config.norm,
            'num_eval_examples': num_eval_examples, **extra, 'eval': results,
            'alpha_beta': ({} if evalnorm is None
                           else alpha_beta_by_layer(evalnorm))}
  if jax.process_index() == 0:
    files.write_json(files.path(workdir) / 'eval.json', record)
  return record


# (eval.json key, column heading, format) of each metric a table shows.
CLASSIFICATION_COLUMNS = (('top1', 'top-1 (%)', '.2f'), ('top5', 'top-5 (%)', '.2f'),
                          ('loss', 'loss', '.4f'))
DETECTION_COLUMNS = (('AP', 'AP', '.1f'), ('AP50', 'AP50', '.1f'),
                     ('AP75', 'AP75', '.1f'))


def results_table(results: dict, columns=CLASSIFICATION_COLUMNS,
                  examples: str = 'eval examples') -> str:
  """A markdown table of the metrics in ``columns`` per evaluation mode."""
  from evalnorm.training import evaluation  # pylint: disable=import-outside-toplevel
  modes = results['eval']
  ordered = [m for m in evaluation.mode_descriptions() if m in modes]
  ordered += sorted(set(modes) - set(ordered))
  rows = [[mode] + [format(modes[mode][key], spec) for key, _, spec in columns]
          + [evaluation.describe(mode)] for mode in ordered]
  table = markdown_table(['mode'] + [c[1] for c in columns] + ['meaning'], rows,
                         align='l' + 'r' * len(columns) + 'l')
  return (f"{results['dataset']}, norm={results['norm']}, "
          f"B={results['norm_batch_size']}, step {results['step']}, "
          f"{results['num_eval_examples']} {examples}\n\n" + table)
