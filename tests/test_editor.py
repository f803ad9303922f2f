"""The image editor (issue 25 item 3): the trust gate against known answers (it refuses an
unconfirmed or leaky edit), the editor's rows against a NumPy oracle, and an editor trained
on a toy image world where each attribute paints one quadrant: an edit repaints that
quadrant and leaves the others."""
import numpy as np
import pytest

from lsei_jax import editor
from lsei_jax.reporting import editor_view
from lsei_jax.reporting.bias import _normal_quantile  # pylint: disable=protected-access


def _probe_readings(attrs, flips_other=0.0, confirm=1.0, seed=0):
  """Probe probabilities on reference and edited images of an edit of attribute 0: the edit
  shows in `confirm` of the images, and flips attribute 1's reading in `flips_other`."""
  rng = np.random.default_rng(seed)
  n = len(attrs)
  ref = np.where(attrs, 0.9, 0.1)
  edit = ref.copy()
  shown = rng.permutation(n) < round(confirm * n)
  edit[shown, 0] = 1 - edit[shown, 0]
  leak = rng.permutation(n) < round(flips_other * n)
  edit[leak, 1] = 1 - edit[leak, 1]
  return ref, edit


def test_trust_gate_confirms_a_clean_edit_and_refuses_leaky_or_weak_ones():
  attrs = np.random.default_rng(1).integers(0, 2, (200, 3)).astype(bool)
  t = editor.edit_trust(*_probe_readings(attrs), attrs, 0)
  assert t == {'confirm': 1.0, 'leakage': {1: 0.0, 2: 0.0}, 'max_leakage': 0.0,
               'trusted': True}
  leaky = editor.edit_trust(*_probe_readings(attrs, flips_other=0.1), attrs, 0)
  assert leaky['leakage'][1] == pytest.approx(0.1) and not leaky['trusted']
  # At the bounds: 5% leakage and 90% confirmation still pass, just beyond them does not.
  assert editor.edit_trust(*_probe_readings(attrs, flips_other=0.05), attrs, 0)['trusted']
  assert not editor.edit_trust(*_probe_readings(attrs, flips_other=0.055), attrs, 0)['trusted']
  assert editor.edit_trust(*_probe_readings(attrs, confirm=0.9), attrs, 0)['trusted']
  weak = editor.edit_trust(*_probe_readings(attrs, confirm=0.85), attrs, 0)
  assert weak['confirm'] == pytest.approx(0.85) and not weak['trusted']


def test_editor_rows_match_a_numpy_oracle_and_untrusted_edits_are_not_answered():
  rng = np.random.default_rng(2)
  n, names = 400, ['shape', 'color', 'size']
  attrs = rng.integers(0, 2, (n, 3)).astype(bool)
  ref = rng.integers(0, 2, n)
  edit = np.stack([1 - ref,                                           # every prediction flips
                   np.where(rng.uniform(size=n) < 0.02, 1 - ref, ref),  # a few flip
                   1 - ref])
  ok = {'confirm': 0.97, 'max_leakage': 0.01, 'trusted': True}
  trust = [ok, ok, dict(ok, max_leakage=0.2, trusted=False)]
  rows = editor_view.editor_rows(ref, edit, attrs, trust, names, 'shape')
  z = _normal_quantile(1 - 0.05 / 6)
  for j, r in enumerate(rows):
    d = np.where(attrs[:, j], -1, 1) * (edit[j] - ref)
    se = max(d.std(ddof=1) / np.sqrt(n), 0.5 / np.sqrt(n))
    assert r['effect'] == pytest.approx(d.mean(), abs=1e-12)
    assert (r['ci_low'], r['ci_high']) == pytest.approx((d.mean() - z * se, d.mean() + z * se),
                                                        abs=1e-12)
    assert r['flip_rate'] == pytest.approx(np.mean(edit[j] != ref), abs=1e-12)
    assert r['estimator'] == 'image_editor'
  assert rows[0]['flip_rate'] == 1.0
  assert rows[1]['verdict'] == 'no evidence'
  # Flipping every prediction, whichever way the attribute goes: no direction to report
  # (the signed effect is about 0), unlike a flip rate of 1. Untrusted: never answered.
  assert rows[2]['verdict'] == 'cannot tell' and rows[2]['evidence'].startswith('edit not trusted')
  # A classifier that predicts the attribute itself: effect 1, relied on.
  follows = np.stack([1 - attrs[:, 0].astype(int)] + [attrs[:, 0].astype(int)] * 2)
  r = editor_view.editor_rows(attrs[:, 0].astype(int), follows, attrs, [ok] * 3, names,
                              'shape')[0]
  assert r['effect'] == 1.0 and r['verdict'] == 'relied on' and r['ci_high'] > r['ci_low']


def test_editor_rows_refuse_more_than_two_classes():
  with pytest.raises(ValueError, match='2 classes'):
    editor_view.editor_rows(np.array([0, 2]), np.array([[0, 1]]), np.zeros((2, 1)),
                            [{'confirm': 1, 'max_leakage': 0, 'trusted': True}], ['a'], 'a')


def _quadrant_world(n, seed):
  """16×16 images: attribute j ∈ {0..3} paints quadrant j bright (0.85) or dark (0.15), plus
  pixel noise; nothing else varies."""
  rng = np.random.default_rng(seed)
  attrs = rng.integers(0, 2, (n, 4)).astype(bool)
  img = np.zeros((n, 16, 16, 3))
  for j, (r, c) in enumerate([(0, 0), (0, 8), (8, 0), (8, 8)]):
    img[:, r:r + 8, c:c + 8] = np.where(attrs[:, j], 0.85, 0.15)[:, None, None, None]
  img += rng.normal(0, 0.03, img.shape)
  return np.clip(np.round(img * 255), 0, 255).astype(np.uint8), attrs


@pytest.mark.slow   # trains a small conv autoencoder (about 10 s of CPU)
def test_trained_editor_repaints_the_edited_quadrant_only():
  images, attrs = _quadrant_world(512, 0)
  module, params = editor.train_editor(images, attrs, steps=300, batch_size=32, seed=0)
  test, test_attrs = _quadrant_world(64, 1)
  quad = lambda x: np.stack([x[:, r:r + 8, c:c + 8].mean((1, 2, 3)) / 255.0
                             for r, c in [(0, 0), (0, 8), (8, 0), (8, 8)]], -1)   # [N, 4]
  ref = quad(editor.edit_images(module, params, test, test_attrs, None))
  # The reconstruction shows each quadrant's attribute (bright > 0.5 ⇔ attribute on).
  assert np.mean((ref > 0.5) == test_attrs) > 0.95
  edited = quad(editor.edit_images(module, params, test, test_attrs, 2))
  change = np.abs(edited - ref).mean(0)
  assert change[2] > 0.4                                # 0.7 between the two paintings
  assert np.all(np.delete(change, 2) < 0.1)
  assert np.mean((edited[:, 2] > 0.5) == ~test_attrs[:, 2]) > 0.95


def test_bad_editor_inputs_are_refused():
  with pytest.raises(ValueError, match='must be'):
    editor.train_editor(np.zeros((4, 16, 16, 3), np.uint8), np.zeros((3, 2)), steps=1)
