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


def results_table(results: dict) -> str:
  """A markdown table of top-1, top-5 and loss per evaluation mode."""
  lines = [f"{results['dataset']}, norm={results['norm']}, "
           f"B={results['norm_batch_size']}, step {results['step']}, "
           f"{results['num_eval_examples']} eval examples", '',
           '| mode | top-1 (%) | top-5 (%) | loss | meaning |',
           '|---|---:|---:|---:|---|']
  modes = results['eval']
  ordered = [m for m in MODE_DESCRIPTIONS if m in modes]
  ordered += sorted(set(modes) - set(ordered))
  for mode in ordered:
    metrics = modes[mode]
    lines.append(f"| {mode} | {metrics['top1']:.2f} | {metrics['top5']:.2f} | "
                 f"{metrics['loss']:.4f} | {describe(mode)} |")
  return '\n'.join(lines)
