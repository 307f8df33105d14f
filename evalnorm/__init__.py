"""EvalNorm in JAX/Flax: BatchNorm that evaluates well with small normalization batches.

``evalnorm.EvalNorm`` replaces ``flax.linen.BatchNorm``; ``evalnorm.nnx.EvalNorm``
replaces ``flax.nnx.BatchNorm``.
"""

from evalnorm.calibration import calibrate
from evalnorm.layers import auxiliary_loss, EVAL_STATS, EvalNorm
from evalnorm.variables import (alpha_beta_by_layer, batchnorm_to_evalnorm,
                                mean_alpha_beta, one_over_b, rule_of_thumb,
                                set_alpha_beta, total_aux_loss)

__all__ = [
    'EVAL_STATS', 'EvalNorm', 'alpha_beta_by_layer', 'auxiliary_loss',
    'batchnorm_to_evalnorm', 'calibrate', 'mean_alpha_beta', 'one_over_b',
    'rule_of_thumb', 'set_alpha_beta', 'total_aux_loss',
]
