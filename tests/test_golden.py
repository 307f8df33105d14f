"""Golden values: the quick start's first steps, pinned to stored numbers.

A change in numerics shows here the day it happens. When a change is meant to
move them, update REFERENCE in the same commit and say why in its message.

Five steps: B = 2 amplifies round-off quickly (about 1e-7 at step 2, 1e-3 by
step 10 between two builds that only order a sum differently), so later steps
would pin the machine rather than the method. The tolerance holds across
CPU types; a change of the method (a different loss, a bug in a layer) moves
these values by far more.
"""

import numpy as np

from golden_run import quick_start_metrics

REFERENCE = {
    'loss': [2.3618271350860596, 2.355447292327881, 2.3348493576049805,
             2.313020706176758, 2.321920156478882],
    'aux_loss': [3.1978349685668945, 3.1692938804626465, 3.131552219390869,
                 3.104923963546753, 3.105823516845703],
}


def test_quick_start_first_steps():
  got = quick_start_metrics(len(REFERENCE['loss']))
  for name, want in REFERENCE.items():
    np.testing.assert_allclose(got[name], want, rtol=2e-5, err_msg=name)
