"""The layer examples of the README and docs/ run as shown (own-model ones:
test_calibration)."""

from readme import doc_code, readme_code, readme_text


def test_readme_layer_example_runs():
  namespace = {}
  exec(readme_code('The layer'), namespace)  # pylint: disable=exec-used
  assert namespace['eval_logits'].shape == (8, 10)
  assert float(namespace['aux']) > 0


def test_readme_nnx_example_runs():
  namespace = {}
  exec(doc_code('docs/layer.md', 'NNX'), namespace)  # pylint: disable=exec-used
  alpha_beta = namespace['ennx'].alpha_beta_by_layer(namespace['model'])
  assert 0 < alpha_beta['norm']['alpha'] <= 1
  assert namespace['logits'].shape == (8, 10)


def test_readme_stays_short():
  """What and why, the two commands, the layer, the reproduction table; the
  reference material lives in docs/."""
  assert len(readme_text().encode()) <= 12_000
