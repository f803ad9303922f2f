"""The invariance samples split by per-image reliance (issue 26): the per-image flip mask
of a hand-built classifier, the grouped shares against hand-computed answers and a float64
loop, and the ground truth rendered for the split it is asked about."""
import jax.numpy as jnp
import numpy as np
import pytest

from configs import tiny
from lsei_jax import data as data_lib, invariance_reliance as ir, reliance
from lsei_jax.classifier_split import ClassifierSplit
from lsei_jax.data import shapes
from lsei_jax.pipeline import artifacts
from lsei_jax.reporting import report
from lsei_jax.training import parallel


def _and_classifier(x):
  """Rows (a, b) of ±1 → class 1 iff a > 0 and b > 0 (logits [N, 2])."""
  on = ((x[:, 0] > 0) & (x[:, 1] > 0)).astype(np.float64)
  return np.stack([1 - on, on], -1)


def test_flip_mask_of_an_and_classifier_is_known():
  # Flipping a changes AND only where b is on, and the other way round.
  x = np.array([[1, 1], [1, -1], [-1, 1], [-1, -1]], np.float64)
  render = lambda n: x * (np.array([-1, 1]) if n == 'a' else np.array([1, -1]))
  got = reliance.flip_mask(_and_classifier, x, render, ['a', 'b'], batch_size=3)
  np.testing.assert_array_equal(got, [[1, 1], [0, 1], [1, 0], [0, 0]])
  assert got.dtype == bool
  # Its column means are reliance()'s flip rates.
  r = reliance.reliance_by_attribute(_and_classifier, x, render, ['a', 'b'], batch_size=3)
  assert [r[n]['flip_rate'] for n in 'ab'] == list(got.mean(0))
  assert reliance.flip_mask(_and_classifier, x, render, []).shape == (4, 0)
  with pytest.raises(ValueError, match="counterfactuals of 'a'"):
    reliance.flip_mask(_and_classifier, x, lambda n: x[:3], ['a'])


# n = 2 samples of B = 3 images, A = 3 attributes; c is relied on for no image.
FLIPS = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 0]], bool)
CHANGED = np.array([[[1, 0, 1], [0, 1, 1], [1, 1, 1]],
                    [[0, 0, 1], [0, 1, 1], [1, 0, 1]]], bool)
KEPT = np.array([[1, 1, 0], [1, 0, 0]], bool)


def test_masked_share_known_answer():
  share, images = ir.masked_share(CHANGED, FLIPS)
  # a: images 0, 1 → 1 of 4 samples; b: image 1 → 2 of 2; c: no image.
  np.testing.assert_array_equal(images, [2, 1, 0])
  assert share[0] == 0.25 and share[1] == 1.0 and np.isnan(share[2])
  share, images = ir.masked_share(CHANGED, ~FLIPS)
  # a: image 2 → 2 of 2; b: images 0, 2 → 1 of 4; c: all 6 samples changed.
  np.testing.assert_array_equal(images, [1, 2, 3])
  np.testing.assert_array_equal(share, [1.0, 0.25, 1.0])
  with pytest.raises(ValueError, match=r'\[n, B, A\]'):
    ir.masked_share(CHANGED, FLIPS[:2])


def test_summarise_by_reliance_known_answer():
  names = ['a', 'b', 'c']
  out = ir.summarise_by_reliance(FLIPS, names, kept=KEPT, changed=CHANGED,
                                 changed_latent=np.zeros_like(CHANGED), change_max=0.3,
                                 min_images=1)
  rel, not_rel = out['attribute_change_where_relied'], out['attribute_change_where_not_relied']
  # Label kept: a's images 0, 1 keep it on 3 of 4 samples, image 2 on none; b's image 1 on
  # 1 of 2, images 0, 2 on 2 of 4.
  assert rel['a'] == {'images': 2, 'label_kept': 0.75, 'change': 0.25}
  assert rel['b'] == {'images': 1, 'label_kept': 0.5, 'change': 1.0}
  assert rel['c'] == {'images': 0, 'label_kept': None, 'change': None}
  assert not_rel['a'] == {'images': 1, 'label_kept': 0.0, 'change': 1.0}
  assert not_rel['b'] == {'images': 2, 'label_kept': 0.5, 'change': 0.25}
  assert not_rel['c'] == {'images': 3, 'label_kept': 0.5, 'change': 1.0}
  assert out['attribute_change_where_relied_latent']['a'] == {'images': 2, 'change': 0.0}
  # b changes on all samples where relied: not kept; the latent probes see no change.
  assert out['relied_per_image_judged'] == ['a', 'b'] and not out['relied_kept_per_image']
  assert out['relied_kept_per_image_latent']
  # b relied on for 1 image only: below min_images 2 it is not judged, a (0.25) is kept.
  out = ir.summarise_by_reliance(FLIPS, names, kept=KEPT, changed=CHANGED, change_max=0.3,
                                 min_images=2)
  assert out['relied_per_image_judged'] == ['a'] and out['relied_kept_per_image']
  assert 'attribute_change_where_relied_latent' not in out
  # relied_on (over the whole split) leaves b out as well; without a, nothing is judged.
  out = ir.summarise_by_reliance(FLIPS, names, kept=KEPT, changed=CHANGED, change_max=0.3,
                                 min_images=1, relied_on=['b'])
  assert out['relied_per_image_judged'] == ['b'] and not out['relied_kept_per_image']
  out = ir.summarise_by_reliance(FLIPS, names, kept=KEPT, changed=CHANGED, change_max=0.0,
                                 min_images=1, relied_on=['c'])
  assert out['relied_per_image_judged'] == [] and out['relied_kept_per_image']
  # No image probes: the label share alone, nothing judged by a probe.
  out = ir.summarise_by_reliance(FLIPS, names, kept=KEPT, change_max=0.3)
  assert out['attribute_change_where_relied']['a'] == {'images': 2, 'label_kept': 0.75}
  assert 'relied_kept_per_image' not in out


def test_groups_against_a_float64_loop_and_the_aggregate():
  rng = np.random.default_rng(3)
  n, b, a = 4, 9, 5
  flips, changed = rng.random((b, a)) < 0.4, rng.random((n, b, a)) < 0.3
  flips[:, 4] = True                             # an attribute relied on for every image
  for mask in (flips, ~flips):
    share, images = ir.masked_share(changed, mask)
    for k in range(a):
      rows = [j for j in range(b) if mask[j, k]]
      assert images[k] == len(rows)
      if rows:
        want = sum(float(changed[i, j, k]) for i in range(n) for j in rows) / (n * len(rows))
        assert share[k] == pytest.approx(want, abs=1e-15)   # ≤ 36 counts: one rounding
      else:
        assert np.isnan(share[k])
  # The groups' counts weighted by their images are the aggregate's.
  s1, k1 = ir.masked_share(changed, flips)
  s0, k0 = ir.masked_share(changed, ~flips)
  total = np.nan_to_num(s1) * k1 + np.nan_to_num(s0) * k0
  np.testing.assert_allclose(total / b, changed.mean((0, 1)), rtol=0, atol=1e-15)


def _background_reader():
  """Reads the top two rows (the object never reaches them): background alone."""
  m = lambda x: jnp.mean(x[:, :2], axis=(1, 2, 3))[:, None]
  return ClassifierSplit(embed=lambda p, x: m(x),
                         head=lambda p, h: jnp.concatenate([0.48 - h, h - 0.48], -1), params={})


@pytest.mark.parametrize('split_name', ['validation', 'test'])
def test_ground_truth_of_the_split_asked_about(split_name):
  # The counterfactuals are those of the split the images are from: a background reader
  # relies on background for every image and on nothing else. (Validation images against
  # test counterfactuals flipped about half its decisions for every attribute.)
  cfg = tiny.get_config().data
  ds, mesh = data_lib.load(cfg, split_name), parallel.make_mesh()
  split = _background_reader()
  rel = artifacts.ground_truth_reliance(cfg, split, ds, 64, mesh, split_name)
  assert {n: v['flip_rate'] for n, v in rel.items()} == {
      n: float(n == 'background') for n in shapes.ATTRIBUTES}
  flips = artifacts.ground_truth_flips(cfg, split, ds.images[:20], ds.attribute_names, 8,
                                       mesh, split_name)
  np.testing.assert_array_equal(
      flips, np.tile(np.array(ds.attribute_names) == 'background', (20, 1)))


def test_report_line_names_each_judged_attribute():
  out = ir.summarise_by_reliance(FLIPS, ['a', 'b', 'c'], kept=KEPT, changed=CHANGED,
                                 changed_latent=np.zeros_like(CHANGED), change_max=0.3,
                                 min_images=1)
  out.update(num_images=3, samples_per_image=2, label_kept=0.5, recon_label_kept=1.0)
  line = report.invariance_lines(out)[-1]
  assert line.startswith('per image (relied on where flipping it flips')
  assert 'a on 2 images 25.0 / 0.0% (the others 100.0 / 0.0%; labels kept 75.0%)' in line
  assert 'b on 1 images 100.0 / 0.0%' in line and 'c on' not in line
  assert line.endswith('(image / latent probe); all kept there: no / yes')
