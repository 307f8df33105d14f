r"""Cost of EvalNorm against flax's nn.BatchNorm: train step, evaluation, memory.

    .venv/bin/python -m benchmarks.cost [--model cifar|resnet50|both] [--repeats N]
        [--warmup N] [--batch N] [--image_size N] [--half_precision] [--ablate]
        [--smoke]

(``python benchmarks/cost.py ...`` works too.) One model is built three ways
through the training program's own code (``evalnorm.training.builders.build_model`` and
``trainer.create_train_state`` from an ml_collections config):

  (a) flax ``nn.BatchNorm`` (``norm='batchnorm'``), the reference;
  (b) EvalNorm with B = the per-device batch (one group);
  (c) EvalNorm with B = 2.

Train step: the programs ``evalnorm.training.trainer.TrainPrograms`` runs, each pmapped over one
device: the SGD step (``TrainPrograms.sgd``, state donated), which every step runs,
and for (c) the alpha/beta step (``TrainPrograms.alpha_beta``) that estimating steps
run before it. Reported beside them: an estimating step (both programs) and the mean
step at the default ``estimate_every_steps`` (amortized), against (a).
Evaluation: ``model.apply(variables, images, train=False)`` jitted, for flax
BatchNorm (EMA statistics) and EvalNorm with ``eval_stats='ema'`` and
``'evalnorm'`` (the EvalNorm forward pass does not depend on B).

Timing: every function is compiled ahead of time (compilation excluded), called
``--warmup`` times, then ``--repeats`` rounds call each variant once, in a
rotating order, blocking on the results; so a change in machine load hits all
variants alike. Reported: min and median ms and three ratios against flax
BatchNorm from this same run: of the minimums (the most stable on a noisy
machine), of the medians, and the median of the per-round ratios.

Memory: XLA's compiled memory analysis, peak = arguments + outputs - donated
(aliased) buffers + temporaries; ``temp`` is the activation/workspace part. On
a GPU the allocator's ``peak_bytes_in_use`` is printed too (a process-wide
running maximum, read after each variant's warm-up, so exact for the first
variant and an upper bound for the others). HLO cost: XLA's ``cost_analysis``
flops and bytes accessed of the compiled step.

Models: CIFAR ResNet-20 v2 at batch 128 on 32x32x3 inputs (20 repeats by
default); ResNet-50 v2 at batch 16 on 64x64x3 inputs (8 repeats; on 2 CPU
cores a train step takes about 2 s and compiling the six programs about 1
minutes). ``--batch`` and ``--image_size`` change either (e.g. ``--model
resnet50 --image_size 224 --batch 64`` on a GPU). ``--half_precision``:
bfloat16 activations (``config.half_precision``). ``--ablate`` adds the
alpha/beta step at the large B. ``--smoke``: the CIFAR ResNet v2 cut to one basic block
(``build_model``'s model with ``stage_sizes=(1,)``), batch 8, 8x8 inputs, 2
repeats, XLA optimizations mostly off: it compiles in seconds, and its numbers
only show that the benchmark runs.

XLA:CPU caveat: by default XLA hands convolutions (and the per-channel
elementwise ops it can take along) to YNNPACK. On the 2-core development
machine those kernels are about 2x slower than XLA's Eigen ones and their
times vary by up to 2x between calls, for BatchNorm and EvalNorm alike, so
train-step ratios under the default flags move by several percent between
runs. ``XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=`` (no YNNPACK
fusions: the same Eigen kernels for every variant) gives faster, steadier
numbers there. The flags in force are printed with the results; compare
ratios, not times, across flag settings.
"""

import argparse
import concurrent.futures
import contextlib
import dataclasses
import functools
import math
import os
import re
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

if __package__ in (None, ''):  # Run as a script: python benchmarks/cost.py
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import flax
import jax
import numpy as np

from evalnorm.training import (builders, config_lib, files, parallel, summary,
                               trainer)
from experiments import provenance
from evalnorm.variables import rule_of_thumb, set_alpha_beta

MIB = 2.0**20
# EvalNorm's cost goals against flax BatchNorm (ratios of time): the goal,
# and the ceiling a measured ratio must not pass.
GOAL, CEILING = 1.05, 1.10


@dataclasses.dataclass(frozen=True)
class Setup:
  """One model at one input size and batch."""
  name: str
  title: str
  model: str                     # config.model
  depth: int                     # config.depth (CIFAR ResNets only)
  image_shape: tuple[int, int, int]
  batch: int                     # per-device batch (one device)
  small_group: int               # B of variant (c)
  num_classes: int
  repeats: int                   # default --repeats
  fast_compile: bool = False     # smoke: jax_disable_most_optimizations
  stage_sizes: tuple[int, ...] | None = None  # smoke: fewer blocks than depth


SETUPS = {
    'cifar': Setup('cifar', 'CIFAR ResNet-20 v2', 'resnet_v2_cifar', 20,
                   (32, 32, 3), 128, 2, 10, 20),
    'resnet50': Setup('resnet50', 'ResNet-50 v2', 'resnet50_v2', 20,
                      (64, 64, 3), 16, 2, 1000, 8),
}
SMOKE = Setup('smoke', 'ResNet v2, one basic block (smoke run)',
              'resnet_v2_cifar', 8, (8, 8, 3), 8, 2, 10, 2, fast_compile=True,
              stage_sizes=(1,))


@dataclasses.dataclass(frozen=True)
class Variant:
  """One way to build the model's norm layers, and which program to time."""
  key: str
  label: str
  norm: str
  group_size: int
  # 'sgd': ``TrainPrograms.sgd`` (every step); 'alpha_beta':
  # ``TrainPrograms.alpha_beta``, which separate estimation runs before it;
  # 'sgd_estimating': ``TrainPrograms.sgd_estimating``, fused estimation's
  # estimating step.
  program: str = 'sgd'


def train_variants(setup: Setup, ablate: bool) -> list[Variant]:
  b, small = setup.batch, setup.small_group
  variants = [
      Variant('batchnorm', 'flax nn.BatchNorm', 'batchnorm', b),
      Variant(f'evalnorm_B{b}', f'EvalNorm B={b}, SGD step', 'evalnorm', b),
      Variant(f'evalnorm_B{small}', f'EvalNorm B={small}, SGD step',
              'evalnorm', small),
      Variant(f'evalnorm_B{small}_alpha_beta',
              f'EvalNorm B={small}, alpha/beta step (separate)', 'evalnorm',
              small, 'alpha_beta'),
      Variant(f'evalnorm_B{small}_fused',
              f'EvalNorm B={small}, SGD step with estimation (fused)',
              'evalnorm', small, 'sgd_estimating'),
  ]
  if ablate:  # The alpha/beta pass at the large B too.
    variants.append(Variant(f'evalnorm_B{b}_alpha_beta',
                            f'EvalNorm B={b}, alpha/beta step', 'evalnorm', b,
                            'alpha_beta'))
  return variants


def amortized_ratio(sgd: float, alpha_beta: float, reference: float,
                    every: int) -> float:
  """Mean train-step time over k steps / reference: k SGD steps, one of them
  preceded by the alpha/beta step (separate estimation)."""
  return (sgd + alpha_beta / every) / reference


def amortized_fused_ratio(sgd: float, estimating: float, reference: float,
                          every: int) -> float:
  """Mean train-step time over k steps / reference: k - 1 SGD steps and one
  estimating SGD step (fused estimation)."""
  return (sgd * (every - 1) + estimating) / every / reference


def make_config(setup: Setup, norm: str, group_size: int,
                half_precision: bool):
  """The training program's config for this setup (validated for 1 device)."""
  config = config_lib.base_config()
  config.model = setup.model
  config.depth = setup.depth
  config.width = 1
  config.stem_strides = 1
  config.image_size = setup.image_shape[0]
  config.batch_size = config.eval_batch_size = setup.batch
  config.norm = norm
  config.norm_batch_size = group_size
  config.half_precision = half_precision
  config.estimate_alpha_beta = True
  builders.validate(config, num_devices=1)
  return config


# --------------------------------------------------------------------------
# Measurement helpers.


@contextlib.contextmanager
def fast_compile(enabled: bool):
  """XLA optimizations mostly off (``jax_disable_most_optimizations``).

  For the smoke run: compiling then takes a fraction of the time (the model
  init too, which ``create_train_state`` jits); the programs run slower.
  """
  flag = 'jax_disable_most_optimizations'
  previous = jax.config.values.get(flag, False)
  if enabled:
    jax.config.update(flag, True)
  try:
    yield
  finally:
    if enabled:
      jax.config.update(flag, previous)


def _first(analysis):
  if isinstance(analysis, (list, tuple)):
    return analysis[0] if analysis else None
  return analysis


def memory_of(compiled) -> dict[str, float]:
  """Compiled memory analysis in bytes: peak estimate and temporaries."""
  try:
    m = _first(compiled.memory_analysis())
  except (NotImplementedError, RuntimeError, AttributeError):  # Not on this backend.
    m = None
  if m is None:
    return {'peak': math.nan, 'temp': math.nan}
  peak = (m.argument_size_in_bytes + m.output_size_in_bytes
          - m.alias_size_in_bytes + m.temp_size_in_bytes)
  return {'peak': float(peak), 'temp': float(m.temp_size_in_bytes)}


def cost_of(compiled) -> dict[str, float]:
  """XLA's HLO cost analysis: flops and bytes accessed."""
  try:
    c = _first(compiled.cost_analysis())
  except (NotImplementedError, RuntimeError, AttributeError):
    c = None
  c = c or {}
  return {'flops': float(c.get('flops', math.nan)),
          'bytes': float(c.get('bytes accessed', math.nan))}


def device_peak_bytes(device) -> float:
  """The allocator's running peak (GPU/TPU); NaN where there is none (CPU)."""
  try:
    stats = device.memory_stats()
  except (NotImplementedError, RuntimeError, AttributeError):
    stats = None
  if not stats or 'peak_bytes_in_use' not in stats:
    return math.nan
  return float(stats['peak_bytes_in_use'])


class TrainRunner:
  """Calls a compiled step on its own state, as train_loop does: the SGD
  steps replace the (donated) state; the alpha/beta step only reads it."""

  def __init__(self, compiled, state, batch, program: str):
    self.compiled, self.state, self.batch = compiled, state, batch
    self.replaces_state = program != 'alpha_beta'

  def __call__(self):
    out = self.compiled(self.state, self.batch)
    jax.block_until_ready(out)
    if self.replaces_state:
      self.state = out[0]


def warm_up(runners: dict[str, Callable[[], None]], calls: int,
            device) -> dict[str, float]:
  """Calls each runner ``calls`` times; returns the device peak after each."""
  peaks = {}
  for key, run in runners.items():
    for _ in range(calls):
      run()
    peaks[key] = device_peak_bytes(device)
  return peaks


def time_interleaved(runners: dict[str, Callable[[], None]],
                     repeats: int) -> dict[str, list[float]]:
  """Seconds per call; each round calls every runner once, rotating the order."""
  keys = list(runners)
  times = {key: [] for key in keys}
  for r in range(repeats):
    shift = r % len(keys)
    for key in keys[shift:] + keys[:shift]:
      start = time.perf_counter()
      runners[key]()
      times[key].append(time.perf_counter() - start)
  return times


def summarize(times: dict[str, list[float]], ref: str) -> dict[str, dict]:
  """min/median seconds and ratios against ``ref`` (min, median, paired)."""
  out = {}
  ref_min, ref_median = min(times[ref]), statistics.median(times[ref])
  for key, ts in times.items():
    t_min, t_median = min(ts), statistics.median(ts)
    out[key] = {
        'min_s': t_min, 'median_s': t_median,
        'ratio_min': t_min / ref_min, 'ratio_median': t_median / ref_median,
        'ratio_paired': statistics.median(
            t / r for t, r in zip(ts, times[ref])),
    }
  return out


def _fmt(value: float, spec: str) -> str:
  return 'n/a' if value is None or not math.isfinite(value) else format(value, spec)


def _ratio(value: float, ref: float) -> float:
  return value / ref if ref and math.isfinite(ref) else math.nan


def result_table(rows: dict[str, dict], labels: dict[str, str], ref: str,
                 first_column: str) -> str:
  headers = [first_column, 'min ms', 'median ms', 'ratio (min)',
             'ratio (median)', 'ratio (paired median)', 'peak MiB',
             'peak ratio', 'temp MiB', 'temp ratio', 'GFLOP', 'GB accessed']
  gpu = any(math.isfinite(r['device_peak']) for r in rows.values())
  if gpu:
    headers.insert(10, 'device peak MiB')
  table = []
  for key, r in rows.items():
    row = [labels[key], _fmt(1e3 * r['min_s'], '.2f'),
           _fmt(1e3 * r['median_s'], '.2f'),
           _fmt(r['ratio_min'], '.3f') + 'x', _fmt(r['ratio_median'], '.3f') + 'x',
           _fmt(r['ratio_paired'], '.3f') + 'x',
           _fmt(r['peak'] / MIB, '.1f'), _fmt(_ratio(r['peak'], rows[ref]['peak']), '.3f') + 'x',
           _fmt(r['temp'] / MIB, '.1f'), _fmt(_ratio(r['temp'], rows[ref]['temp']), '.3f') + 'x',
           _fmt(r['flops'] / 1e9, '.3f'), _fmt(r['bytes'] / 1e9, '.3f')]
    if gpu:
      row.insert(10, _fmt(r['device_peak'] / MIB, '.1f'))
    table.append(row)
  return summary.markdown_table(headers, table)


# --------------------------------------------------------------------------
# The benchmark.


def build_states(setup: Setup, variants: list[Variant], half_precision: bool):
  """Models and host train states; every variant starts from the same weights.

  One ``create_train_state`` (an EvalNorm model: its variables are BatchNorm's
  plus the ``evalnorm`` collection) serves every variant: the norm layers of
  all variants have the same ``params`` and ``batch_stats``.
  """
  models, configs = {}, {}
  for v in variants:
    configs[v.key] = make_config(setup, v.norm, v.group_size, half_precision)
    models[v.key] = builders.build_model(configs[v.key], setup.num_classes)
    if setup.stage_sizes:
      models[v.key] = models[v.key].clone(stage_sizes=setup.stage_sizes)
  init_key = next(v.key for v in variants if v.norm == 'evalnorm')
  # The init is not timed: compiled with optimizations off (much faster).
  with fast_compile(True):
    state = trainer.create_train_state(
        models[init_key], jax.random.PRNGKey(0),
        configs[init_key].norm_batch_size, setup.image_shape,
        trainer.Optimizers.from_config(configs[init_key], total_steps=1000))
  state = jax.device_get(state)
  states = {}
  for v in variants:
    s = state.replace(apply_fn=models[v.key].apply)
    if v.norm == 'batchnorm':
      s = s.replace(evalnorm={}, evalnorm_opt_state=s.evalnorm_tx.init({}))
    states[v.key] = s
  return models, states


def run_setup(setup: Setup, repeats: int, warmup: int, half_precision: bool,
              ablate: bool) -> dict[str, Any]:
  device = jax.local_devices()[0]
  dtype = 'bfloat16' if half_precision else 'float32'
  h, w, c = setup.image_shape
  print(f'\n## {setup.title}: batch {setup.batch}, {h}x{w}x{c} inputs, '
        f'{dtype} activations\n')
  print(f'device: {device.device_kind} (platform {device.platform}, '
        f'{jax.local_device_count()} local device(s), 1 used; '
        f'{os.cpu_count()} CPU cores); jax {jax.__version__}, '
        f'flax {flax.__version__}')
  print(f'timing: {repeats} interleaved rounds after {warmup} warm-up call(s); '
        'compilation excluded')
  # Compiler flags change which kernels XLA picks (on CPU: YNNPACK or Eigen
  # convolutions), so a result names them.
  print(f"XLA_FLAGS: {os.environ.get('XLA_FLAGS') or '(none)'}")
  if setup.fast_compile:
    print('XLA optimizations mostly off (jax_disable_most_optimizations; smoke '
          'run: the numbers only show that the benchmark works)')

  variants = train_variants(setup, ablate)
  ref = variants[0].key
  labels = {v.key: v.label for v in variants}
  models, states = build_states(setup, variants, half_precision)
  rng = np.random.default_rng(0)
  images = rng.standard_normal((setup.batch,) + setup.image_shape).astype(np.float32)
  labels_np = rng.integers(0, setup.num_classes, setup.batch).astype(np.int32)

  # Everything is lowered first, then compiled at once on a thread per core
  # (XLA compiles outside the GIL): compilation is not timed, only waited for.
  start = time.perf_counter()
  # Train step, as train_loop runs it (pmap over one device, state donated).
  train_lowered, train_inputs = {}, {}
  for v in variants:
    state = parallel.replicate(states[v.key], [device])
    batch = parallel.replicate({'image': images, 'label': labels_np}, [device])
    # As trainer.TrainPrograms runs them: the SGD step donates the state; the
    # alpha/beta step reads it.
    steps = trainer.TrainPrograms(trainer.classifier_forward,
                                  devices=parallel.Pmap([device]))
    step = getattr(steps, v.program)
    train_lowered[v.key] = step.lower(state, batch)
    train_inputs[v.key] = (state, batch)

  # Evaluation forward pass (train=False): flax BN's EMA against EvalNorm.
  en_key = next(v.key for v in variants
                if v.norm == 'evalnorm' and v.group_size == setup.small_group)
  en_model = models[en_key]
  host = states[en_key]
  bn_vars = {'params': host.params, 'batch_stats': host.batch_stats}
  en_vars = {**bn_vars, 'evalnorm': set_alpha_beta(
      host.evalnorm, rule_of_thumb(setup.small_group))}
  eval_models = {
      'batchnorm': (models[ref], bn_vars, 'flax nn.BatchNorm (EMA)'),
      'evalnorm_ema': (
          en_model.clone(norm=functools.partial(en_model.norm, eval_stats='ema')),
          en_vars, "EvalNorm eval_stats='ema'"),
      'evalnorm': (en_model, en_vars, "EvalNorm eval_stats='evalnorm'"),
  }
  x = jax.device_put(images, device)
  eval_lowered, eval_inputs, eval_labels = {}, {}, {}
  for key, (model, variables, label) in eval_models.items():
    variables = jax.device_put(variables, device)
    eval_lowered[key] = jax.jit(
        functools.partial(model.apply, train=False)).lower(variables, x)
    eval_inputs[key] = variables
    eval_labels[key] = label

  jobs = {('train', k): l for k, l in train_lowered.items()}
  jobs.update({('eval', k): l for k, l in eval_lowered.items()})
  with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 1) as pool:
    compiled = dict(zip(jobs, pool.map(lambda l: l.compile(), jobs.values())))
  compile_seconds = time.perf_counter() - start

  runners, train_rows = {}, {}
  for v in variants:
    c = compiled['train', v.key]
    train_rows[v.key] = {**memory_of(c), **cost_of(c)}
    runners[v.key] = TrainRunner(c, *train_inputs.pop(v.key), v.program)
  peaks = warm_up(runners, warmup, device)
  times = time_interleaved(runners, repeats)
  for key, stats in summarize(times, ref).items():
    train_rows[key].update(stats, device_peak=peaks[key])
  del runners

  eval_runners, eval_rows = {}, {}
  for key, variables in eval_inputs.items():
    c = compiled['eval', key]
    eval_rows[key] = {**memory_of(c), **cost_of(c)}
    eval_runners[key] = functools.partial(
        lambda f, v: jax.block_until_ready(f(v, x)), c, variables)
  eval_peaks = warm_up(eval_runners, warmup, device)
  eval_times = time_interleaved(eval_runners, repeats)
  for key, stats in summarize(eval_times, 'batchnorm').items():
    eval_rows[key].update(stats, device_peak=eval_peaks[key])

  print(f'\n### Train step (Steps.sgd, batch {setup.batch})\n')
  print(result_table(train_rows, labels, ref, 'train step'))
  print(f'\n### Evaluation forward pass (apply, train=False, batch {setup.batch})\n')
  print(result_table(eval_rows, eval_labels, 'batchnorm', 'evaluation'))

  b, small = setup.batch, setup.small_group
  every = config_lib.base_config().estimate_every_steps
  time_of = lambda key: train_rows[key]['min_s']
  reference = time_of(ref)
  ratios = {
      f'train_B{b}': train_rows[f'evalnorm_B{b}']['ratio_min'],
      f'train_B{small}': train_rows[f'evalnorm_B{small}']['ratio_min'],
      f'alpha_beta_B{small}': train_rows[f'evalnorm_B{small}_alpha_beta'][
          'ratio_min'],
      f'train_B{small}_estimating': amortized_ratio(
          time_of(f'evalnorm_B{small}'),
          time_of(f'evalnorm_B{small}_alpha_beta'), reference, 1),
      f'train_B{small}_amortized': amortized_ratio(
          time_of(f'evalnorm_B{small}'),
          time_of(f'evalnorm_B{small}_alpha_beta'), reference, every),
      # Fused estimation: the estimating step is one program; at k = 1 it is
      # every step.
      f'fused_B{small}_estimating': train_rows[f'evalnorm_B{small}_fused'][
          'ratio_min'],
      f'fused_B{small}_amortized': amortized_fused_ratio(
          time_of(f'evalnorm_B{small}'), time_of(f'evalnorm_B{small}_fused'),
          reference, every),
      'eval_evalnorm': eval_rows['evalnorm']['ratio_min'],
      'eval_ema': eval_rows['evalnorm_ema']['ratio_min'],
      f'train_peak_B{b}': _ratio(train_rows[f'evalnorm_B{b}']['peak'],
                                 train_rows[ref]['peak']),
      f'train_peak_B{small}': _ratio(train_rows[f'evalnorm_B{small}']['peak'],
                                     train_rows[ref]['peak']),
      f'alpha_beta_peak_B{small}': _ratio(
          train_rows[f'evalnorm_B{small}_alpha_beta']['peak'],
          train_rows[ref]['peak']),
      'eval_peak_evalnorm': _ratio(eval_rows['evalnorm']['peak'],
                                   eval_rows['batchnorm']['peak']),
  }
  print(f'\n### Against the goals (ratio of minimums; goal <= {GOAL:.2f}x, '
        f'ceiling {CEILING:.2f}x)\n')
  checks = [
      (f'train step, EvalNorm B={b}', ratios[f'train_B{b}']),
      (f'train step, EvalNorm B={small}', ratios[f'train_B{small}']),
      (f'train step, EvalNorm B={small} with separate estimation every '
       f'{every} steps (the default estimate_every_steps), amortized',
       ratios[f'train_B{small}_amortized']),
      (f'train step, EvalNorm B={small} with fused estimation every {every} '
       'steps, amortized', ratios[f'fused_B{small}_amortized']),
      (f'train step, EvalNorm B={small} with fused estimation at every step',
       ratios[f'fused_B{small}_estimating']),
      ("evaluation, EvalNorm eval_stats='evalnorm'", ratios['eval_evalnorm']),
  ]
  for name, value in checks:
    verdict = ('meets the goal' if value <= GOAL else
               'within the ceiling' if value <= CEILING else 'ABOVE the ceiling')
    print(f'- {name}: {value:.3f}x flax BatchNorm ({verdict})')
  print(f'- a separate estimating step (alpha/beta step + SGD step), '
        f"EvalNorm B={small}: {ratios[f'train_B{small}_estimating']:.3f}x "
        'flax BatchNorm')
  b2_vs_b = time_of(f'evalnorm_B{small}') / time_of(f'evalnorm_B{b}')
  print(f'- B={small} against B={b} (SGD steps): {b2_vs_b:.3f}x')
  ratios[f'train_B{small}_vs_B{b}'] = b2_vs_b
  print(f'- set-up and compilation (not timed above): {compile_seconds:.1f} s')
  print('\nratios: ' + ' '.join(f'{k}={v:.4f}' for k, v in ratios.items()))
  return {'setup': setup, 'train': train_rows, 'eval': eval_rows,
          'ratios': ratios}


RATIOS_LINE = re.compile(r'^ratios: (.*)$', re.MULTILINE)


def parse_ratios(text: str) -> dict[str, float]:
  """The ``ratios:`` lines of the printed report, for tests and scripts."""
  out = {}
  for line in RATIOS_LINE.findall(text):
    for item in line.split():
      key, _, value = item.partition('=')
      out[key] = float(value)
  return out


def parse_args(argv):
  parser = argparse.ArgumentParser(
      prog='python -m benchmarks.cost',
      description="EvalNorm's train-step, evaluation and memory cost against "
                  "flax's nn.BatchNorm, as ratios measured in one process.")
  parser.add_argument('--model', choices=('cifar', 'resnet50', 'both'),
                      default='cifar')
  parser.add_argument('--repeats', type=int, default=None,
                      help='timed rounds (default: 20 cifar, 8 resnet50, 2 smoke)')
  parser.add_argument('--warmup', type=int, default=None,
                      help='untimed calls after compilation (default 2, smoke 1)')
  parser.add_argument('--batch', type=int, default=None,
                      help='per-device batch (default: 128 cifar, 16 resnet50)')
  parser.add_argument('--image_size', type=int, default=None,
                      help='square input size (default: 32 cifar, 64 resnet50)')
  parser.add_argument('--half_precision', action='store_true',
                      help='bfloat16 activations (config.half_precision=True)')
  parser.add_argument('--ablate', action='store_true',
                      help='add the alpha/beta step at the large B too')
  parser.add_argument('--smoke', action='store_true',
                      help='tiny model and batch, 2 repeats: checks that it runs')
  parser.add_argument('--output', default=None,
                      help='also write the results here as JSON (rows, '
                      'ratios, device, flags, versions): what the '
                      'cost table (docs/cost.md) is rendered from')
  args = parser.parse_args(argv)
  for name, least in (('repeats', 1), ('warmup', 0), ('batch', 2),
                      ('image_size', 1)):
    value = getattr(args, name)
    if value is not None and value < least:
      parser.error(f'--{name}={value} is too small (at least {least})')
  if args.batch is not None and args.batch % 2:
    parser.error(f'--batch={args.batch} must be even (variant (c) uses B=2)')
  return args


def main(argv=None) -> dict[str, dict[str, Any]]:
  args = parse_args(argv)
  # The code that runs, as it is before anything is written.
  code = provenance.git_state(os.path.dirname(os.path.dirname(
      os.path.abspath(__file__))))
  if args.smoke:
    setups = [SMOKE]
  elif args.model == 'both':
    setups = [SETUPS['cifar'], SETUPS['resnet50']]
  else:
    setups = [SETUPS[args.model]]
  print('# EvalNorm cost against flax nn.BatchNorm')
  results = {}
  for setup in setups:
    if args.batch is not None:
      setup = dataclasses.replace(setup, batch=args.batch)
    if args.image_size is not None:
      setup = dataclasses.replace(
          setup, image_shape=(args.image_size, args.image_size,
                              setup.image_shape[2]))
    repeats = args.repeats or setup.repeats
    warmup = args.warmup if args.warmup is not None else (1 if args.smoke else 2)
    with fast_compile(setup.fast_compile):
      results[setup.name] = run_setup(setup, repeats, warmup,
                                      args.half_precision, args.ablate)
  if args.output:
    files.write_json(args.output, record(results, args, code))
  return results


def measured_by(code: dict) -> dict[str, Any]:
  """What produced a benchmark's record: ``code`` (provenance.git_state's
  commit and tree state), the device, XLA_FLAGS and the versions."""
  device = jax.local_devices()[0]
  return {
      **code,
      'device': {'kind': device.device_kind, 'platform': device.platform,
                 'cpu': provenance.cpu_model(), 'cpu_cores': os.cpu_count()},
      'xla_flags': os.environ.get('XLA_FLAGS', ''),
      'versions': {'jax': jax.__version__, 'flax': flax.__version__}}


def record(results: dict[str, dict[str, Any]], args, code: dict
           ) -> dict[str, Any]:
  """The JSON record of a run: every row and ratio, and what produced them."""
  return {
      **measured_by(code),
      'half_precision': args.half_precision,
      'setups': {name: {'title': r['setup'].title, 'batch': r['setup'].batch,
                        'image_shape': list(r['setup'].image_shape),
                        'repeats': args.repeats or r['setup'].repeats,
                        'train': r['train'], 'eval': r['eval'],
                        'ratios': r['ratios']}
                 for name, r in results.items()},
  }


if __name__ == '__main__':
  main()
