"""The bias report says what the classifier relies on, checked against the ground truth
(the unbiased test images re-rendered with one attribute flipped), configs/small.py.

Two classifiers trained on biased data (colour agreeing with the shape label):
  shortcut: ρ = 1 and a faint shape: the classifier reads the colour and ignores the shape;
  no_shortcut: ρ = 0.8, a larger shape, trained longer: it reads the shape (> 90% of its
  predictions follow a shape flip), not the colour (flipping the colour changes as few predictions as flipping
  an independent attribute).
"""
import html.parser
import base64
import io
import json
import os

import pytest
from PIL import Image

from configs import small
from lsei_jax.pipeline import evaluation
from lsei_jax import pipeline
from lsei_jax import reliance

pytestmark = pytest.mark.slow  # about a minute per run on 2 cores

INDEPENDENT = ('size', 'position', 'background', 'texture')   # never correlated with the label


def _config(name):
  c = small.get_config()
  if name == 'shortcut':
    c.data.update(rho=1.0, object_scale=0.6, noise=0.1)
    c.sanity.enabled = True
  else:
    c.data.update(rho=0.8, object_scale=1.3)
    c.classifier.steps = 2500
  return c


def _run(name, tmp_path_factory):
  c = _config(name)
  wd = str(tmp_path_factory.mktemp(name))
  pipeline.train(c, wd)
  return evaluation.evaluate(c, wd), wd


@pytest.fixture(scope='module')
def shortcut(tmp_path_factory):
  return _run('shortcut', tmp_path_factory)


@pytest.fixture(scope='module')
def no_shortcut(tmp_path_factory):
  return _run('no_shortcut', tmp_path_factory)


def _truth(result):
  rel = {n: v['flip_rate'] for n, v in result['reliance'].items()}
  return rel, reliance.relied_on(rel, INDEPENDENT, margin=0.05)


def _flagged(result):
  return {r['attribute'] for r in result['bias_report'] if r['flagged']}


def test_shortcut_classifier_is_reported_on_colour_and_not_on_the_ignored_shape(shortcut):
  result, _ = shortcut
  rel, relied = _truth(result)
  assert rel['color'] > 0.9 and rel['shape'] < 0.05, rel      # what this run is about
  assert _flagged(result) == {n for n, v in relied.items() if v} == {'color'}
  shape = next(r for r in result['bias_report'] if r['attribute'] == 'shape')
  assert shape['is_task'] and not shape['flagged']


def test_biased_data_but_unbiased_classifier_flags_no_other_attribute(no_shortcut):
  result, _ = no_shortcut
  rel, relied = _truth(result)
  independent = max(rel[n] for n in INDEPENDENT)
  assert rel['shape'] > 0.9 and rel['color'] <= independent + 0.01, rel
  assert _flagged(result) == {'shape'}
  # The data's bias is shown, as a property of the data.
  assert result['data_association']['color']['spread'] == pytest.approx(0.6, abs=0.03)
  assert result['data_association']['size']['spread'] < 0.05


def test_randomised_classifier_gives_a_different_report(shortcut):
  result, wd = shortcut
  sanity = result['sanity']
  assert sanity['top_trained'] == 'color', sanity
  assert sanity['warning'] is None
  assert not any(r['flagged'] for r in sanity['randomized_report'])
  page = open(os.path.join(wd, 'eval', 'report.html')).read()
  assert 'depends on the trained model' in page


class _Collector(html.parser.HTMLParser):

  def __init__(self):
    super().__init__()
    self.images, self.headings, self._in_h = [], [], False

  def handle_starttag(self, tag, attrs):
    if tag == 'img':
      self.images.append(dict(attrs)['src'])
    self._in_h = tag in ('h2', 'h3')

  def handle_data(self, data):
    if self._in_h:
      self.headings.append(data)
      self._in_h = False


def test_report_page_is_self_contained_with_its_figures(shortcut):
  result, wd = shortcut
  page = _Collector()
  page.feed(open(os.path.join(wd, 'eval', 'report.html')).read())
  assert len(page.images) == 5  # incl. the concept learner's activation-frequency histogram
  for src in page.images:
    assert src.startswith('data:image/png;base64,')
    img = Image.open(io.BytesIO(base64.b64decode(src.split(',', 1)[1])))
    assert img.size[0] > 100 and img.size[1] > 100
  assert {'Tables 1 and 2', 'Bias report: what the classifier relies on', 'Ground truth: reliance',
          'Sanity check: model randomisation', 'Concept learner: dvae'} <= set(page.headings)
  saved = json.load(open(os.path.join(wd, 'eval', 'metrics.json')))
  for key in ('per_bit_change', 'single_bit_change', 'bias_report', 'intervention_report',
              'data_association', 'reliance', 'sanity', 'tcav', 'attribution_sanity'):
    assert key in saved
  assert len(saved['per_bit_change']) == small.get_config().model.dvae.latent_dim
  assert [r['attribute'] for r in saved['bias_report']] == [
      r['attribute'] for r in sorted(saved['bias_report'], key=lambda r: -abs(r['shift']))]
  assert {t['concept'] for t in saved['tcav']} == set(saved['reliance'])
