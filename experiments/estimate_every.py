r"""How often online estimation must run: the curve over k = estimate_every_steps.

    python -m experiments.estimate_every [--scale small|full|smoke] [--seeds 0,1,2]

Estimates alpha/beta every k-th step, k = 1, 2, 4, 8, 16, at the smallest B,
for several seeds. At the ``small`` scale the training is the quick start's
(``configs/digits.py``, noisy digits, B = 2, 3000 steps). Writes
estimate_every.{md,png}: per k the EvalNorm top-1 (mean, spread, every seed),
the mean alpha and beta, and whether the mean top-1 stays within the seed
spread of k = 1 (top-1, alpha and beta alike).

One training per seed serves every k. The SGD step does not read alpha/beta
and is the same program whatever k (``evalnorm.training.trainer.TrainPrograms``), so the runs
``--config.estimate_every_steps=k`` would make share their weights at every
step, bit for bit; here each k's alpha/beta take their own
``alpha_beta_step`` on the steps that k estimates, from the same states and
batches. That saves four trainings of five. The report checks the premise
where it can: when the workdir root holds the quick start run of a seed
(``python -m evalnorm.main`` with the default k, which
``experiments/quick_start.py`` runs), its ``eval.json`` modes must equal
this script's column of that k exactly. Every column is evaluated in every
mode by the one program ``evalnorm.main`` evaluates with (a mode evaluated
alone is another program, whose loss differs in the last bits).
The train-step cost of each k is ``benchmarks/cost.py``'s (amortized ratio).
"""

import concurrent.futures
import subprocess
import sys

import numpy as np

from evalnorm.training import files
from experiments import (command_line, quick_start, result_files, run_configs,
                         runner, scales)

NAME = 'estimate_every'


def seed_run(scale: scales.Scale, seed: int) -> runner.Run:
  """The training of one seed (its config and overrides; k is set per k)."""
  name = f'{NAME}_seed{seed}'
  if scale.name != 'full':  # The quick start, as its README command runs it.
    return quick_start.quick_start_run(scale, name, seed=seed)
  return runner.make_run(name, scale, seed=seed,
                         norm_batch_size=min(scale.b_values))


def reference_run(scale: scales.Scale, seed: int) -> runner.Run | None:
  """The quick start run of ``seed`` when it is this script's training with
  the default k (``experiments/quick_start.py`` runs it), else None."""
  reference = quick_start.seed_run(scale, seed)
  run = seed_run(scale, seed)
  if (reference.config, reference.overrides) != (run.config, run.overrides):
    return None
  return reference


def train_every_k(run: runner.Run, ks) -> dict[int, dict]:
  """{k: eval.json-like {'eval': ..., 'alpha_beta': ...}} from one training.

  Every k is evaluated in every mode, in one pass like
  ``python -m evalnorm.main``'s, so the default k's column is bit-identical to
  that command's ``eval.json``; only ``evalnorm`` differs between columns
  (the other modes do not read alpha/beta).
  """
  import jax  # pylint: disable=g-import-not-at-top
  # pylint: disable=g-import-not-at-top
  from evalnorm import data
  from evalnorm.training import (builders, config_lib, evaluation, parallel,
                                 trainer)
  from evalnorm.variables import alpha_beta_by_layer
  # pylint: enable=g-import-not-at-top
  config = run_configs.load_config(run)
  builders.validate(config, jax.device_count())
  dataset = data.make_dataset(config)
  total_steps = config_lib.num_train_steps(config, dataset.num_train_examples)
  model = builders.build_model(config, dataset.num_classes)
  state = parallel.replicate(trainer.create_train_state(
      model, jax.random.PRNGKey(config.seed), config.norm_batch_size,
      dataset.image_shape, trainer.Optimizers.from_config(config, total_steps)))
  steps = trainer.TrainPrograms(
      trainer.classifier_forward,
      update_batch_stats=trainer.updates_batch_stats(config))
  estimates = {k: (state.evalnorm, state.evalnorm_opt_state) for k in ks}
  batches = map(parallel.shard, dataset.train_batches(0))
  for step in range(1, total_steps + 1):
    batch = next(batches)
    for k in ks:
      if trainer.is_estimating_step(step, k):
        evalnorm, opt_state, _ = steps.alpha_beta(
            state.replace(evalnorm=estimates[k][0],
                          evalnorm_opt_state=estimates[k][1]), batch)
        estimates[k] = (evalnorm, opt_state)
    state, _ = steps.sgd(state, batch)
    if step % config.log_every_steps == 0:
      print(f'{run.name}: step {step}/{total_steps}', flush=True)

  host = parallel.to_host(state)
  estimated = builders.estimates_online(config)
  evaluator = evaluation.Evaluator(
      model, builders.build_model(config, dataset.num_classes, 'evalnorm'),
      evaluation.ModeSettings.from_config(config, estimated))
  out = {}
  for k in ks:
    evalnorm = parallel.to_host(estimates[k][0])
    modes = evaluator.modes(host.replace(evalnorm=evalnorm))
    out[k] = {'eval': evaluator(host.params, modes, dataset),
              'alpha_beta': alpha_beta_by_layer(evalnorm)}
  return out


def result_path(workdir_root: str, run: runner.Run):
  return files.path(workdir_root) / run.name / 'every_k.json'


def execute(context: command_line.Context, seed_runs: list[runner.Run], ks
            ) -> dict[str, dict[int, dict]]:
  """{run name: {k: result}}; each seed trains in a process of its own (one
  CPU device, as the quick start), ``context.jobs`` at a time; finished
  seeds are reused."""
  def one(run):
    path = result_path(context.workdir_root, run)
    if not path.exists():
      path.parent.mkdir(parents=True, exist_ok=True)
      with runner.appending(path.parent / 'log.txt') as log:
        status = subprocess.call(
            [sys.executable, '-m', 'experiments.estimate_every',
             f'--train={run.name}', f"--seeds={dict(run.overrides)['seed']}",
             f'--scale={context.scale.name}',
             f'--workdir_root={context.workdir_root}'],
            cwd=runner.ROOT, stdout=log, stderr=subprocess.STDOUT,
            env=runner._environment(run.devices, ()))  # pylint: disable=protected-access
      if status:
        raise runner.RunFailed(f'{run.name} exited with status {status}; see '
                               f'{path.parent / "log.txt"}')
    return {int(k): v for k, v in files.read_json(path).items()}
  with concurrent.futures.ThreadPoolExecutor(max(1, context.jobs)) as pool:
    return dict(zip([r.name for r in seed_runs], pool.map(one, seed_runs)))


def mean_alpha_beta(result: dict) -> tuple[float, float]:
  """Mean over layers (and channels) of the estimated alpha and beta."""
  layers = result['alpha_beta'].values()
  return (float(np.mean([np.mean(v['alpha']) for v in layers])),
          float(np.mean([np.mean(v['beta']) for v in layers])))


def spread(values) -> float:
  return float(np.std(values, ddof=1)) if len(values) > 1 else float('nan')


def summarize(results: dict[str, dict[int, dict]], ks) -> dict[int, dict]:
  """Per k: EvalNorm top-1 per seed, its mean and spread, mean alpha/beta."""
  out = {}
  for k in ks:
    per_seed = [by_k[k] for by_k in results.values()]
    top1 = [runner.top1(r, 'evalnorm') for r in per_seed]
    alpha_beta = np.array([mean_alpha_beta(r) for r in per_seed])
    out[k] = {'top1': top1, 'mean': float(np.mean(top1)), 'std': spread(top1),
              'alpha': float(np.mean(alpha_beta[:, 0])),
              'beta': float(np.mean(alpha_beta[:, 1])),
              'alpha_std': spread(alpha_beta[:, 0]),
              'beta_std': spread(alpha_beta[:, 1])}
  return out


def within_spread(row: dict, reference: dict) -> bool:
  """Top-1, alpha and beta: each mean over seeds differs from k = 1's by at
  most the larger of the two seed spreads."""
  return all(abs(row[name] - reference[name])
             <= max(row[spread_of], reference[spread_of])
             for name, spread_of in (('mean', 'std'), ('alpha', 'alpha_std'),
                                     ('beta', 'beta_std')))


def reference_check(context: command_line.Context, seed_runs, results) -> str:
  """A sentence comparing the quick start runs found with their k's column."""
  compared, differing, k = [], [], None
  for run in seed_runs:
    seed = dict(run.overrides)['seed']
    quick = reference_run(context.scale, seed)
    if quick is None:
      continue
    reference = runner.read_eval(context.workdir(quick))
    k = run_configs.load_config(quick).estimate_every_steps
    if reference is None or k not in results[run.name]:
      continue
    compared.append(str(seed))
    if reference['eval'] != results[run.name][k]['eval']:
      differing.append(str(seed))
  if not compared:
    return ('(No quick start run with a k of this curve was found to '
            'compare with.)\n')
  if differing:
    return ('THE SHARED TRAINING DIFFERS from the quick start runs '
            f"(`python -m evalnorm.main`, k = {k}) for seed(s) "
            f"{', '.join(differing)} (it must not).\n")
  return (f"For seed(s) {', '.join(compared)}, the quick start run "
          f'(`python -m evalnorm.main`, k = {k}) gives exactly the k = {k} '
          'column, in every mode.\n')


def headlines(context: command_line.Context, results: dict) -> dict:
  """``summarize`` by k (as a JSON key) of {run: {k: result}} (k an int, or
  its string as runs.json keeps it)."""
  by_k = {name: {int(k): result for k, result in by_k.items()}
          for name, by_k in results.items()}
  summary = summarize(by_k, context.scale.estimate_every_ks)
  return {'by_k': {str(k): row for k, row in summary.items()}}


def report(context: command_line.Context, seed_runs, results: dict, ks) -> dict:
  summary = summarize(results, ks)
  rows = [[str(k), f"{row['mean']:.2f}", f"{row['std']:.2f}",
           ' / '.join(f'{v:.2f}' for v in row['top1']),
           f"{row['alpha']:.3f} ({row['alpha_std']:.3f})",
           f"{row['beta']:.3f} ({row['beta_std']:.3f})",
           'yes' if within_spread(row, summary[1]) else 'NO']
          for k, row in summary.items()]
  seeds = ', '.join(str(dict(r.overrides)['seed']) for r in seed_runs)
  table = result_files.markdown_table(
      ['k', 'EvalNorm top-1 mean', 'std (n-1)', f'seeds {seeds}',
       'mean alpha (std)', 'mean beta (std)', 'within spread of k=1'], rows)
  ema = [runner.top1(results[r.name][1], 'ema') for r in seed_runs]
  setting = (result_files.scale_note(context)
             if context.scale.name != 'small' else
             'Scale `small`: the quick start (`configs/digits.py`, noisy '
             'digits, B=2, 3000 steps).\n')
  result_files.write_markdown(
      context.output(f'{NAME}.md'),
      'Online estimation every k steps: EvalNorm top-1 and alpha/beta',
      setting,
      'One training per seed serves every k (the SGD step is the same '
      'program whatever k); EMA top-1 per seed: '
      f"{' / '.join(f'{v:.2f}' for v in ema)}. "
      + reference_check(context, seed_runs, results),
      '"Within spread": the means over seeds of top-1, alpha and beta each '
      'differ from k=1\'s by at most the larger of the two seed standard '
      'deviations.\n', table,
      f'![k curve]({NAME}.png)\n')
  plot(context, summary)
  return headlines(context, results)


def plot(context: command_line.Context, summary: dict) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  ks = list(summary)
  figure, (top, bottom) = plt.subplots(2, 1, figsize=(6, 6), sharex=True)
  top.errorbar(ks, [summary[k]['mean'] for k in ks],
               yerr=[summary[k]['std'] for k in ks], marker='o', capsize=3)
  top.set_ylabel('EvalNorm top-1 (%)')
  for name, marker in (('alpha', 'o'), ('beta', 's')):
    bottom.errorbar(ks, [summary[k][name] for k in ks],
                    yerr=[summary[k][f'{name}_std'] for k in ks],
                    marker=marker, capsize=3, label=f'mean {name}')
  bottom.set_ylabel('estimate')
  bottom.legend()
  bottom.set_xscale('log', base=2)
  bottom.set_xticks(ks, [str(k) for k in ks])
  bottom.set_xlabel('k = estimate_every_steps')
  top.set_title(f'Estimating every k steps ({context.scale.name} scale)')
  for axes in (top, bottom):
    axes.grid(alpha=0.3)
  result_files.save_figure(figure, context.output(f'{NAME}.png'))
  plt.close(figure)


def planned_runs(context: command_line.Context, seeds=None) -> list[runner.Run]:
  """The trainings (one per seed; ``run_all --dry_run`` lists them)."""
  return [seed_run(context.scale, s)
          for s in seeds or command_line.seeds(context)]


def main(argv=None):
  parser = command_line.argument_parser(__doc__)
  parser.add_argument('--seeds', **command_line.SEEDS_FLAG['--seeds'])
  parser.add_argument('--train', default=None,
                      help='(internal) train this seed run and write its '
                      'every_k.json')
  args = parser.parse_args(argv)
  context = command_line.context_from_args(args)
  ks = context.scale.estimate_every_ks
  seed_runs = planned_runs(context, args.seeds)
  if args.train:
    run = next(r for r in seed_runs if r.name == args.train)
    results = train_every_k(run, ks)
    files.write_json(result_path(context.workdir_root, run), results)
    return results
  results = execute(context, seed_runs, ks)
  return report(context, seed_runs, results, ks)


if __name__ == '__main__':
  main()
