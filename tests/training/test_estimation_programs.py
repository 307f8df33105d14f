"""Online estimation's two programs: fused into the SGD step, or separate.

``fused`` adds the auxiliary loss to the SGD step's own forward pass (the
paper's single step); ``separate`` runs its own forward pass before the
unchanged SGD step (whose bit-identity test is test_golden.py's).
"""

import functools
import os
import shutil

import jax
import numpy as np
import pytest

from evalnorm.training import (parallel, trainer)
from evalnorm.variables import set_alpha_beta

from training_helpers import fresh_state, small_digits_config


def start(config):
  """(dataset, host state) of a fresh run of ``config``."""
  dataset, _, state = fresh_state(config)
  return dataset, state


def run_steps(config, estimation, num_steps, estimating=True):
  """Host state and per-step metrics after ``num_steps`` on 8 devices."""
  dataset, state = start(config)
  programs = trainer.TrainPrograms(trainer.classifier_forward,
                                   estimation=estimation)
  state = parallel.replicate(state)
  batches = dataset.train_batches(0)
  metrics = []
  for _ in range(num_steps):
    state, step_metrics = programs(state, parallel.shard(next(batches)),
                                   estimating)
    metrics.append(parallel.to_host(step_metrics))
  return parallel.to_host(state), metrics


def test_fused_auxiliary_loss_gives_the_weights_an_exactly_zero_gradient():
  """The gradient of the fused step's auxiliary term with respect to every
  weight, through the training forward pass itself: exactly zero."""
  config = small_digits_config()
  dataset, state = start(config)
  # Away from 0, where the estimate's dependence on each example's own
  # statistics (the path a missing stop-gradient would open) vanishes.
  state = state.replace(evalnorm=set_alpha_beta(state.evalnorm, 0.3, 0.6))
  batch = next(dataset.train_batches(0))
  forward = trainer.classifier_forward(state, batch)

  def aux_term(params):
    _, (_, metrics) = trainer.training_loss(state, forward, params,
                                            state.evalnorm, estimate=True)
    return metrics['aux_loss']
  aux, grads = jax.value_and_grad(aux_term)(state.params)
  assert float(aux) > 0
  for path, grad in jax.tree_util.tree_leaves_with_path(grads):
    assert not np.any(np.asarray(grad)), jax.tree_util.keystr(path)
  # ... while alpha/beta do get a gradient from it.
  alpha_beta_grads = jax.grad(lambda e: trainer.training_loss(
      state, forward, state.params, e, estimate=True)[1][1]['aux_loss'])(
          state.evalnorm)
  assert any(np.any(np.asarray(g)) for g in jax.tree.leaves(alpha_beta_grads))


@pytest.fixture(scope='module')
def three_steps():
  config = small_digits_config()
  return {estimation: run_steps(config, estimation, 3)
          for estimation in ('fused', 'separate')}


def test_fused_moves_alpha_beta_as_separate_does(three_steps):
  (fused, fused_metrics), (separate, separate_metrics) = (
      three_steps['fused'], three_steps['separate'])
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-5,
                                 atol=1e-6), fused.evalnorm, separate.evalnorm)
  assert any(np.any(np.asarray(v) > 0) for v in jax.tree.leaves(fused.evalnorm))
  for got, want in zip(fused_metrics, separate_metrics):
    np.testing.assert_allclose(got['aux_loss'], want['aux_loss'], rtol=1e-5)
    np.testing.assert_allclose(got['loss'], want['loss'], rtol=1e-5)
  # The weights: the same training up to the fused program's round-off.
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-4,
                                 atol=1e-5), fused.params, separate.params)


def test_fused_steps_that_do_not_estimate_are_the_plain_sgd_step():
  plain, _ = run_steps(small_digits_config(), 'fused', 3, estimating=False)
  separate_plain, _ = run_steps(small_digits_config(), 'separate', 3,
                                estimating=False)
  jax.tree.map(np.testing.assert_array_equal, plain.params,
               separate_plain.params)
  jax.tree.map(np.testing.assert_array_equal, plain.evalnorm,
               start(small_digits_config())[1].evalnorm)


def test_invalid_estimation_program_is_one_clear_error():
  with pytest.raises(ValueError, match="estimation='both'"):
    trainer.TrainPrograms(trainer.classifier_forward, estimation='both')


@pytest.mark.slow
def test_fused_estimation_resumes_exactly_across_estimating_steps(tmp_path):
  """Estimating every 3rd step (1, 4, 7, 10, 13, ...) with the fused step;
  the checkpoint at step 11 falls between two of them."""
  config = small_digits_config(num_train_steps=16, estimate_every_steps=3,
                               checkpoint_every_steps=11, estimation='fused')
  workdir = str(tmp_path / 'fused')
  uninterrupted = trainer.train_and_evaluate(config, workdir)
  assert all(v['alpha'] > 0 for v in uninterrupted['alpha_beta'].values())
  shutil.rmtree(os.path.join(workdir, 'checkpoints', '16'))
  os.remove(os.path.join(workdir, 'eval.json'))
  assert trainer.train_and_evaluate(config, workdir) == uninterrupted
