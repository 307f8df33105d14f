"""The README's reproduction table: a row per figure or table of the paper.

A row gives the paper's claim, the small-scale numbers that bear on it (a
script's headlines) and the verdict a rule computes from those numbers:
'yes', 'no', 'only <where>' or 'except <where>'. A gain is EvalNorm's over
EMA, in points of top-1 (AP for the detector).
"""

from evalnorm.training import summary
from experiments.result_files import signed

# A gain's seed-to-seed spread here is 0.2-0.6 points where B or N is not 2
# (seeds.md at B=8, the detector's seeds at N=2): a smaller gain may be noise.
LEAST_GAIN = 1.0
RESULTS = 'experiments/results'
DETECTION_CLAIM = '+1.5 to +7.0 AP, every paradigm and N'


def gains(*values: float) -> bool:
  return min(values) > LEAST_GAIN


def where(checks: dict[str, bool]) -> str:
  """'yes', 'no', or the shorter of 'only <held>' and 'except <failed>'."""
  held = [label for label, ok in checks.items() if ok]
  failed = [label for label, ok in checks.items() if not ok]
  if not failed or not held:
    return 'yes' if held else 'no'
  if len(held) <= len(failed):
    return 'only ' + ', '.join(held)
  return 'except ' + ', '.join(failed)


def span(values, digits: int = 1) -> str:
  low, high = signed(min(values), digits), signed(max(values), digits)
  return low if low == high else f'{low} to {high}'


def short(label: str) -> str:
  """A paradigm's letter, '(c)' or "(c')"; other labels whole."""
  return label[:label.index(')') + 1] if label.startswith('(') else label


def gain_row(claim: str, name: str, *batches: tuple[str, ...]):
  """A row judging a script's 'gain' headline ({row: {batch: gain}}) at each
  group of ``batches`` (``name``: B or N): one row gives 'only B=2', several
  (models, paradigms) 'N=2 yes; N=4, 8 only (c)'."""
  def row(numbers: dict) -> list[str]:
    groups = {f"{name}={', '.join(bs)}": {
        short(label): [g[b] for b in bs]
        for label, g in numbers['gain'].items()} for bs in batches}
    every = lambda group: sum(group.values(), [])
    if len(numbers['gain']) == 1:
      verdict = where({g: gains(*every(rows)) for g, rows in groups.items()})
    else:
      verdict = '; '.join(f'{g} ' + where({label: gains(*v) for label, v in
                                           rows.items()})
                          for g, rows in groups.items())
    return [claim, 'gain at ' + '; '.join(
        f'{g}: {span(every(rows))}' for g, rows in groups.items()), verdict]
  return row


def fig1(numbers: dict) -> list[str]:
  """At the smallest B EvalNorm's activations are closer to the training
  ones than EMA's; at the largest both are closer than either there."""
  distance = numbers['distance']
  bs = sorted(distance, key=int)
  small, large = distance[bs[0]], distance[bs[-1]]
  return ["EMA's activations off at small B",
          'distance, EMA / EvalNorm: ' + '; '.join(
              f"{distance[b]['ema']:.3f} / {distance[b]['evalnorm']:.3f} at "
              f'B={b}' for b in bs),
          where({f'B={bs[0]}': small['evalnorm'] < small['ema'],
                 f'B={bs[-1]}': max(large.values()) < min(small.values())})]


def fig3(numbers: dict) -> list[str]:
  """Mean alpha never rises with B; at the smallest B the largest layer's
  alpha is at least twice the smallest's."""
  mean = list(numbers['mean_alpha'].values())
  layers = next(iter(numbers['layer_alpha'].values())).values()
  return ['alpha falls with B, varies by layer',
          f'mean alpha {mean[0]:.2f} to {mean[-1]:.2f}; layers at B=2: '
          f'{min(layers):.2f}-{max(layers):.2f}',
          where({'fall': all(a >= b for a, b in zip(mean, mean[1:])),
                 'vary': max(layers) >= 2 * min(layers)})]


def fig4(numbers: dict) -> list[str]:
  """The estimate is the best schedule, or within the least gain of it."""
  gap = {b: numbers['error']['estimated (EvalNorm)'][b] - best
         for b, best in numbers['best_fixed'].items()}
  return ['estimate best at every B',
          f'estimate minus best fixed: {span(gap.values(), 2)}',
          where({f'B={b}': g <= LEAST_GAIN for b, g in gap.items()})]


ROWS = {  # link text -> (the script, whose headlines and result table, row)
    'Fig. 2': ('fig2_error_vs_b', gain_row(
        'EMA error rises at small B, EvalNorm stays', 'B', ('2',), ('4',),
        ('8',))),
    'Seeds': ('seeds', gain_row('(Fig. 2 over 3 seeds)', 'B', ('2',), ('8',))),
    'Fig. 1': ('fig1_histograms', fig1),
    'Fig. 3': ('fig3_alpha_beta', fig3),
    'Fig. 4': ('fig4_fixed_schedules', fig4),
    'Fig. 5 (reduced)': ('fig5_deeper_wider', gain_row(
        'gain for every model at B=4, 8', 'B', ('2',), ('4', '8'))),
    'Table 1': ('table1_imagenet', gain_row('gain at B=2: +6.18', 'B',
                                            ('2',))),
    'Table 2': ('table2_detection', gain_row(DETECTION_CLAIM, 'N', ('2',),
                                             ('4', '8'))),
    'Table 2 analog': ('table2_transfer', gain_row(DETECTION_CLAIM, 'B',
                                                   ('2',), ('4', '8'))),
}


def table(h: dict) -> str:
  rows = [[f'[{label}]({RESULTS}/{script}.md)'] + row(h[script])
          for label, (script, row) in ROWS.items()]
  return summary.markdown_table(
      ('result', 'the paper', 'small scale',
       f'agrees? (gain > {LEAST_GAIN:g} point)'), rows, 'llll') + '\n'
