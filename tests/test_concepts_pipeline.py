"""Each concept learner end to end: trained by the stage graph, evaluated, metrics written."""
import json
import os

import numpy as np
import pytest

import lsei_jax
from lsei_jax import data, interventions
from lsei_jax.pipeline import evaluation
from lsei_jax import pipeline

pytestmark = pytest.mark.slow  # trains through the pipeline (the quick tier skips it)


@pytest.mark.parametrize('kind', ['topk_sae', 'nmf'])
def test_pipeline_and_evaluation_run_with_each_learner(kind, tiny_config, tmp_path):
  config = tiny_config.copy_and_resolve_references()
  config.model.concepts.kind = kind
  config.explainer.train_noreg = False
  config.sanity.enabled = kind == 'nmf'  # the model-randomisation run with a real-valued code
  workdir = str(tmp_path)
  metas = pipeline.train(config, workdir)
  assert metas['concepts']['config']['model.concepts.kind'] == kind
  result = evaluation.evaluate(config, workdir)
  c = result['concepts']
  assert c['kind'] == kind and c['num_units'] == config.model[kind].latent_dim
  if kind == 'topk_sae':
    assert 0 < c['l0'] <= config.model.topk_sae.k
  assert c['variance_explained'] <= 1.0 and c['normalized_mse'] >= 0.0
  assert 0 <= c['dead_fraction'] <= 1 and 0 <= c['num_decisive_units'] <= c['num_units']
  assert set(c['factor_recovery']['best_unit_auc']) == set(result['probe_accuracy'])
  assert result['intervention'] == 'toggle all units'
  assert 0.0 <= result['flip_all_change'] <= 1.0 and len(result['per_bit_change']) == c['num_units']
  saved = json.load(open(os.path.join(workdir, 'eval', 'metrics.json')))
  assert saved['concepts']['l0'] == pytest.approx(c['l0'])
  # Without explainer or probe: the same Table 1 figures and concept metrics.
  alone, codes = evaluation.concept_evaluation(config, workdir)
  for key in ('accuracy', 'recon_accuracy', 'agreement', 'flip_all_change'):
    assert alone[key] == pytest.approx(result[key]), key
  for key in ('variance_explained', 'l0', 'dead_fraction', 'accuracy_recovered'):
    assert alone['concepts'][key] == pytest.approx(c[key]), key
  assert codes.shape == (config.data.num_test, c['num_units'])
  page = open(os.path.join(workdir, 'eval', 'report.html'), encoding='utf-8').read()
  assert f'Concept learner: {kind}' in page and 'alt="activation frequency histogram"' in page
  assert (result['sanity'] is not None) == (kind == 'nmf')
  # The notebook API uses the same learner: toggling every unit of every image.
  run = lsei_jax.load_run(config, workdir)
  images = data.load(config.data, 'test').images[:4]
  out = run.intervene(images)
  code, after = np.asarray(out['bits']), np.asarray(out['bits_after'])
  on = interventions.on_values(code)
  np.testing.assert_allclose(after, np.where(code > 0, 0.0, on), rtol=1e-6)
  assert out['image_after'].shape == images.shape
  # A learner's checkpoint is not loaded as another kind's.
  other = config.copy_and_resolve_references()
  other.model.concepts.kind = 'nmf' if kind == 'topk_sae' else 'topk_sae'
  with pytest.raises(Exception, match='model.concepts.kind'):
    evaluation.evaluate(other, workdir)
