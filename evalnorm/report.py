"""The table printed at the end of a run, from the contents of eval.json."""

MODE_DESCRIPTIONS = {
    'ema': 'moving averages (plain BatchNorm evaluation)',
    'evalnorm': 'EvalNorm, estimated alpha/beta',
    'rule_of_thumb': 'EvalNorm, alpha = beta = 1/B^2',
    'one_over_b': 'EvalNorm, alpha = beta = 1/B',
    'precise_ema': 'recomputed averages (PreciseBN)',
    'train_stats': 'batch statistics of groups of B (reference)',
    'groupnorm': 'GroupNorm (no batch statistics)',
}


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
  lines = [f"{results['dataset']}, norm={results['norm']}, "
           f"B={results['norm_batch_size']}, step {results['step']}, "
           f"{results['num_eval_examples']} {examples}", '',
           '| mode | ' + ' | '.join(c[1] for c in columns) + ' | meaning |',
           '|---|' + '---:|' * len(columns) + '---|']
  modes = results['eval']
  ordered = [m for m in MODE_DESCRIPTIONS if m in modes]
  ordered += sorted(set(modes) - set(ordered))
  for mode in ordered:
    cells = [format(modes[mode][key], spec) for key, _, spec in columns]
    lines.append(f"| {mode} | {' | '.join(cells)} | {describe(mode)} |")
  return '\n'.join(lines)
