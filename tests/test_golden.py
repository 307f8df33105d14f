"""Golden values: the quick start's first steps, pinned to stored numbers.

A change in numerics shows here the day it happens. When a change is meant to
move them, update REFERENCE in the same commit and say why in its message.

Five steps: B = 2 amplifies round-off quickly (about 1e-7 at step 2, 1e-3 by
step 10 between two builds that only order a sum differently), so later steps
would pin the machine rather than the method. The tolerance holds across
CPU types; a change of the method (a different loss, a bug in a layer) moves
these values by far more.

The same five steps with estimation off must give bit-identical weights: on
this model (unlike a toy one), merely compiling the auxiliary loss into the
SGD step moved the parameters by 3e-8 in two steps.
"""

import jax
import numpy as np

from golden_run import quick_start_run, quick_start_steps

REFERENCE = {
    'loss': [2.3618271350860596, 2.355447292327881, 2.3348493576049805,
             2.313020706176758, 2.321920156478882],
    'aux_loss': [3.1978349685668945, 3.1692938804626465, 3.131552219390869,
                 3.104923963546753, 3.105823516845703],
}


def test_quick_start_first_steps_and_estimation_leaves_them_bit_identical():
  steps = quick_start_steps()  # one compilation for both runs
  num_steps = len(REFERENCE['loss'])
  got, estimating = quick_start_run(num_steps, estimate=True, steps=steps)
  for name, want in REFERENCE.items():
    np.testing.assert_allclose(got[name], want, rtol=2e-5, err_msg=name)

  plain_metrics, plain = quick_start_run(num_steps, estimate=False, steps=steps)
  assert plain_metrics['loss'] == got['loss']
  for name in ('params', 'batch_stats', 'opt_state'):
    jax.tree.map(np.testing.assert_array_equal, getattr(estimating, name),
                 getattr(plain, name))
  # ... while alpha/beta did move (those at 0 with a negative gradient stay).
  moved = jax.tree.map(lambda a, b: not np.array_equal(a, b),
                       estimating.evalnorm, plain.evalnorm)
  assert any(jax.tree.leaves(moved))
