r"""Per-step cost of agreeing across processes on when to stop (SIGTERM).

    python -m benchmarks.preemption [--steps 200] [--rounds 5] [--devices 4]
        [--alone]

Starts two processes of ``--devices`` fake CPU devices each (4), joined by
jax.distributed as tests/test_multiprocess.py does, and times the digits
SGD step of tests/training_helpers.py (batch 16, B=2) as ``train_loop``
runs it, with each way of agreeing on a stop:

  none       no agreement (what one process runs);
  folded     ``preemption.StopAgreement`` (what ``trainer.TrainPrograms`` runs): the psum
             of the local flags inside the SGD step's program, the previous
             step's sum read back;
  separate   a pmapped psum of the flags of its own after each step, the
             previous step's sum read back;
  allgather  ``multihost_utils.process_allgather`` of the flag every step
             (a host-side barrier each step).

Each round runs ``--steps`` steps of every variant, in a rotating order, and
waits for the last step. Printed per variant: the min and median ms per
step over the rounds, and the extra ms per step against ``none``: of the
minimums, and the median over rounds of the difference within a round
(steadier on a loaded machine). ``--alone``: the agreements' calls without
train steps (the folded one has none to ride on and is left out).

With ``--alone`` the latency of the collective that ``separate`` and
``allgather`` add to every step shows by itself; ``folded`` adds no collective
(its psum is merged into the step's one all-reduce:
tests/training/test_multiprocess.py checks the compiled step).
"""

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VARIANTS = ('none', 'folded', 'separate', 'allgather')


def launch(args) -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    port = s.getsockname()[1]
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             XLA_FLAGS=('--xla_force_host_platform_device_count='
                        f'{args.devices}'))
  workers = [subprocess.Popen(
      [sys.executable, '-m', 'benchmarks.preemption', '--worker',
       f'--process_id={i}', f'--port={port}', f'--steps={args.steps}',
       f'--rounds={args.rounds}', *(['--alone'] if args.alone else [])],
      cwd=ROOT, env=env) for i in range(2)]
  return max(w.wait() for w in workers)


def worker(args) -> None:
  import jax
  import numpy as np
  from flax import jax_utils
  from jax.experimental import multihost_utils

  jax.config.update('jax_enable_preemption_service', False)
  jax.distributed.initialize(f'localhost:{args.port}', num_processes=2,
                             process_id=args.process_id)
  sys.path.insert(0, os.path.join(ROOT, 'tests'))
  from training_helpers import small_digits_config
  from evalnorm import data
  from evalnorm.training import builders, parallel, trainer

  config = small_digits_config()
  dataset = data.make_dataset(config)
  model = builders.build_model(config, dataset.num_classes)
  state = trainer.create_train_state(
      model, jax.random.PRNGKey(0), config.norm_batch_size,
      dataset.image_shape, trainer.Optimizers.from_config(config, 1000))
  state = parallel.replicate(state)
  step_fn = parallel.pmap(
      lambda s, b: trainer.sgd_step(s, trainer.classifier_forward(s, b)),
      donate_argnums=(0,))
  folded_steps = trainer.TrainPrograms(trainer.classifier_forward)  # with several processes
  flags_sum = parallel.pmap(lambda flag: jax.lax.psum(flag, parallel.DEVICE_AXIS))
  # On the devices beforehand: the variants time the step, not the input.
  batches = list(jax_utils.prefetch_to_device(
      (parallel.shard(next(dataset.train_batches(s))) for s in range(8)), 1))
  received = False  # no SIGTERM is sent

  def run(variant, state):
    metrics = pending = None
    start = time.perf_counter()
    for step in range(args.steps):
      batch = batches[step % len(batches)]
      if variant == 'folded':
        if args.alone:
          continue
        state, metrics, stop = folded_steps.step_or_stop(state, batch, False,
                                                         received)
      else:
        if not args.alone:
          state, metrics = step_fn(state, batch)
        if variant == 'separate':
          previous, pending = pending, flags_sum(
              np.full(jax.local_device_count(), received, np.float32))
          stop = previous is not None and float(
              np.asarray(previous.addressable_data(0))[0]) > 0
        elif variant == 'allgather':
          stop = bool(multihost_utils.process_allgather(
              np.array(received)).any())
        else:
          stop = received
      assert not stop
    jax.block_until_ready((state, metrics))
    return state, (time.perf_counter() - start) / args.steps * 1e3

  for variant in VARIANTS:  # compile and warm up
    state, _ = run(variant, state)
  times = {v: [] for v in VARIANTS}
  for r in range(args.rounds):
    for variant in VARIANTS[r % len(VARIANTS):] + VARIANTS[:r % len(VARIANTS)]:
      state, ms = run(variant, state)
      times[variant].append(ms)
  if args.process_id == 0:
    base = times['none']
    for variant in VARIANTS:
      best, median = min(times[variant]), statistics.median(times[variant])
      paired = statistics.median(t - b for t, b in zip(times[variant], base))
      print(f'{variant:10s} min {best:8.3f} ms/step  median {median:8.3f}  '
            f'extra: of the mins {best - min(base):+7.3f} ms, paired median '
            f'{paired:+7.3f} ms', flush=True)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--steps', type=int, default=200)
  parser.add_argument('--rounds', type=int, default=5)
  parser.add_argument('--devices', type=int, default=4,
                      help='fake CPU devices per process')
  parser.add_argument('--alone', action='store_true',
                      help='time the agreement alone, without train steps')
  parser.add_argument('--worker', action='store_true')
  parser.add_argument('--process_id', type=int)
  parser.add_argument('--port', type=int)
  args = parser.parse_args(argv)
  if args.worker:
    worker(args)
    return 0
  return launch(args)


if __name__ == '__main__':
  sys.exit(main())
