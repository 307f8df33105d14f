"""Models evaluated with EvalNorm, exported for serving.

``jax.export`` (serialize, deserialize, call) with a symbolic batch size, for
linen and NNX, as docs/layer.md shows it; and TensorFlow's SavedModel through
``jax2tf``, the other path to serving.
"""

import functools
import tempfile

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import export

import evalnorm
import evalnorm.nnx as ennx
from readme import doc_code

X = jnp.asarray(np.random.default_rng(0).normal(size=(8, 12, 12, 1)),
                jnp.float32)


class Net(nn.Module):

  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.Conv(16, (3, 3))(x)
    x = evalnorm.EvalNorm(use_running_average=not train, group_size=2)(x)
    return nn.Dense(10)(jnp.mean(nn.relu(x), axis=(1, 2)))


class NnxNet(nnx.Module):

  def __init__(self, rngs):
    self.conv = nnx.Conv(1, 16, (3, 3), rngs=rngs)
    self.norm = ennx.EvalNorm(16, group_size=2, rngs=rngs)
    self.head = nnx.Linear(16, 10, rngs=rngs)

  def __call__(self, x):
    return self.head(jnp.mean(nnx.relu(self.norm(self.conv(x))), axis=(1, 2)))


def trained_linen():
  """Net's variables after a training call (moving averages that are not
  their initial values) with alpha/beta set, as a served model has them."""
  net = Net()
  variables = net.init(jax.random.key(1), X, train=False)
  _, updates = net.apply(variables, X * 3 + 1, train=True,
                         mutable=['batch_stats'])
  return net, evalnorm.set_alpha_beta({**variables, **updates}, 0.3, 0.6)


def trained_nnx():
  model = NnxNet(nnx.Rngs(1))
  model(X * 3 + 1)  # a training call moves the moving averages
  ennx.set_alpha_beta(model, 0.3, 0.6)
  model.eval()
  return model


def test_docs_export_example_round_trips_a_linen_model():
  net, variables = trained_linen()
  namespace = {'model': net, 'variables': variables, 'x': X}
  exec(doc_code('docs/layer.md', 'Export for serving'), namespace)  # pylint: disable=exec-used
  # The same compiled program as the Python model's evaluation under jit.
  python_model = jax.jit(functools.partial(net.apply, train=False))
  want = python_model(variables, X)
  np.testing.assert_array_equal(namespace['logits'], want)
  # The batch size is symbolic: any batch is served by the same artifact.
  restored = export.deserialize(namespace['serialized'])
  np.testing.assert_array_equal(restored.call(variables, X[:3]),
                                python_model(variables, X[:3]))
  # EvalNorm evaluation, not the moving averages alone.
  assert not np.allclose(
      want, net.apply(evalnorm.set_alpha_beta(variables, 0.0), X,
                      train=False))


def test_docs_export_example_round_trips_an_nnx_model():
  model = trained_nnx()
  python_model = nnx.jit(lambda model, x: model(x))
  namespace = {'model': model, 'x': X}
  exec(doc_code('docs/layer.md', 'Export for serving', 'NNX'), namespace)  # pylint: disable=exec-used
  np.testing.assert_array_equal(namespace['logits'], python_model(model, X))
  restored = export.deserialize(namespace['serialized'])
  np.testing.assert_array_equal(restored.call(namespace['weights'], X[:5]),
                                python_model(model, X[:5]))


def test_tensorflow_saved_model_through_jax2tf():
  tf = pytest.importorskip('tensorflow')
  from jax.experimental import jax2tf  # pylint: disable=g-import-not-at-top
  net, variables = trained_linen()
  module = tf.Module()
  module.serve = tf.function(
      jax2tf.convert(functools.partial(net.apply, variables, train=False),
                     polymorphic_shapes=['(b, 12, 12, 1)']),
      autograph=False,
      input_signature=[tf.TensorSpec([None, 12, 12, 1], tf.float32)])
  with tempfile.TemporaryDirectory() as directory:
    tf.saved_model.save(module, directory)
    served = tf.saved_model.load(directory).serve(np.asarray(X)).numpy()
  # TensorFlow compiles the same StableHLO again: equal to float round-off.
  np.testing.assert_allclose(served, net.apply(variables, X, train=False),
                             rtol=1e-5, atol=1e-5)
