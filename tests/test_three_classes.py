"""Any number of classes: a 3-class task of the embedded data, train → evaluate → report."""
import json
import os

import numpy as np
import pytest

import lsei_jax
from configs import shapes3
from lsei_jax.reporting import bias
from lsei_jax import data as data_lib

pytestmark = pytest.mark.slow  # trains through the pipeline (the quick tier skips it)


@pytest.fixture(scope='module')
def three_class_run(tmp_path_factory):
  config = shapes3.get_config('tiny')
  workdir = str(tmp_path_factory.mktemp('three'))
  lsei_jax.train(config, workdir)
  return config, workdir, lsei_jax.evaluate(config, workdir)


def test_labels_count_two_attributes():
  ds = data_lib.load(shapes3.get_config('tiny').data, 'test')
  names = list(ds.attribute_names)
  want = ds.attributes[:, names.index('shape')].astype(int) + ds.attributes[:, names.index('color')]
  np.testing.assert_array_equal(ds.labels, want)
  assert set(ds.labels.tolist()) == {0, 1, 2}


def test_three_classes_end_to_end(three_class_run):
  config, workdir, result = three_class_run
  assert result['num_classes'] == 3
  test = data_lib.load(config.data, 'test')
  run = lsei_jax.load_run(config, workdir)
  logits = np.asarray(run.classify(test.images))
  assert logits.shape == (len(test), 3)
  assert result['accuracy'] == pytest.approx(np.mean(logits.argmax(-1) == test.labels))
  # Table 1 figures from the same run's functions: c2(ĥ) agreement with c2(h).
  hhat = run.decode(run.encode(run.embed(test.images)))
  assert result['agreement'] == pytest.approx(
      np.mean(np.asarray(run.head(hhat)).argmax(-1) == logits.argmax(-1)))
  assert np.shape(result['per_bit_change_by_class']) == (3, config.model.dvae.latent_dim)
  assert {t['class'] for t in result['tcav']} == {0, 1, 2}
  # The verdict per class: each attribute's largest effect on P(ŷ = k), k in {0, 1, 2}.
  assert len(result['bias_report']) == 6
  assert {r['toward_class'] for r in result['bias_report']} <= {0, 1, 2}
  assert len(result['data_association']['shape']['by_class']) == 3
  assert result['sanity'] is not None
  saved = json.load(open(os.path.join(workdir, 'eval', 'metrics.json')))
  assert saved['num_classes'] == 3
  page = open(os.path.join(workdir, 'eval', 'report.html')).read()
  assert 'class 2' in page


def test_labels_outside_the_classes_are_refused(tmp_path):
  config = shapes3.get_config('tiny')
  config.model.classifier.num_classes = 2
  with pytest.raises(ValueError, match=r'train split: labels \[2\] are outside \[0, 2\) '
                                       r'\(config.model.classifier.num_classes=2\)'):
    lsei_jax.train(config, str(tmp_path))
  assert not [f for f in os.listdir(tmp_path) if f != '.lock']  # nothing written


def test_two_class_bias_report_refuses_a_third_class():
  p = np.full((4, 2), 0.5)
  with pytest.raises(ValueError, match='needs 2 classes; pred has classes \\[0, 1, 2\\]'):
    bias.bias_report(p, p, np.array([0, 1, 2, 1]), ['a', 'b'], 'a')


def test_html_report_from_the_results_dict_alone(three_class_run, tmp_path):
  from lsei_jax.reporting import html_report
  _, workdir, _ = three_class_run
  result = json.load(open(os.path.join(workdir, 'eval', 'metrics.json')))
  html_report.write(str(tmp_path / 'report.html'), result)   # no figure files anywhere
  page = (tmp_path / 'report.html').read_text()
  assert 'accuracy of c' in page and 'per-bit bars' in page and 'data:image/png' in page
  assert 'Concept images' not in page  # the image grid needs arrays: left out, not broken
