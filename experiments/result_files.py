"""Writing a script's results: markdown tables and PNG figures."""

import os
from collections.abc import Sequence
from typing import Any

from evalnorm.training import files, summary
from experiments.runner import ROOT


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
  """``summary.markdown_table`` as a section of a result file (ends a line)."""
  return summary.markdown_table(headers, rows) + '\n'


def signed(value: float, digits: int = 1) -> str:
  """'+1.2'; a value that rounds to zero is '+0.0', never '-0.0'."""
  return f'{round(value, digits) + 0.0:+.{digits}f}'


def _shown(path: str) -> str:
  """``path`` as printed: relative to the repository when it is in it."""
  if files.is_remote(path):
    return path
  relative = os.path.relpath(path, ROOT)
  return path if relative.startswith('..') else relative


def write_markdown(path: str, title: str, *sections: str) -> None:
  files.path(path).write_text(f'# {title}\n\n' + '\n'.join(sections))
  print(f'wrote {_shown(path)}')


def save_figure(figure, path: str) -> None:
  figure.tight_layout()
  with files.path(path).open('wb') as f:
    figure.savefig(f, dpi=110, format=os.path.splitext(path)[1][1:] or 'png')
  print(f'wrote {_shown(path)}')


def plot_against_b(path: str, bs: Sequence[int], curves: dict[str, list[float]],
                   ylabel: str, title: str,
                   xlabel: str = 'normalization batch B',
                   highlight: str | None = None) -> None:
  """One line per curve over B (log2 axis), written as a PNG to ``path``."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  figure, axes = plt.subplots(figsize=(6, 4))
  for (name, values), marker in zip(curves.items(), 'osd^vxp*'):
    axes.plot(bs, values, marker=marker, label=name,
              linewidth=2.5 if name == highlight else 1.3)
  axes.set_xscale('log', base=2)
  axes.set_xticks(bs, [str(b) for b in bs])
  axes.set_xlabel(xlabel)
  axes.set_ylabel(ylabel)
  axes.set_title(title)
  axes.grid(alpha=0.3)
  axes.legend(fontsize=8)
  save_figure(figure, path)
  plt.close(figure)


def plot_ema_against_evalnorm(path: str, panels: dict[str, dict[str, tuple]],
                              ylabel: str, panel_width: float, height: float,
                              sharey: bool = False) -> None:
  """Bar pairs (EMA, EvalNorm) per label, one panel per title, as a PNG.

  ``panels`` is {title: {label: (ema, evalnorm)}}; the legend is in the first
  panel.
  """
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  figure, axes = plt.subplots(1, len(panels), squeeze=False, sharey=sharey,
                              figsize=(panel_width * len(panels), height))
  for ax, (title, bars) in zip(axes[0], panels.items()):
    positions = list(range(len(bars)))
    for offset, index, label in ((-0.2, 0, 'EMA'), (0.2, 1, 'EvalNorm')):
      ax.bar([p + offset for p in positions],
             [values[index] for values in bars.values()], 0.4, label=label)
    ax.set_xticks(positions, list(bars))
    ax.set_title(title)
    ax.set_ylabel(ylabel)
  axes[0][0].legend()
  save_figure(figure, path)
  plt.close(figure)


def scale_note(context) -> str:
  """One line saying what was run, for the top of every result file."""
  s = context.scale
  settings = ', '.join(f'{k}={v}' for k, v in sorted(s.overrides.items())
                       if k in ('dataset', 'num_train_steps', 'batch_size'))
  return (f'Scale `{s.name}`: `{s.config}`' + (f' with {settings}' if settings
                                               else '') + '.\n')


