"""Factor sweeps (issue 26): the pure sweep against a float64 NumPy oracle on linear maps,
its round trips at the image's own block value, the summary's shares, the figure, and the
evaluator on the trained tiny stages (slow)."""
import jax
import numpy as np
import pytest
from PIL import Image

from lsei_jax import pipeline
from lsei_jax.inn import sweep
from lsei_jax.pipeline import evaluation, factor_sweep, frozen
from lsei_jax.pipeline.stages import autoencoder as ae_stage
from lsei_jax.pipeline.stages import inn as inn_stage
from lsei_jax.reporting import html_report, plots, report

B, D, M, SIDE = 3, 5, 4, 2       # images, dim h (= dim z), dim v, image side
BLOCKS = [slice(0, 2), slice(2, 4)]   # two blocks of 2 columns, then a residual


def _linear_maps(seed=0):
  """Invertible linear maps standing in for T, τ, D and c2 (float64 inside)."""
  rng = np.random.default_rng(seed)
  t = rng.normal(size=(D, D)) + 3 * np.eye(D)
  w = rng.normal(size=(D, M))
  dec = rng.normal(size=(M, SIDE * SIDE * 3)) * 0.3
  c = rng.normal(size=(D, 3))
  sigm = lambda x: 1 / (1 + np.exp(-x))
  return dict(
      encode_h=lambda h: np.asarray(h, np.float64) @ t,
      decode_z=lambda z: np.asarray(z, np.float64) @ np.linalg.inv(t),
      residual=lambda v, h: np.asarray(v, np.float64) - np.asarray(h, np.float64) @ w,
      invert=lambda nu, h: np.asarray(nu, np.float64) + np.asarray(h, np.float64) @ w,
      decode_v=lambda v: sigm(np.asarray(v, np.float64) @ dec).reshape(-1, SIDE, SIDE, 3),
      head=lambda h: np.asarray(h, np.float64) @ c), (t, w, dec, c, sigm)


def test_block_values_run_from_one_class_mean_to_the_other():
  means = np.array([[[0.0], [1.0]], [[2.0], [-2.0]]])          # [F=2, 2, d_f=1]
  got = sweep.block_values(means, 5)
  assert got.shape == (2, 5, 1)
  np.testing.assert_array_equal(got[0, :, 0], [0, 0.25, 0.5, 0.75, 1])   # exact in binary
  np.testing.assert_array_equal(got[1, :, 0], [2, 1, 0, -1, -2])


def test_set_blocks_matches_a_loop():
  rng = np.random.default_rng(1)
  z = rng.normal(size=(B, D)).astype(np.float32)
  values = rng.normal(size=(len(BLOCKS), 4, 2)).astype(np.float32)   # shared by the rows
  got = sweep.set_blocks(z, BLOCKS, values)
  assert got.shape == (B, len(BLOCKS), 4, D)
  for b in range(B):
    for a, cols in enumerate(BLOCKS):
      for s in range(4):
        want = z[b].copy()
        want[cols] = values[a, s]
        np.testing.assert_array_equal(got[b, a, s], want)


def test_sweep_matches_a_float64_oracle():
  fns, (t, w, dec, c, sigm) = _linear_maps()
  rng = np.random.default_rng(2)
  h, v = rng.normal(size=(B, D)), rng.normal(size=(B, M))
  values = rng.normal(size=(B, len(BLOCKS), 3, 2))        # per image
  out = sweep.factor_sweep(h, v, values, BLOCKS, **fns)
  assert out['images'].shape == (B, 2, 3, SIDE, SIDE, 3) and out['images'].dtype == np.uint8
  assert out['pred'].shape == (B, 2, 3) and out['h'].shape == (B, 2, 3, D)
  h64, v64 = h.astype(np.float32).astype(np.float64), v.astype(np.float32).astype(np.float64)
  for b in range(B):
    nu = v64[b] - h64[b] @ w
    for a, cols in enumerate(BLOCKS):
      for s in range(3):
        z = h64[b] @ t
        z[cols] = values[b, a, s].astype(np.float32)
        h2 = z @ np.linalg.inv(t)
        img = sigm((nu + h2 @ w) @ dec).reshape(SIDE, SIDE, 3)
        # h' is float32 (roundings of O(1) values through a well-conditioned map); the
        # images are the same uint8 but where a value sits within that error of a rounding
        # boundary (then off by one level).
        np.testing.assert_allclose(out['h'][b, a, s], h2, rtol=0, atol=1e-5)
        diff = np.abs(out['images'][b, a, s].astype(int) - np.round(img * 255).astype(int))
        assert diff.max() <= 1
        assert out['pred'][b, a, s] == np.argmax(out['h'][b, a, s].astype(np.float64) @ c)
  # Rows are independent: the sweep of image 1 alone is the same.
  one = sweep.factor_sweep(h[1:2], v[1:2], values[1:2], BLOCKS, **fns)
  np.testing.assert_array_equal(one['images'][0], out['images'][1])


def test_sweep_at_the_own_block_value_gives_back_h_and_the_reconstruction():
  fns, _ = _linear_maps(3)
  rng = np.random.default_rng(4)
  h, v = rng.normal(size=(B, D)).astype(np.float32), rng.normal(size=(B, M)).astype(np.float32)
  z = fns['encode_h'](h)
  own = np.stack([z[:, cols] for cols in BLOCKS], 1)[:, :, None]     # [B, A, S=1, 2]
  out = sweep.factor_sweep(h, v, own, BLOCKS, **fns)
  # T⁻¹(T(h)) in float64, stored as float32: h to one float32 rounding of O(1) values.
  np.testing.assert_allclose(out['h'], np.broadcast_to(h[:, None, None], out['h'].shape),
                             rtol=0, atol=1e-6)
  recon = sweep.to_uint8(fns['decode_v'](v))
  assert np.abs(out['images'].astype(int) - recon[:, None, None].astype(int)).max() <= 1
  # Elsewhere the images differ: the oracle above is not met by any sweep.
  far = sweep.factor_sweep(h, v, own + 3.0, BLOCKS, **fns)
  assert np.abs(far['images'].astype(int) - recon[:, None, None].astype(int)).max() > 1


def test_endpoint_change_and_summary_count_sweeps():
  pred = np.array([[[0, 0, 1], [1, 1, 1]],
                   [[1, 0, 1], [0, 1, 1]]])          # [B=2, A=2, S=3]
  np.testing.assert_array_equal(sweep.endpoint_change(pred), [0.5, 0.5])
  image_pred = pred.copy()
  image_pred[0, 0] = [0, 0, 0]
  out = factor_sweep.summary(pred, image_pred, ['color', 'shape'])
  assert out['head_endpoint_change'] == {'color': 0.5, 'shape': 0.5}
  assert out['image_endpoint_change'] == {'color': 0.0, 'shape': 0.5}
  assert out['image_agrees_with_head'] == pytest.approx(11 / 12, abs=1e-15)
  assert out['num_images'] == 2 and out['steps'] == 3
  text = report.format_factor_sweep({'factor_sweep': out})
  assert 'agrees with c2(h\') on 91.7%' in text
  assert text.splitlines()[-2].split() == ['color', '50.0%', '0.0%']
  assert report.format_factor_sweep({}) == ''


def test_sweep_grid_draws_a_row_per_image_and_attribute(tmp_path):
  rng = np.random.default_rng(5)
  b, a, s, side = 2, 3, 4, 8
  sweeps = rng.integers(0, 256, (b, a, s, side, side, 3), dtype=np.uint8)
  original = rng.integers(0, 256, (b, side, side, 3), dtype=np.uint8)
  pred = rng.integers(0, 2, (b, a, s))
  path = str(tmp_path / 'factor_sweep.png')
  plots.sweep_grid(path, original, sweeps, ['color', 'size', 'shape'], pred, pred[:, 0, 0],
                   pred, scale=2)
  img = np.asarray(Image.open(path))
  # Layout of sweep_grid: head 10, per row image + 9 (labels) + 2 (pad), left 28, a column
  # per image + 2; all scaled by 2.
  assert img.shape == (2 * (10 + b * a * (side + 11) + 2), 2 * (28 + (s + 1) * (side + 2) + 2), 3)
  # The sweep image of row (image 1, attribute 2), step 3, is where the layout puts it.
  y, x = 2 * (10 + 2 + 5 * (side + 11)), 2 * (28 + 2 + 4 * (side + 2))
  np.testing.assert_array_equal(img[y:y + 2 * side:2, x:x + 2 * side:2], sweeps[1, 2, 3])
  page = '\n'.join(html_report._factor_sweep_section(
      factor_sweep.summary(pred, pred, ['color', 'size', 'shape']), str(tmp_path)))
  assert 'data:image/png;base64' in page and 'Factor sweeps' in page
  assert html_report._factor_sweep_section(None, str(tmp_path)) == []


@pytest.mark.slow
def test_evaluator_on_the_trained_stages(workdir_copy, tiny_config, tmp_path):
  c = tiny_config.copy_and_resolve_references()
  c.inn.enabled = True
  pipeline.train(c, workdir_copy, ['inn'])
  # Without the invariance stages: nothing, and no error.
  ctx = evaluation.load(c, workdir_copy, ['classifier', 'inn'])
  assert factor_sweep.evaluate_factor_sweep(ctx) == {} and 'factor_sweep' not in ctx.figures
  c.invariance.enabled = True
  pipeline.train(c, workdir_copy, ['autoencoder', 'invariance'])
  ctx = evaluation.load(c, workdir_copy, ['classifier', 'inn', 'autoencoder', 'invariance'])
  res = factor_sweep.evaluate_factor_sweep(ctx)['factor_sweep']
  names = list(ctx.data.attribute_names)
  assert res['num_images'] == 16 and res['steps'] == 5     # eval.factor_sweep's default
  assert set(res['head_endpoint_change']) == set(names)
  fig = ctx.figures['factor_sweep']
  assert fig['sweeps'].shape == (4, len(names), 5, 16, 16, 3) and fig['sweeps'].dtype == np.uint8
  # The evaluator's chunks (one image each here: eval.batch_size 32 < A·S per image) give
  # what one sweep of its 16 images gives: the images to one uint8 level (XLA may round a
  # row differently in another batch shape), the labels exactly.
  images16 = np.asarray(ctx.data.images[:16])
  h16 = ctx.map(frozen.embed_fn(ctx.classifier.embed, ctx.mesh), ctx.classifier.params,
                {'image': images16})                       # as the evaluator embeds them
  fns = factor_sweep.maps(ctx)
  layout = inn_stage.model(ctx.spec).layout
  blocks = [layout.block(a) for a in range(layout.num_factors)]
  whole = sweep.factor_sweep(h16, ae_stage.latents(ctx, images16, 'v_sweep16'),
                             factor_sweep.sweep_values(ctx, 5), blocks, **fns)
  assert np.abs(fig['sweeps'].astype(int) - whole['images'][:4].astype(int)).max() <= 1
  np.testing.assert_array_equal(fig['pred'], whole['pred'][:4])
  assert res['head_endpoint_change'] == dict(zip(
      names, map(float, sweep.endpoint_change(whole['pred']))))
  # At each image's own block value: h' = T⁻¹(T(h)) and x' = D(τ⁻¹(τ(v | h) | h')).
  images = np.asarray(ctx.data.images[:6])
  h = np.asarray(ctx.classifier.embed(ctx.classifier.params, images / np.float32(255)))
  v = ae_stage.latents(ctx, images, 'v_sweep_test')
  # The tiny cINN, 8 steps from a start that ignores h, barely reads h: a sweep decoding with
  # the wrong h would pass the check below. Perturbed parameters make τ read h (the
  # identity holds for any parameters).
  state = ctx.states['invariance']
  leaves, tree = jax.tree.flatten(state.params)
  keys = jax.random.split(jax.random.key(0), len(leaves))
  ctx.states['invariance'] = state.replace(params=jax.tree.unflatten(tree, [
      x + 0.2 * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)]))
  fns = factor_sweep.maps(ctx)
  z = np.asarray(fns['encode_h'](h))
  own = np.stack([z[:, cols] for cols in blocks], 1)[:, :, None]        # [B, A, 1, d_f]
  out = sweep.factor_sweep(h, v, own, blocks, **fns)
  # The whole T (basis in float64, 2-step flow in float32) in units of h (|h| ≲ 10): the
  # bound test_inn_stage puts on its round trip.
  np.testing.assert_allclose(out['h'], np.broadcast_to(h[:, None, None], out['h'].shape),
                             rtol=0, atol=1e-3)
  recon = sweep.to_uint8(ae_stage.decode_fn(ae_stage.model(ctx.spec))(
      ctx.params('autoencoder'), v))
  # D(E(x)) through τ's round trip and h' ≈ h: off by at most one uint8 level.
  assert np.abs(out['images'].astype(int) - recon[:, None, None].astype(int)).max() <= 1
  # ... which a wrong h would miss: the perturbed τ⁻¹ given other images' h decodes others.
  wrong = sweep.to_uint8(fns['decode_v'](fns['invert'](fns['residual'](v, h), h[::-1])))
  assert np.abs(wrong.astype(int) - recon.astype(int)).max() > 8
  # The labels are c2(h'), computed here un-jitted.
  logits = np.asarray(ctx.classifier.head(ctx.classifier.params,
                                          out['h'].reshape(-1, out['h'].shape[-1])))
  np.testing.assert_array_equal(out['pred'].reshape(-1), np.argmax(logits, -1))
  # The figure in eval/ where both exist; the report page embeds it.
  plots.sweep_grid(str(tmp_path / 'factor_sweep.png'), fig['original'], fig['sweeps'],
                   fig['attributes'], fig['pred'], fig['original_pred'], fig['image_pred'])
  page = '\n'.join(html_report._factor_sweep_section(res, str(tmp_path)))
  assert 'data:image/png;base64' in page


def test_write_draws_the_sweep_only_when_evaluated(tmp_path, monkeypatch):
  # The report page is tested elsewhere; here only which PNGs eval/ receives.
  monkeypatch.setattr(evaluation.html_report, 'write', lambda *a, **k: None)
  z = np.zeros((2, 8, 8, 3))
  figures = {k: z for k in ('image', 'g_hhat', 'g_flip', 'attribution_image', 'ig')}
  result = {'per_bit_change_by_class': [[0.1, 0.2]], 'single_bit_change': 0.1}
  evaluation.write(result, figures, str(tmp_path / 'without'))
  assert not (tmp_path / 'without' / 'factor_sweep.png').exists()
  assert (tmp_path / 'without' / 'fig3_grid.png').exists()
  rng = np.random.default_rng(6)
  pred = rng.integers(0, 2, (2, 3, 5))
  figures['factor_sweep'] = {
      'original': rng.integers(0, 256, (2, 8, 8, 3), dtype=np.uint8),
      'sweeps': rng.integers(0, 256, (2, 3, 5, 8, 8, 3), dtype=np.uint8), 'pred': pred,
      'image_pred': pred, 'original_pred': pred[:, 0, 0], 'attributes': ['a', 'b', 'c']}
  evaluation.write(result, figures, str(tmp_path / 'with'))
  assert Image.open(tmp_path / 'with' / 'factor_sweep.png').size[0] > 0


def test_sweep_settings_pin_no_checkpoint(tiny_config):
  # eval.factor_sweep may change between evaluations of one workdir: no stage's signature
  # (the config sections its checkpoints pin) holds it.
  from lsei_jax.pipeline import graph   # pylint: disable=g-import-not-at-top
  from lsei_jax.training import signature   # pylint: disable=g-import-not-at-top
  import ml_collections   # pylint: disable=g-import-not-at-top
  c = tiny_config.copy_and_resolve_references()
  c.inn.enabled = c.invariance.enabled = True
  c.eval.factor_sweep = ml_collections.ConfigDict(dict(steps=3, images=2))
  for node in graph.GRAPH:
    sig = signature.stage_signature(c, node.signature_sections)
    assert not any('factor_sweep' in k for k in sig), node.name


def test_sweep_grid_margin_fits_long_attribute_names(tmp_path):
  # CelebA's names run to 19 characters; they were cut to 6 ('Mouth_' for three of them).
  rng = np.random.default_rng(6)
  side = 8
  sweeps = rng.integers(0, 256, (1, 2, 3, side, side, 3), dtype=np.uint8)
  pred = np.zeros((1, 2, 3), int)
  widths = {}
  for names in (('a', 'b'), ('Mouth_Slightly_Open', 'Male')):
    path = str(tmp_path / f'{len(names[0])}.png')
    plots.sweep_grid(path, sweeps[:, 0, 0], sweeps, names, pred, pred[:, 0, 0], scale=4)
    img = np.asarray(Image.open(path))
    widths[names[0]] = img.shape[1]
    # The last column sits against the right edge whatever the margin: its image is intact.
    x = img.shape[1] // 4 - 2 - side
    y = 10 + 2 + (side + 11)
    np.testing.assert_array_equal(img[4 * y:4 * (y + side):4, 4 * x:4 * (x + side):4],
                                  sweeps[0, 1, 2])
    # Nothing drawn in the margin reaches the first image column (the name fits).
    first = img[:, 4 * (x - 3 * (side + 2)) - 1]
    assert (first == 255).all()
  assert widths['Mouth_Slightly_Open'] > widths['a']
