"""Ground truth of reliance: counterfactual shapes differ in one attribute only, and a
hand-built classifier's reliance is exactly what it reads."""
import jax.numpy as jnp
import numpy as np
import pytest

from configs import tiny
from lsei_jax import data as data_lib
from lsei_jax import reliance
from lsei_jax.classifier_split import ClassifierSplit
from lsei_jax.data import shapes
from lsei_jax.pipeline import artifacts
from lsei_jax.pipeline.stages import classifier as classifier_stage
from lsei_jax.reporting import bias
from lsei_jax.training import parallel

KW = dict(image_size=24, seed=5, split='test', rho=0.5)


def _changed(a, b):
  return np.any(a != b, -1)                                     # [N, S, S] pixels that moved


def test_counterfactual_changes_exactly_one_attribute():
  base = shapes.generate(200, **KW)
  np.testing.assert_array_equal(shapes.generate(200, **KW, flip=None)['image'], base['image'])
  flipped = {n: shapes.generate(200, **KW, flip=n) for n in shapes.ATTRIBUTES}
  for i, name in enumerate(shapes.ATTRIBUTES):
    diff = flipped[name]['attributes'] != base['attributes']
    assert diff[:, i].all() and not np.delete(diff, i, 1).any(), name
  # Pixel-wise: a background flip moves every background pixel and no object pixel; a colour
  # flip every object pixel and nothing else; texture only (striped) object pixels.
  bg = _changed(flipped['background']['image'], base['image'])
  obj = _changed(flipped['color']['image'], base['image'])
  assert not (bg & obj).any() and (bg | obj).all()
  tex = _changed(flipped['texture']['image'], base['image'])
  assert tex.any() and not (tex & ~obj).any()
  # Geometry flips move object pixels only: the top rows, which no object reaches, keep
  # their value exactly.
  for name in ('shape', 'size', 'position'):
    moved = _changed(flipped[name]['image'], base['image'])
    assert moved.any() and not moved[:, :2].any(), name
  # Hand-made detectors agree with the flipped labels (corner brightness, blue − red).
  corner = lambda d: d['image'][:, :2, :2].astype(float).mean((1, 2, 3)) > 127
  assert np.array_equal(corner(flipped['background']), flipped['background']['attributes'][:, 4])
  assert np.array_equal(corner(base), ~flipped['background']['attributes'][:, 4])


def test_renderer_of_a_config_matches_the_loaded_split():
  cfg = tiny.get_config().data
  test = data_lib.load(cfg, 'test')
  render = data_lib.counterfactual_renderer(cfg, 'test')
  color = render('color')
  assert color.shape == test.images.shape and not np.array_equal(color, test.images)
  cf = shapes.generate(len(test), image_size=cfg.image_size, task=cfg.task, rho=0.5,
                       seed=cfg.seed, split='test', flip='color')
  np.testing.assert_array_equal(color, cf['image'])
  with cfg.unlocked():
    cfg.name = 'numpy'
  assert data_lib.counterfactual_renderer(cfg, 'test') is None


def _brightness_classifier(num_classes=2):
  """Reads the top two rows only (the object never reaches them): background alone."""
  def classify(images):
    m = images[:, :2].astype(np.float64).mean((1, 2, 3)) / 255.0    # ≈ 0.18 dark, 0.78 light
    centres = np.linspace(0.18, 0.78, num_classes) if num_classes > 2 else np.array([0.18, 0.78])
    return -40.0 * (m[:, None] - centres[None]) ** 2
  return classify


@pytest.mark.parametrize('num_classes', [2, 3])
def test_reliance_of_a_classifier_that_reads_only_the_background(num_classes):
  base = shapes.generate(300, **KW)['image']
  render = lambda n: shapes.generate(300, **KW, flip=n)['image']
  r = reliance.reliance_by_attribute(_brightness_classifier(num_classes), base, render,
                                     shapes.ATTRIBUTES, batch_size=64)
  assert set(r) == set(shapes.ATTRIBUTES)
  assert r['background']['flip_rate'] == 1.0 and r['background']['mean_prob_change'] > 0.2
  for name in shapes.ATTRIBUTES:
    if name != 'background':
      assert r[name]['flip_rate'] == 0.0 and abs(r[name]['mean_prob_change']) < 1e-12, name
    assert r[name]['num_examples'] == 300


def test_mean_prob_change_is_the_drop_of_the_predicted_class():
  logits = {0: np.array([[2.0, 0.0], [0.0, 1.0]]), 1: np.array([[0.0, 2.0], [0.0, 3.0]])}
  classify = lambda x: logits[int(x[0, 0])]
  x, x_flip = np.zeros((2, 1)), np.ones((2, 1))
  r = reliance.reliance(classify, x, x_flip, batch_size=2)
  sig = lambda t: 1 / (1 + np.exp(-t))
  # sample 0: predicted 0, p 0.881 → 0.119; sample 1: predicted 1, p 0.731 → 0.953.
  want = ((sig(2) - sig(-2)) + (sig(1) - sig(3))) / 2
  assert r['flip_rate'] == 0.5 and abs(r['mean_prob_change'] - want) < 1e-12


def test_bad_inputs_name_the_problem():
  with pytest.raises(ValueError, match='same shape'):
    reliance.reliance(lambda x: np.zeros((len(x), 2)), np.zeros((3, 2)), np.zeros((4, 2)))
  with pytest.raises(ValueError, match=r'logits \[B, C\]'):
    reliance.reliance(lambda x: np.zeros(len(x)), np.zeros((3, 2)), np.zeros((3, 2)))
  with pytest.raises(ValueError, match='cannot flip unknown'):
    shapes.generate(4, flip='smile')


def test_relied_on_is_above_the_independent_attributes_by_the_margin():
  vals = {'shape': 0.9, 'color': 0.2, 'size': 0.06, 'texture': 0.04}
  got = reliance.relied_on(vals, ['size', 'texture'], margin=0.1)
  assert got == {'shape': True, 'color': True, 'size': False, 'texture': False}
  assert not reliance.relied_on(vals, ['size', 'texture'], margin=0.2)['color']


def test_correlated_test_split_colour_reader_ground_truth_verdict_and_unbiased_accuracy():
  """data.test_rho = 0.8 (r = 0.6 between shape and colour): a hand-built colour reader
  (blue object ⇒ class 1) has reliance 1 on colour, 0 elsewhere, on that split; the verdict
  computed there says so; its unbiased accuracy is its accuracy on 'test_unbiased', the
  same images with colour independent of the shape (≈ 0.5, where 'test' gives ≈ 0.8)."""
  cfg = tiny.get_config().data
  cfg.unlock()
  cfg.num_test, cfg.test_rho = 512, 0.8
  # Blue objects have B − R ≈ +0.7, red ones ≈ −0.7, the grey background |B − R| < 0.3.
  blue = lambda p, x: jnp.max(x[..., 2] - x[..., 0], axis=(1, 2))[:, None]
  split = ClassifierSplit(embed=blue, head=lambda p, h: jnp.concatenate([0.4 - h, h - 0.4], -1),
                          params={})
  mesh = parallel.make_mesh()
  test, unbiased = data_lib.load(cfg, 'test'), data_lib.load(cfg, 'test_unbiased')
  colour = shapes.ATTRIBUTES.index('color')
  pred = np.argmax(artifacts.classify_fn(split, 128, mesh)(test.images), -1)
  np.testing.assert_array_equal(pred, test.attributes[:, colour])   # it reads colour exactly
  assert 0.75 < np.mean(pred == test.labels) < 0.85                 # test_rho 0.8, N = 512
  acc = artifacts.unbiased_accuracy(cfg, split, 128, mesh)
  expected = np.mean(unbiased.attributes[:, colour] == unbiased.labels)
  assert acc == pytest.approx(expected, abs=1e-12) and 0.4 < acc < 0.6
  rel = artifacts.ground_truth_reliance(cfg, split, test, 128, mesh)
  assert rel['color']['flip_rate'] == 1.0
  assert all(v['flip_rate'] == 0.0 for n, v in rel.items() if n != 'color')
  rows = {r['attribute']: r for r in bias.prediction_association(
      pred, test.attributes, test.attribute_names, test.task, 2)}
  assert rows['color']['verdict'] == 'relied on' and rows['color']['shift'] == pytest.approx(1)
  assert rows['shape']['verdict'] == 'no evidence' and rows['shape']['partner'] == 'color'
  assert abs(rows['shape']['correlation'] - 0.6) < 0.1
  assert (classifier_stage.split_description(cfg)
          == 'test (color agrees with shape in 80%: r = +0.60)')
  cfg.test_rho = 0.5      # the test split is the unbiased one: nothing extra to report
  assert artifacts.unbiased_accuracy(cfg, split, 128, mesh) is None
  assert classifier_stage.split_description(cfg) == 'test (unbiased)'
