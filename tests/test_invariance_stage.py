"""The invariance stages (issue 26): the image autoencoder and the conditional INN as nodes
of the graph (trained, resumed, linked, evaluated), the evaluator's shares against a NumPy
oracle, and the step's noise independent of the device count."""
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lsei_jax import pipeline
from lsei_jax.data import shapes
from lsei_jax.inn import conditional
from lsei_jax.pipeline import evaluation
from lsei_jax.pipeline.stages import invariance as inv_stage
from lsei_jax.reporting import html_report, plots, report
from lsei_jax.training import checkpoints, parallel


def _oracle(pred_orig, pred_recon, pred_samples, attr_recon, attr_samples):
  """Loops in float64 over every sample and attribute."""
  n, b = pred_samples.shape
  a = attr_recon.shape[1]
  kept = sum(float(pred_samples[i, j] == pred_orig[j]) for i in range(n) for j in range(b))
  change = np.zeros(a, np.float64)
  for k in range(a):
    change[k] = sum(float(attr_samples[i, j, k] != attr_recon[j, k])
                    for i in range(n) for j in range(b)) / (n * b)
  recon = sum(float(pred_recon[j] == pred_orig[j]) for j in range(b)) / b
  return kept / (n * b), recon, change


def test_invariance_rates_match_a_numpy_oracle():
  rng = np.random.default_rng(0)
  n, b, a = 5, 7, 4
  pred_orig, pred_recon = rng.integers(0, 3, b), rng.integers(0, 3, b)
  pred_samples = rng.integers(0, 3, (n, b))
  attr_recon, attr_samples = rng.random((b, a)) > 0.5, rng.random((n, b, a)) > 0.3
  got = inv_stage.invariance_rates(pred_orig, pred_recon, pred_samples, attr_recon,
                                   attr_samples)
  kept, recon, change = _oracle(pred_orig, pred_recon, pred_samples, attr_recon, attr_samples)
  # Shares of at most 35 counts: exact in float64 up to one rounding of the division.
  assert got['label_kept'] == pytest.approx(kept, abs=1e-15)
  assert got['recon_label_kept'] == pytest.approx(recon, abs=1e-15)
  np.testing.assert_allclose(got['attribute_change'], change, rtol=0, atol=1e-15)
  # Known answers: samples equal to the original keep every label and change nothing.
  same = inv_stage.invariance_rates(pred_orig, pred_orig, np.tile(pred_orig, (n, 1)),
                                    attr_recon, np.tile(attr_recon, (n, 1, 1)))
  assert same['label_kept'] == 1.0 and same['recon_label_kept'] == 1.0
  assert not same['attribute_change'].any()


def test_summarise_names_what_the_samples_vary():
  rates = {'label_kept': 0.97, 'recon_label_kept': 0.99,
           'attribute_change': np.array([0.01, 0.30, 0.04])}
  reliance = {'color': {'flip_rate': 0.999}, 'size': {'flip_rate': 0.0},
              'shape': {'flip_rate': 0.02}}
  kw = dict(num_images=4, samples=2, temperature=1.0, reconstruction_mse=0.0, round_trip=0.0,
            encoded_min=0.9, change_max=0.05, relied_min=0.05, min_probe_accuracy=0.75)
  out = inv_stage.summarise(rates, ['color', 'size', 'shape'], np.array([1.0, 0.6, 0.95]),
                            np.ones(3), reliance, **kw)
  assert out['varied'] == ['size'] and out['encoded_by_h'] == ['color', 'shape']
  assert out['unencoded_varied'] and out['relied_on'] == ['color'] and out['relied_kept']
  # A probe that cannot read size on D(E(x)): its changes count neither way.
  out = inv_stage.summarise(rates, ['color', 'size', 'shape'], np.array([1.0, 0.6, 0.95]),
                            np.array([1.0, 0.5, 1.0]), reliance, **kw)
  assert out['unreadable'] == ['size'] and out['varied'] == [] and out['unencoded_varied']
  rates['attribute_change'] = np.array([0.06, 0.01, 0.04])   # colour varies, size does not
  out = inv_stage.summarise(rates, ['color', 'size', 'shape'], np.array([1.0, 0.6, 0.95]),
                            np.ones(3), reliance, **kw)
  assert not out['relied_kept'] and not out['unencoded_varied']
  text = report.format_invariance({'invariance': out})
  assert '97.0% of 2 × 4 invariance samples' in text and 'all kept: no' in text


def test_pairwise_disagreement_against_a_loop_over_pairs():
  rng = np.random.default_rng(2)
  n, b, a = 5, 6, 3
  draws = rng.random((n, b, a)) > 0.4
  oracle = np.zeros(a)
  for k in range(a):
    pairs = [float(draws[i, j, k] != draws[l, j, k])
             for j in range(b) for i in range(n) for l in range(n) if i != l]
    oracle[k] = sum(pairs) / len(pairs)
  # Shares of at most 120 counts: float64 rounding of one division per image.
  np.testing.assert_allclose(inv_stage.pairwise_disagreement(draws), oracle, rtol=0, atol=1e-14)
  # Known answers: draws that agree per image (however they differ between images) → 0;
  # half True, half False per image → n/(2(n − 1)) of the pairs differ.
  same = np.broadcast_to(rng.random((1, b, a)) > 0.5, (n, b, a))
  assert not inv_stage.pairwise_disagreement(same).any()
  half = np.zeros((4, b, a), bool)
  half[:2] = True
  np.testing.assert_allclose(inv_stage.pairwise_disagreement(half), 4 / 6, atol=1e-15)


def test_summarise_latent_reads_beside_the_image_probes():
  rates = {'label_kept': 0.97, 'recon_label_kept': 0.99,
           'attribute_change': np.array([0.01, 0.30, 0.40])}
  reliance = {'color': {'flip_rate': 0.9}, 'size': {'flip_rate': 0.0},
              'shape': {'flip_rate': 0.5}}
  kw = dict(num_images=4, samples=2, temperature=0.5, reconstruction_mse=0.0, round_trip=0.0,
            encoded_min=0.9, change_max=0.05, relied_min=0.05, min_probe_accuracy=0.75)
  names = ['color', 'size', 'shape']
  # The image probe cannot read shape on D(E(x)) (0.6); the latent probe can (0.9).
  out = inv_stage.summarise(rates, names, np.array([1.0, 0.6, 0.95]),
                            np.array([1.0, 1.0, 0.6]), reliance, **kw)
  assert out['unreadable'] == ['shape'] and not out['relied_kept']
  # …which the report names as unreadable, not as its probe's 40% change.
  text = report.format_invariance({'invariance': out})
  assert 'shape unreadable' in text and 'shape 40.0%' not in text and 'all kept: no' in text
  reading = {'change': np.array([0.02, 0.2, 0.04]), 'accuracy': np.array([1.0, 0.9, 0.9]),
             'spread': np.array([0.0, 0.3, 0.01])}
  lat = inv_stage.summarise_latent(out, reading, names, change_max=0.05,
                                   min_probe_accuracy=0.75)
  assert lat['attribute_change_latent'] == {'color': 0.02, 'size': 0.2, 'shape': 0.04}
  assert lat['unreadable_latent'] == [] and lat['varied_latent'] == ['size']
  assert lat['relied_kept_latent'] and lat['unencoded_varied_latent']
  assert lat['sample_spread_latent']['size'] == 0.3
  assert out['attribute_change'] == lat['attribute_change']    # the old reading kept as is
  assert 'attribute_change_latent' not in out                  # not modified in place
  reading['change'] = np.array([0.06, 0.01, 0.04])              # colour changes, size does not
  lat = inv_stage.summarise_latent(out, reading, names, change_max=0.05,
                                   min_probe_accuracy=0.75)
  assert not lat['relied_kept_latent'] and not lat['unencoded_varied_latent']
  text = report.format_invariance({'invariance': lat})
  assert 'temperature 0.5' in text and 'linear probes on E(x̃)' in text
  assert 'color 6.0%' in text


def test_base_is_pinned_only_where_it_is_not_none(tiny_config):
  """Checkpoints written before invariance.base existed (no base: 'none') keep loading; a
  base changes what the flow is trained on, so any other is pinned."""
  import types  # pylint: disable=g-import-not-at-top
  from lsei_jax.training import signature  # pylint: disable=g-import-not-at-top
  c = tiny_config.copy_and_resolve_references()
  for base, pinned in (('none', False), ('nearest', True), ('linear', True)):
    c.invariance.base = base
    sig = inv_stage.signature_fix(types.SimpleNamespace(config=c),
                                  signature.stage_signature(c, ('autoencoder', 'invariance')))
    assert ('invariance.base' in sig) == pinned
  c.invariance.base = 'quadratic'
  with pytest.raises(Exception, match='invariance.base'):
    inv_stage.base_kind(c)


def test_evaluation_settings_are_not_pinned_but_training_fields_are(tiny_config):
  """T, the images evaluated and the thresholds do not change the trained flow: another
  value loads the checkpoint, also one recorded before they became harmless (which pinned
  them); a training field (steps) is still refused by name."""
  import types  # pylint: disable=g-import-not-at-top
  from lsei_jax.training import checkpoints, signature  # pylint: disable=g-import-not-at-top
  c = tiny_config.copy_and_resolve_references()
  sig = lambda: inv_stage.signature_fix(types.SimpleNamespace(config=c), signature.stage_signature(
      c, inv_stage.NODE.signature_sections))
  trained = sig()
  old = dict(trained, **{'invariance.eval_images': 256, 'invariance.temperature': 0.5})
  c.invariance.eval_images, c.invariance.temperature, c.invariance.samples = 7, 0.1, 3
  c.invariance.change_max, c.invariance.enabled = 0.2, not c.invariance.enabled
  for recorded in (trained, old):
    checkpoints.check_config('invariance', 'd', recorded, sig())
  c.invariance.steps += 1
  with pytest.raises(checkpoints.CheckpointError, match=r'\(invariance.steps: \d+ → \d+\)'):
    checkpoints.check_config('invariance', 'd', old, sig())


def test_an_unknown_base_is_refused_before_anything_trains(tiny_config, tmp_path):
  from lsei_jax.errors import UserError  # pylint: disable=g-import-not-at-top
  c = tiny_config.copy_and_resolve_references()
  c.invariance.enabled, c.invariance.base = True, 'quadratic'
  wd = str(tmp_path / 'wd')
  with pytest.raises(UserError, match=r"invariance.base='quadratic' is not one of none"):
    pipeline.train(c, wd, ['classifier'])
  assert not os.path.exists(wd)


def test_step_noise_is_the_same_on_one_and_four_devices():
  inn = conditional.ConditionalINN(num_steps=2, hidden=(8,), embed=(4,), data_init=False)
  rng = np.random.default_rng(0)
  batch = {'v': rng.normal(size=(8, 4)).astype(np.float32),
           'h': rng.normal(size=(8, 3)).astype(np.float32)}
  import optax  # pylint: disable=g-import-not-at-top
  state = conditional.create_state(inn, jax.random.key(0), jnp.zeros((2, 4)), jnp.zeros((2, 3)),
                                   optax.sgd(0.1))
  losses = []
  for n_dev, noise in ((1, 0.5), (4, 0.5), (4, 0.0)):
    mesh = parallel.make_mesh(n_dev)
    step = parallel.data_parallel_step(conditional.make_step(inn, noise), mesh,
                                       donate_state=False)
    losses.append(float(step(parallel.replicate(state, mesh), batch, jax.random.key(3))[1]['loss']))
  # The same noise per example on 1 and 4 devices: the loss differs by float32 reduction
  # order only (means over 8 rows of O(1) terms).
  assert losses[0] == pytest.approx(losses[1], abs=1e-5)
  assert abs(losses[0] - losses[2]) > 1e-3      # the noise is there


def _check_per_image_reliance(ctx, c, res, names):
  """The hook's per-image flip mask against one computed here: counterfactuals drawn by
  shapes.generate from the config's numbers, c = head(embed(x)) applied whole, argmax."""
  d, b = c.data, res['num_images']
  draw = lambda flip: shapes.generate(d.num_test, image_size=d.image_size, task=d.task,
                                      spurious=d.spurious, rho=d.test_rho, seed=d.seed,
                                      split='test', noise=d.noise,
                                      object_scale=d.object_scale, flip=flip)['image'][:b]
  pred = lambda x: np.argmax(np.asarray(ctx.classifier(jnp.asarray(x, jnp.float32) / 255)), -1)
  base = draw(None)
  np.testing.assert_array_equal(base, ctx.data.images[:b])
  want = np.stack([pred(draw(a)) != pred(base) for a in names], -1)
  got = ctx.derived(f'invariance_flips_{b}', lambda: pytest.fail('the hook kept no mask'))
  np.testing.assert_array_equal(got, want)
  rel = res['attribute_change_where_relied']
  not_rel = res['attribute_change_where_not_relied']
  for k, a in enumerate(names):
    assert rel[a]['images'] == want[:, k].sum() and not_rel[a]['images'] == b - want[:, k].sum()
    # The groups, weighted by their images, give the aggregate (≤ 32 samples: a rounding).
    parts = [(g[a]['images'], g[a][key] or 0.0) for g in (rel, not_rel)
             for key in ('change', 'label_kept')]
    assert sum(n * x for n, x in parts[0::2]) / b == pytest.approx(
        res['attribute_change'][a], abs=1e-12)
    assert sum(n * x for n, x in parts[1::2]) / b == pytest.approx(res['label_kept'], abs=1e-12)
  assert isinstance(res['relied_kept_per_image'], bool)
  assert set(res['relied_per_image_judged']) <= set(res['relied_on'])


@pytest.mark.slow
def test_stages_train_resume_and_evaluate(workdir_copy, tiny_config, trained_workdir, tmp_path):
  c = tiny_config.copy_and_resolve_references()
  assert 'invariance' not in pipeline.stage_names(c)       # off by default
  c.invariance.enabled = True
  assert pipeline.stage_names(c)[-3:] == ('autoencoder', 'invariance', 'sanity')
  metas = pipeline.train(c, workdir_copy, ['autoencoder', 'invariance'])
  assert metas['autoencoder']['complete'] and metas['invariance']['complete']
  assert metas['autoencoder']['upstream'] == {}             # the same for any classifier
  assert metas['invariance']['upstream'] == {
      'classifier': checkpoints.identity(trained_workdir[1]['classifier']),
      'autoencoder': checkpoints.identity(metas['autoencoder'])}
  again = pipeline.train(c, workdir_copy, ['autoencoder', 'invariance'])   # resumed: done
  assert again['invariance'] == metas['invariance']
  assert again['autoencoder'] == metas['autoencoder']
  # Interrupted after its first checkpoint, the cINN resumes to bitwise the same parameters.
  shutil.move(os.path.join(workdir_copy, 'invariance'), str(tmp_path / 'inv_done'))
  def interrupt(stage, step, state):
    if stage == 'invariance' and step == c.checkpoint.every_steps:
      raise KeyboardInterrupt
  with pytest.raises(KeyboardInterrupt):
    pipeline.train(c, workdir_copy, ['invariance'], hooks=[interrupt])
  seen = []
  resumed = pipeline.train(c, workdir_copy, ['invariance'],
                           hooks=[lambda s, step, _: seen.append((s, step))])
  assert ('invariance', c.checkpoint.every_steps) not in seen     # resumed, not restarted
  assert resumed['invariance']['fingerprint'] == metas['invariance']['fingerprint']
  ctx = evaluation.load(c, workdir_copy, ['classifier', 'probe', 'autoencoder', 'invariance'])
  res = inv_stage.evaluate_invariance(ctx)['invariance']
  names = list(ctx.data.attribute_names)
  assert res['num_images'] == 16 and res['samples_per_image'] == 2
  assert 0.0 <= res['label_kept'] <= 1.0 and set(res['attribute_change']) == set(names)
  assert set(res['relied_on']) <= set(names) and set(res['varied']) <= set(names)
  # Round trip of standardised v through τ and τ⁻¹ given h: float32 rounding of a 2-step
  # flow on unit-scale inputs.
  assert res['round_trip_max_abs'] < 1e-4
  _check_per_image_reliance(ctx, c, res, names)
  fig = ctx.figures['invariance']
  assert fig['original'].shape == fig['reconstruction'].shape == (4, 16, 16, 3)
  assert fig['samples'].shape == (2, 4, 16, 16, 3)
  # The figure beside the DVAE's in the report page.
  plots.save_grid(str(tmp_path / 'invariance_grid.png'),
                  [fig['original'], fig['reconstruction'], *fig['samples']])
  page = '\n'.join(html_report._invariance_section(res, str(tmp_path)))
  assert 'data:image/png;base64' in page and 'Invariances' in page
  # A changed autoencoder is refused by the cINN's checkpoint link.
  os.rename(os.path.join(workdir_copy, 'autoencoder'), str(tmp_path / 'ae_old'))
  c.autoencoder.steps = 4
  pipeline.train(c, workdir_copy, ['autoencoder'])
  with pytest.raises(checkpoints.CheckpointError, match='invariance'):
    evaluation.load(c, workdir_copy, ['classifier', 'autoencoder', 'invariance'])
