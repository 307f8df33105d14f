"""Running the training and estimation jobs that the experiment scripts share.

Every experiment is a set of `Run`s: one `python -m evalnorm.main` (training)
or `python -m evalnorm.estimate` (offline estimation) command each, in its own
process so that each can have its own number of (fake CPU) devices and a crash
in one does not take the others down. A run whose workdir already holds an
``eval.json`` is not run again: the scripts share runs (Fig. 2, 3 and 4 read
the same sweep), and an interrupted regeneration resumes where it stopped
(``evalnorm.main`` itself resumes from the last checkpoint).

The scale presets (`SCALES`) say which config, how much training and which
grid (B values, models, seeds) each script uses: ``smoke`` (seconds, for tests), ``small`` (this 2-core machine,
built-in digits data) and ``full`` (the paper's CIFAR/ImageNet configs, for
accelerators with the prepared data).

Each run's process sees ``Run.devices`` devices: that many fake CPU devices
on a CPU machine, and that many of the machine's GPUs on a GPU machine (taken
from a pool, so that concurrent runs get different GPUs). So a CIFAR run is
one device, SGD batch 128 cut into groups of B, whatever the machine.
"""

import argparse
import concurrent.futures
import contextlib
import dataclasses
import functools
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from typing import Any

from evalnorm.training import files, summary

# Where the code is (the runs' working directory; configs are read from
# there). Every file the runs write or read goes through evalnorm.training.files:
# --workdir_root and --results_dir may be bucket paths (gs://...).
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS_DIR = files.join(ROOT, 'experiments', 'results')
WORKDIR_ROOT = files.join(ROOT, 'experiments', 'workdirs')


@dataclasses.dataclass(frozen=True)
class DetectionGrid:
  """Table 2's detector runs at one scale."""
  config: str                       # the detector's config (file[:args])
  n_values: tuple[int, ...]         # images per SGD step = normalization batch
  seeds: tuple[int, ...]            # at N=2; one seed at the other N
  images: int                       # images seen in training, whatever N
  learning_rate_per_image: float
  pretrain_steps: int | None        # the digits classifier's (None: ImageNet's)
  overrides: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Scale:
  """How the experiments run at one scale: configs, overrides, every grid."""
  name: str
  config: str                       # config file, relative to the repository
  overrides: dict[str, Any]         # applied to every run; 'dataset' is the test-bed
  b_values: tuple[int, ...]         # the normalization batches of the B sweeps
  renorm_warmup_fraction: float     # Batch Renorm clip ramp, as a share of steps
  imagenet_config: str              # Table 1's config
  imagenet_overrides: dict[str, Any]
  # Fig. 5: (depths at width 1, widths at the smallest depth), and its B values.
  fig5_models: tuple[tuple[int, ...], tuple[int, ...]]
  fig5_b_values: tuple[int, ...]
  # Table 1: its B columns, and the examples each run sees (None: the config's).
  table1_b_values: tuple[int, ...]
  table1_examples: int | None
  # Table 2 analog: the B of pre-training and of fine-tuning, (source, target).
  transfer_pretrain_b: int
  transfer_b_values: tuple[int, ...]
  transfer_datasets: tuple[str, str]
  estimate_every_ks: tuple[int, ...]   # the k values of estimate_every
  detection: DetectionGrid
  more_fig2_datasets: tuple[str, ...] = ()  # Fig. 2's panels besides the test-bed

  @property
  def dataset(self) -> str:
    """The test-bed: what Fig. 1, 3, 4, 5 and the seeds train on."""
    return self.overrides['dataset']


SMALL_STEPS = 600

SCALES = {
    # Enough to exercise every code path in seconds; the numbers mean nothing.
    'smoke': Scale(
        'smoke', 'configs/digits.py',
        dict(dataset='digits', stem_strides=1, num_train_steps=3,
             batch_size=16, eval_batch_size=64, checkpoint_every_steps=3,
             eval_every_steps=1000, log_every_steps=1,
             offline_estimation_steps=2),
        (2, 4), 0.5, 'configs/digits.py',
        dict(dataset='digits', stem_strides=1, eval_batch_size=64,
             checkpoint_every_steps=1000, eval_every_steps=1000,
             log_every_steps=1, offline_estimation_steps=2),
        fig5_models=((8, 14), (1, 2)), fig5_b_values=(2,),
        table1_b_values=(2,), table1_examples=2 * 8 * 2,
        transfer_pretrain_b=2,  # batch 16
        transfer_b_values=(2,), transfer_datasets=('digits', 'digits'),
        estimate_every_ks=(1, 2),
        detection=DetectionGrid(
            'configs/detection.py', (2,), (0,), 32, 0.01, pretrain_steps=3,
            overrides=dict(num_eval_images=16, num_proposals=8,
                           rois_per_image=8, pre_nms_top_k=50,
                           warmup_steps=0, eval_batch_size=16))),
    # The built-in noisy digits at a size this 2-core machine runs in minutes.
    'small': Scale(
        'small', 'configs/digits.py',
        dict(dataset='noisy_digits', num_train_steps=SMALL_STEPS,
             checkpoint_every_steps=SMALL_STEPS, eval_every_steps=SMALL_STEPS,
             log_every_steps=100),
        (2, 4, 8, 16, 32, 64, 128), 1 / 3, 'configs/digits.py',
        dict(checkpoint_every_steps=1000, eval_every_steps=100_000,
             log_every_steps=100, offline_estimation_steps=300),
        # Reduced to run on 2 cores; B = 2 is the only B at which EMA
        # evaluation breaks down on the built-in data (see Fig. 2).
        fig5_models=((8, 14, 20), (1, 2)), fig5_b_values=(2, 4, 8),
        table1_b_values=(2, 4, 8, 16, 32), table1_examples=38_400,
        transfer_pretrain_b=128, transfer_b_values=(2, 4, 8),
        transfer_datasets=('digits', 'noisy_digits'),
        estimate_every_ks=(1, 2, 4, 8, 16),
        detection=DetectionGrid('configs/detection.py', (2, 4, 8), (0, 1, 2),
                                6000, 0.01, pretrain_steps=3000)),
    # The paper's setups; needs prepared tfds data and an accelerator.
    # CIFAR-100 is the paper's test-bed; Fig. 2 also has a CIFAR-10 panel.
    'full': Scale(
        'full', 'configs/cifar.py', dict(dataset='cifar100'),
        (2, 4, 8, 16, 32, 64, 128), 0.04, 'configs/imagenet.py', {},
        fig5_models=((20, 56, 110, 254), (1, 2, 4, 8)), fig5_b_values=(4, 8),
        table1_b_values=(2, 4, 8, 16, 32), table1_examples=None,
        transfer_pretrain_b=128, transfer_b_values=(2, 4, 8),
        transfer_datasets=('cifar100', 'cifar10'),
        estimate_every_ks=(1, 2, 4, 8, 16),
        detection=DetectionGrid('configs/detection.py:dataset=coco', (2, 4, 8),
                                (0, 1, 2), 64 * 118_287, 0.015 / 8,
                                pretrain_steps=None),
        more_fig2_datasets=('cifar10',)),
}


@dataclasses.dataclass(frozen=True)
class Run:
  """One command: train (``checkpoint`` None) or estimate offline from a run."""
  name: str
  config: str
  overrides: tuple[tuple[str, Any], ...]
  devices: int = 1                  # devices its process sees (CPU or GPU)
  checkpoint: str | None = None     # offline estimation: the trained run's name


def make_run(name: str, scale: Scale, devices: int = 1,
             checkpoint: str | None = None, config: str | None = None,
             **overrides) -> Run:
  """A run of ``scale`` (its config and shared overrides) plus ``overrides``."""
  merged = dict(scale.overrides if config is None else {})
  merged.update(overrides)
  return Run(name, config or scale.config, tuple(sorted(merged.items())),
             devices, checkpoint)


def _format_value(value) -> str:
  if isinstance(value, (tuple, list)):
    return '(' + ','.join(str(v) for v in value) + ',)'
  return str(value)


def command(run: Run, workdir_root: str) -> list[str]:
  """The command line of ``run``, as a user would type it."""
  workdir = files.join(workdir_root, run.name)
  module = 'evalnorm.main' if run.checkpoint is None else 'evalnorm.estimate'
  args = [sys.executable, '-m', module, f'--config={run.config}',
          f'--workdir={workdir}']
  if run.checkpoint is not None:
    args.append(f'--checkpoint={files.join(workdir_root, run.checkpoint)}')
  args += [f'--config.{k}={_format_value(v)}' for k, v in run.overrides]
  return args


class RunFailed(RuntimeError):
  """A run exited with an error; the message ends with its log's tail."""


def _environment(devices: int, gpus: Sequence[str]) -> dict[str, str]:
  """A run's environment: ``devices`` fake CPU devices, and ``gpus`` if any.

  pmap splits the SGD batch over every device a process sees, so limiting
  what it sees is what keeps the paper's one-device CIFAR setup on a
  multi-GPU machine.
  """
  env = dict(os.environ)
  flags = [f for f in env.get('XLA_FLAGS', '').split()
           if not f.startswith('--xla_force_host_platform_device_count')]
  flags.append(f'--xla_force_host_platform_device_count={devices}')
  env['XLA_FLAGS'] = ' '.join(flags)
  if gpus:
    env['CUDA_VISIBLE_DEVICES'] = ','.join(gpus)
  env.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  return env


@functools.cache
def machine_gpus() -> tuple[str, ...]:
  """This machine's NVIDIA GPUs (as CUDA_VISIBLE_DEVICES would name them)."""
  visible = os.environ.get('CUDA_VISIBLE_DEVICES')
  if visible is not None:
    return tuple(v.strip() for v in visible.split(',') if v.strip())
  try:
    listed = subprocess.run(
        ['nvidia-smi', '--query-gpu=index', '--format=csv,noheader'],
        capture_output=True, text=True, timeout=60, check=True)
  except (OSError, subprocess.SubprocessError):
    return ()
  return tuple(listed.stdout.split())


class DevicePool:
  """Hands each run its own GPUs, waiting while concurrent runs hold them."""

  def __init__(self, gpus: Sequence[str]):
    self._free = list(gpus)
    self._count = len(gpus)
    self._changed = threading.Condition()

  @contextlib.contextmanager
  def take(self, devices: int):
    """Up to ``devices`` GPUs (none on a machine without GPUs)."""
    # A machine with fewer GPUs than asked runs the same groups of B on
    # fewer devices (more per device); the config's validation checks it.
    count = min(devices, self._count)
    with self._changed:
      self._changed.wait_for(lambda: len(self._free) >= count)
      taken, self._free = self._free[:count], self._free[count:]
    try:
      yield taken
    finally:
      with self._changed:
        self._free += taken
        self._changed.notify_all()


def read_eval(workdir: files.PathLike) -> dict | None:
  path = files.path(workdir) / 'eval.json'
  if not path.exists():
    return None
  return files.read_json(path)


@contextlib.contextmanager
def appending(path):
  """A local file object whose writes end up appended to ``path``.

  A child process writes to a file descriptor, which only a local file
  has: a bucket's log is written locally and appended to it at the end.
  """
  if not files.is_remote(path):
    with path.open('a') as log:
      yield log
    return
  with tempfile.TemporaryFile('w+') as log:
    try:
      yield log
    finally:
      log.seek(0)
      before = path.read_text() if path.exists() else ''
      path.write_text(before + log.read())


def prerequisites(run: Run, workdir_root: str) -> set[str]:
  """Names of the runs ``run`` reads: its checkpoint, or its ``init_from``."""
  names = {run.checkpoint} if run.checkpoint else set()
  init_from = dict(run.overrides).get('init_from')
  if init_from and os.path.dirname(init_from) == workdir_root:
    names.add(os.path.basename(init_from))
  return names


def _execute_one(run: Run, workdir_root: str, pool: DevicePool,
                 before: Sequence[concurrent.futures.Future] = ()) -> dict:
  workdir = files.path(workdir_root) / run.name
  done = read_eval(workdir)
  if done is not None:
    return done
  for future in before:  # the runs it reads; their failure is its failure
    future.result()
  workdir.mkdir(parents=True, exist_ok=True)
  log_path = workdir / 'log.txt'
  started = time.time()
  with appending(log_path) as log, pool.take(run.devices) as gpus:
    log.write(' '.join(command(run, workdir_root)) + '\n')
    log.flush()
    status = subprocess.call(command(run, workdir_root), cwd=ROOT,
                             stdout=log, stderr=subprocess.STDOUT,
                             env=_environment(run.devices, gpus))
  if status != 0:
    tail = ''.join(log_path.read_text().splitlines(keepends=True)[-15:])
    raise RunFailed(f'run {run.name} exited with status {status}; '
                    f'log {log_path} ends with:\n{tail}')
  result = read_eval(workdir)
  result['wall_seconds'] = round(time.time() - started, 1)
  files.write_json(workdir / 'eval.json', result)
  print(f'  {run.name}: done in {result["wall_seconds"]:.0f} s', flush=True)
  return result


def execute(runs: Sequence[Run], workdir_root: str, jobs: int = 1
            ) -> dict[str, dict]:
  """Runs what has no eval.json yet (``jobs`` at a time); {name: eval.json}.

  A run that reads another (``prerequisites``) starts once that one is done;
  listed after it, it cannot wait for a run that waits for a free job.
  """
  todo = [r for r in runs if read_eval(files.join(workdir_root, r.name)) is None]
  if todo:
    print(f'{len(todo)} of {len(runs)} runs to do in {workdir_root}', flush=True)
  devices = DevicePool(machine_gpus())
  with concurrent.futures.ThreadPoolExecutor(max(1, jobs)) as pool:
    futures = {}
    for r in runs:
      before = [futures[n] for n in prerequisites(r, workdir_root)
                if n in futures]
      futures[r.name] = pool.submit(_execute_one, r, workdir_root, devices,
                                    before)
    return {name: f.result() for name, f in futures.items()}


# --------------------------------------------------------------------------
# What every script shares: its command line, and where results go.


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
  scale: Scale
  workdir_root: str
  results_dir: str
  jobs: int
  options: dict[str, Any] = dataclasses.field(default_factory=dict)  # a script's own flags

  def execute(self, runs: Sequence[Run]) -> dict[str, dict]:
    return execute(runs, self.workdir_root, self.jobs)

  def workdir(self, run: Run) -> str:
    return files.join(self.workdir_root, run.name)

  def output(self, filename: str) -> str:
    """The path of a results file (its directory is created)."""
    directory = files.path(self.results_dir)
    directory.mkdir(parents=True, exist_ok=True)
    return os.fspath(directory / filename)


def context_from_args(args: argparse.Namespace) -> Context:
  scale = SCALES[args.scale]
  workdir_root = args.workdir_root or files.join(WORKDIR_ROOT, scale.name)
  results_dir = args.results_dir or (
      RESULTS_DIR if scale.name == 'small'
      else files.join(RESULTS_DIR, scale.name))
  common = ('scale', 'workdir_root', 'results_dir', 'jobs')
  options = {k: v for k, v in vars(args).items() if k not in common}
  return Context(scale, workdir_root, results_dir, args.jobs, options)


def seed_list(text: str) -> tuple[int, ...]:
  """``--seeds=0,1,2`` as a tuple of ints."""
  return tuple(int(s) for s in text.split(','))


DEFAULT_SEEDS = (0, 1, 2)
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


def top1(result: dict, mode: str) -> float:
  return result['eval'][mode]['top1']


def top5(result: dict, mode: str) -> float:
  """Top-5 in percent (the paper's Recall@5); NaN for a run evaluated
  before eval.json recorded it."""
  return result['eval'][mode].get('top5', float('nan'))


def error(result: dict, mode: str) -> float:
  """Test error in percent, as the paper plots it."""
  return 100.0 - top1(result, mode)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
  """``summary.markdown_table`` as a section of a result file (ends a line)."""
  return summary.markdown_table(headers, rows) + '\n'


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


def scale_note(context: Context) -> str:
  """One line saying what was run, for the top of every result file."""
  s = context.scale
  settings = ', '.join(f'{k}={v}' for k, v in sorted(s.overrides.items())
                       if k in ('dataset', 'num_train_steps', 'batch_size'))
  return (f'Scale `{s.name}`: `{s.config}`' + (f' with {settings}' if settings
                                               else '') + '.\n')


# --------------------------------------------------------------------------
# In-process access to a finished run (for the scripts that look inside it).


def load_config(run: Run):
  """The ml_collections config ``run`` trained with (its file + overrides)."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  # 'configs/detection.py:dataset=coco': the file and get_config's argument,
  # as ml_collections' config_flags reads them.
  filename, _, argument = run.config.partition(':')
  spec = importlib.util.spec_from_file_location(
      'run_config', os.path.join(ROOT, filename))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(argument or None)
  for key, value in run.overrides:
    config[key] = value
  validate(config, num_devices=1, training=False)
  return config


def validate(config, num_devices: int, training: bool) -> None:
  """The program's own checks: the detector's for a detection config."""
  # pylint: disable=g-import-not-at-top
  from evalnorm.detection import train as detection_train
  from evalnorm.training import builders
  # pylint: enable=g-import-not-at-top
  if detection_train.is_detection(config):
    detection_train.validate(config, num_devices)
  else:
    builders.validate(config, num_devices, training=training)


def training_steps(run: Run) -> int:
  """The steps a training run takes (its config may give epochs)."""
  return steps_of(load_config(run))


def steps_of(config) -> int:
  """The steps a training with ``config`` takes (epochs count in the
  classification datasets' examples; a detection config gives steps)."""
  # pylint: disable=g-import-not-at-top
  from evalnorm import data
  from evalnorm.training import config_lib
  # pylint: enable=g-import-not-at-top
  if config.num_epochs is None:
    return config.num_train_steps
  return config_lib.num_train_steps(
      config, data.DATASETS[config.dataset].train_examples)


def with_renorm_ramp(run: Run, scale: Scale) -> Run:
  """``run`` with Batch Renorm's clip ramp over the scale's share of its steps."""
  ramp = max(1, int(training_steps(run) * scale.renorm_warmup_fraction))
  overrides = dict(run.overrides, renorm_warmup_steps=ramp)
  return dataclasses.replace(run, overrides=tuple(sorted(overrides.items())))


def model_name(config) -> str:
  """The listing's model column."""
  from evalnorm.detection import train as detection_train  # pylint: disable=g-import-not-at-top
  backbone = (f'ResNet-{config.depth} v2 x{config.width}'
              if config.model == 'resnet_v2_cifar' else
              f'ResNet-8 v2 x{config.width}' if config.model == 'resnet_v2_small'
              else 'ResNet-50 v2')
  if detection_train.is_detection(config):
    return f'Faster R-CNN, {backbone}'
  return backbone


LISTING_HEADERS = ('run', 'program', 'dataset', 'model', 'norm', 'B', 'batch',
                   'devices', 'steps', 'lr')


def describe(run: Run) -> list[str]:
  """One listing row: what ``run`` trains or estimates, from its config.

  Validated for the run's own device count, so a listed run is one that
  passes the program's checks.
  """
  config = load_config(run)
  validate(config, run.devices, training=run.checkpoint is None)
  model = model_name(config)
  norm = config.norm + (f' (ramp {config.renorm_warmup_steps:,})'
                        if config.norm == 'renorm' else '')
  if run.checkpoint is None:
    program = 'train'
    steps = steps_of(config)
    learning_rate = f'{config.learning_rate:g}'
  else:
    program = f'offline, from {run.checkpoint}'
    steps = config.offline_estimation_steps
    learning_rate = (f'{config.alpha_beta_learning_rate:g} '
                     f'({config.alpha_beta_optimizer}, alpha/beta)')
  return [run.name, program, config.dataset, model, norm,
          str(config.norm_batch_size), str(config.batch_size),
          str(run.devices), f'{steps:,}', learning_rate]


def listing(planned: Sequence[Run]) -> str:
  """A markdown table describing every run of ``planned``."""
  return markdown_table(LISTING_HEADERS, [describe(r) for r in planned])


def load_trained(run: Run, workdir_root: str):
  """(config, dataset, EvalNorm model, variables) of a finished training run."""
  import jax  # pylint: disable=g-import-not-at-top
  from evalnorm import data  # pylint: disable=g-import-not-at-top
  from evalnorm.training import builders, checkpoint, parallel
  config = load_config(run)
  dataset = data.make_dataset(config)
  model = builders.build_model(config, dataset.num_classes, 'evalnorm')
  template = parallel.init_variables(model, jax.random.PRNGKey(0),
                                     config.norm_batch_size, dataset.image_shape)
  manager = checkpoint.open_existing(files.join(workdir_root, run.name))
  return config, dataset, model, checkpoint.restore_variables(manager, template)
