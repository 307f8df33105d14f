"""What every experiment script shares: its command line, where results go."""

import argparse
import dataclasses
import os
from collections.abc import Sequence
from typing import Any

from evalnorm.training import files
from experiments import runner
from experiments.scales import DEFAULT_SEEDS, SCALES, Scale


def argument_parser(description: str) -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(description=description)
  parser.add_argument('--scale', choices=sorted(SCALES), default='small',
                      help='smoke (seconds), small (this machine, built-in '
                      'data) or full (paper configs; accelerator and data)')
  parser.add_argument('--workdir_root', default=None,
                      help='where run workdirs go (default experiments/'
                      'workdirs/<scale>); finished runs there are reused')
  parser.add_argument('--results_dir', default=None,
                      help='where tables and plots go (default experiments/'
                      'results for small, experiments/results/<scale> else)')
  parser.add_argument('--jobs', type=int, default=1,
                      help='runs at a time (each is its own process)')
  return parser


@dataclasses.dataclass(frozen=True)
class Context:
  """One invocation of a script: its scale, where runs and results go."""
  scale: Scale
  workdir_root: str
  results_dir: str
  jobs: int
  options: dict[str, Any] = dataclasses.field(default_factory=dict)  # a script's own flags

  def execute(self, runs: Sequence[runner.Run]) -> dict[str, dict]:
    return runner.execute(runs, self.workdir_root, self.jobs)

  def workdir(self, run: runner.Run) -> str:
    return files.join(self.workdir_root, run.name)

  def output(self, filename: str) -> str:
    """The path of a results file (its directory is created)."""
    directory = files.path(self.results_dir)
    directory.mkdir(parents=True, exist_ok=True)
    return os.fspath(directory / filename)


def context_from_args(args: argparse.Namespace) -> Context:
  scale = SCALES[args.scale]
  workdir_root = args.workdir_root or files.join(runner.WORKDIR_ROOT,
                                                 scale.name)
  results_dir = args.results_dir or (
      runner.RESULTS_DIR if scale.name == 'small'
      else files.join(runner.RESULTS_DIR, scale.name))
  common = ('scale', 'workdir_root', 'results_dir', 'jobs')
  options = {k: v for k, v in vars(args).items() if k not in common}
  return Context(scale, workdir_root, results_dir, args.jobs, options)


def seed_list(text: str) -> tuple[int, ...]:
  """``--seeds=0,1,2`` as a tuple of ints."""
  return tuple(int(s) for s in text.split(','))


SEEDS_FLAG = {'--seeds': dict(default=','.join(map(str, DEFAULT_SEEDS)),
                              type=seed_list, help='comma-separated seeds '
                              '(at least 3 for a spread)')}


def seeds(context: Context) -> tuple[int, ...]:
  """The seeds of a script with ``SEEDS_FLAG`` (the default without it)."""
  return context.options.get('seeds', DEFAULT_SEEDS)


def main(script, argv=None):
  """The command line of an experiment script: run what it plans, report.

  ``script`` is the module: its docstring is the help, ``FLAGS`` (optional)
  its own flags as {name: argparse keywords}, which reach it as
  ``context.options``; ``planned_runs(context)`` the runs it needs and
  ``report(context, results)`` what it writes from their eval.json.
  """
  parser = argument_parser(script.__doc__)
  for name, keywords in getattr(script, 'FLAGS', {}).items():
    parser.add_argument(name, **keywords)
  context = context_from_args(parser.parse_args(argv))
  results = context.execute(script.planned_runs(context))
  return script.report(context, results)

