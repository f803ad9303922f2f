import json
import os

import pytest

from lsei_jax.training import checkpoints
from lsei_jax import pipeline
from lsei_jax.pipeline import identity
from lsei_jax.pipeline import evaluation
from lsei_jax.training.trainer import NonFiniteError

pytestmark = pytest.mark.slow  # trains through the pipeline (the quick tier skips it)


class Interrupt(Exception):
  pass


def _fingerprints(metas):
  return {k: (m['step'], m['fingerprint']) for k, m in metas.items()}


def test_smoke_all_stages_complete_with_logs(trained_workdir, tiny_config):
  workdir, metas = trained_workdir
  assert list(metas) == ['classifier', 'concepts', 'explainer', 'explainer_noreg', 'probe',
                         'sanity/classifier', 'sanity/concepts', 'sanity/explainer']
  assert metas['sanity/classifier']['num_steps'] == 0  # random, untrained
  for name, meta in metas.items():
    if name.startswith('sanity/'):
      continue
    assert meta['complete'] and meta['step'] == tiny_config[
        'explainer' if name.startswith('explainer') else name].steps
    lines = open(os.path.join(workdir, name, 'metrics.jsonl')).read().splitlines()
    assert json.loads(lines[-1])['step'] == meta['step']
    assert os.listdir(os.path.join(workdir, name, 'tensorboard'))
  assert metas['concepts']['upstream'] == {'classifier': checkpoints.identity(metas['classifier'])}
  assert set(metas['explainer']['upstream']) == {'classifier', 'concepts'}


def test_rerun_skips_complete_stages(workdir_copy, trained_workdir, tiny_config):
  before = sorted(os.listdir(os.path.join(workdir_copy, 'classifier')))
  metas = pipeline.train(tiny_config, workdir_copy)
  assert _fingerprints(metas) == _fingerprints(trained_workdir[1])
  assert sorted(os.listdir(os.path.join(workdir_copy, 'classifier'))) == before


@pytest.mark.parametrize('stop_in,at', [('classifier', 'first'), ('concepts', 'first'),
                                        ('classifier', 'last')])  # last: between stages
def test_resume_after_interrupt_gives_identical_parameters(tmp_path, trained_workdir,
                                                           tiny_config, stop_in, at):
  workdir = str(tmp_path / 'wd')
  stop_step = (tiny_config.checkpoint.every_steps if at == 'first'
               else tiny_config[stop_in].steps)

  def interrupt(stage, step, state):
    if stage == stop_in and step == stop_step:
      raise Interrupt

  with pytest.raises(Interrupt):
    pipeline.train(tiny_config, workdir, hooks=[interrupt])
  ckpt = checkpoints.StageCheckpoints(workdir, stop_in)
  assert ckpt.latest_step() == stop_step
  assert ckpt.read_meta(ckpt.latest_step())['complete'] == (at == 'last')
  ckpt.close()
  seen = []
  metas = pipeline.train(tiny_config, workdir, hooks=[lambda s, step, _: seen.append((s, step))])
  assert (stop_in, stop_step) not in seen  # resumed, not restarted
  assert _fingerprints(metas) == _fingerprints(trained_workdir[1])


def test_stage_trained_on_another_upstream_is_refused(workdir_copy, tiny_config):
  # Put another classifier of the same config in place (the sanity run's random one), keep
  # the old DVAE: the link no longer holds. (A classifier retrained with another seed is
  # refused before, by its own config signature: test_reliability.)
  import shutil
  shutil.rmtree(os.path.join(workdir_copy, 'classifier'))
  shutil.copytree(os.path.join(workdir_copy, 'sanity', 'classifier'),
                  os.path.join(workdir_copy, 'classifier'))
  with pytest.raises(checkpoints.CheckpointError, match='concepts checkpoint .* trained on classifier'):
    pipeline.train(tiny_config, workdir_copy, ['concepts'])
  with pytest.raises(checkpoints.CheckpointError, match='trained on classifier'):
    evaluation.evaluate(tiny_config, workdir_copy)


def test_incompatible_config_change_names_the_field(workdir_copy, tiny_config):
  changed = tiny_config.copy_and_resolve_references()
  changed.model.dvae.latent_dim = 7
  with pytest.raises(checkpoints.CheckpointError, match=r'model\.dvae\.latent_dim: 6 → 7'):
    pipeline.train(changed, workdir_copy)


def test_checkpoint_of_another_stage_is_refused(workdir_copy, tiny_config):
  import shutil
  shutil.rmtree(os.path.join(workdir_copy, 'classifier'))
  shutil.copytree(os.path.join(workdir_copy, 'concepts'), os.path.join(workdir_copy, 'classifier'))
  with pytest.raises(checkpoints.CheckpointError, match="stage 'concepts', not 'classifier'"):
    pipeline.train(tiny_config, workdir_copy, ['classifier'])


def test_non_finite_loss_stops_without_saving(tmp_path, tiny_config):
  bad = tiny_config.copy_and_resolve_references()
  bad.classifier.update(optimizer='sgd', learning_rate=1e30, schedule='constant')
  with pytest.raises(NonFiniteError, match=r'classifier: (loss|grad_norm) is .* at step \d+'):
    pipeline.train(bad, str(tmp_path), ['classifier'])
  assert checkpoints.StageCheckpoints(str(tmp_path), 'classifier').latest_step() is None


def test_eval_metrics(trained_workdir, tiny_config):
  workdir, _ = trained_workdir
  result = evaluation.evaluate(tiny_config, workdir)
  for key in ('accuracy', 'recon_accuracy', 'agreement', 'flip_all_change', 'info_cosine',
              'info_cosine_noreg'):
    assert 0.0 <= result[key] <= 1.0, key
  saved = json.load(open(os.path.join(workdir, 'eval', 'metrics.json')))
  assert {k: saved[k] for k in evaluation.TABLE_KEYS} == pytest.approx(
      {k: result[k] for k in evaluation.TABLE_KEYS})
  assert len(saved['bias_report']) == 6 and saved['sanity']['randomized_report']
  assert set(saved['probe_accuracy']) == {'shape', 'color', 'size', 'position', 'background',
                                          'texture'}
  assert os.path.getsize(os.path.join(workdir, 'eval', 'fig3_grid.png')) > 0
  # Concept-learner metrics of the DVAE, consistent with Table 1 and the per-bit analysis.
  c = saved['concepts']
  assert c['kind'] == 'dvae' and c['num_units'] == tiny_config.model.dvae.latent_dim
  assert c['num_decisive_units'] == sum(v > 0 for v in saved['per_bit_change'])
  if saved['accuracy'] != c['accuracy_mean_ablation']:
    assert c['accuracy_recovered'] == pytest.approx(
        (saved['recon_accuracy'] - c['accuracy_mean_ablation'])
        / (saved['accuracy'] - c['accuracy_mean_ablation']))
  assert 0 <= c['l0'] <= c['num_units'] and c['variance_explained'] <= 1.0
  assert saved['intervention'] == 'flip all bits'
  # Ground truth from counterfactual test images, one entry per attribute; the verdict and
  # the explainer's view cover every attribute.
  assert set(saved['reliance']) == set(saved['probe_accuracy'])
  for v in saved['reliance'].values():
    assert 0.0 <= v['flip_rate'] <= 1.0 and v['num_examples'] == 64
  assert {r['attribute'] for r in saved['intervention_report']} == set(saved['reliance'])
  # The closed loop (issue 25 item 4): one row per attribute, one entry per concept bit.
  loop = saved['closed_loop']
  assert [r['attribute'] for r in loop['rows']] == list(saved['reliance'])
  assert len(loop['bits']) == tiny_config.model.dvae.latent_dim
  assert 0.0 <= loop['validity_flip_all'] <= 1.0
  assert all(r['verdict'] in ('relied on', 'no evidence', 'cannot tell') for r in loop['rows'])
  assert all('flagged' in r for r in saved['bias_report'])
  assert 'Ground truth: reliance' in open(os.path.join(workdir, 'eval', 'report.html')).read()


def test_eval_before_training_names_the_stage(tmp_path, tiny_config):
  with pytest.raises(checkpoints.CheckpointError, match="stage 'classifier' has no checkpoint"):
    evaluation.evaluate(tiny_config, str(tmp_path))


def test_seed_aggregation(trained_workdir, workdir_copy, tiny_config):
  out = evaluation.evaluate_seeds(tiny_config, workdir_copy, [trained_workdir[0]])
  acc = out['figures']['accuracy']
  assert acc['n'] == 2 and acc['std'] == 0.0  # the same run twice
  # The same codes twice: stability 1 unless the code is constant (then 0 by definition).
  assert out['concept_stability']['values'] in ([pytest.approx(1.0)], [0.0])
  assert acc['mean'] == pytest.approx(acc['values'][0])
  saved = json.load(open(os.path.join(workdir_copy, 'eval', 'seeds.json')))
  assert saved['figures']['accuracy']['n'] == 2
  assert 'Across 2 seeds' in open(os.path.join(workdir_copy, 'eval', 'report.html')).read()


def _truncate_arrays(step_dir):
  for root, _, files in os.walk(os.path.join(step_dir, 'state')):
    for f in files:
      path = os.path.join(root, f)
      if os.path.getsize(path) > 64 and not f.endswith('.json'):
        with open(path, 'r+b') as fh:
          fh.truncate(16)


def test_truncated_checkpoint_falls_back_to_an_older_step(workdir_copy, trained_workdir,
                                                          tiny_config):
  last = tiny_config.classifier.steps
  bad = os.path.join(workdir_copy, 'classifier', str(last))
  _truncate_arrays(bad)
  # Evaluation cannot use the older, unfinished step: it says so instead of crashing.
  with pytest.raises(checkpoints.CheckpointError, match='stopped at step 8 of 12'):
    evaluation.evaluate(tiny_config, workdir_copy)
  # Training resumes from the older intact step, keeps the bad one aside, and recomputes
  # exactly the same final parameters.
  metas = pipeline.train(tiny_config, workdir_copy, ['classifier'])
  assert metas['classifier']['fingerprint'] == trained_workdir[1]['classifier']['fingerprint']
  assert os.path.isdir(bad + '.unreadable-0')


def test_no_readable_checkpoint_is_a_clear_error(workdir_copy, tiny_config):
  for step in checkpoints.StageCheckpoints(workdir_copy, 'classifier').all_steps():
    _truncate_arrays(os.path.join(workdir_copy, 'classifier', str(step)))
  with pytest.raises(checkpoints.CheckpointError, match='no readable classifier checkpoint'):
    evaluation.evaluate(tiny_config, workdir_copy)


def test_unwritable_workdir_is_refused_before_anything_runs(tmp_path, tiny_config,
                                                            monkeypatch):
  # (Root can write anywhere, so the permission is simulated for the check itself.)
  monkeypatch.setattr(os, 'access', lambda path, mode: False)
  with pytest.raises(PermissionError, match='is not writable'):
    pipeline.train(tiny_config, str(tmp_path / 'new' / 'run'), ['classifier'])
  assert not os.path.exists(tmp_path / 'new')


def test_evaluation_is_deterministic(trained_workdir, tiny_config, workdir_copy):
  # Same checkpoints, config and seed → the same metrics.json, to the bit.
  a = evaluation.evaluate(tiny_config, trained_workdir[0])
  b = evaluation.evaluate(tiny_config, workdir_copy)
  assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def test_sanity_with_a_random_head_on_the_builtin_classifier(workdir_copy, tiny_config):
  import shutil
  from lsei_jax import data as data_lib
  head = tiny_config.copy_and_resolve_references()
  head.sanity.randomize = 'head'
  sdir = os.path.join(workdir_copy, 'sanity')
  with pytest.raises(checkpoints.CheckpointError, match="randomize='init', not 'head'"):
    pipeline.train(head, workdir_copy, ['sanity'])
  shutil.rmtree(sdir)
  metas = pipeline.train(head, workdir_copy, ['sanity'])
  # Oracle: the recorded classifier is the trained one's embedding with the seed's random head.
  split = evaluation.load(head, workdir_copy, ['classifier']).classifier
  rand = identity.sanity_classifier(head.seed, split, data_lib.load(head.data, 'train').images)
  assert metas['sanity/classifier'] == identity.given_identity(rand, head.data.image_size)
  assert json.load(open(os.path.join(sdir, 'classifier.json')))['given'] == \
      metas['sanity/classifier']['given']
  # The random head keeps the embedding, so the concept learner is the run's own, adopted
  # rather than retrained; oracle: training it over the random head gives the same bits.
  main_concepts = checkpoints.StageCheckpoints(workdir_copy, 'concepts', read_only=True)
  main_meta = main_concepts.read_meta(main_concepts.latest_step())
  main_concepts.close()
  assert metas['sanity/concepts']['adopted_from'] == workdir_copy
  assert metas['sanity/concepts']['fingerprint'] == main_meta['fingerprint']
  assert metas['sanity/concepts']['upstream'] == {'classifier': metas['sanity/classifier']}
  assert metas['sanity/concepts']['step'] == head.concepts.steps and metas['sanity/concepts']['complete']
  retrained = pipeline.train(head, os.path.join(workdir_copy, 'retrained'),
                             ('classifier', 'concepts'), classifier=rand)
  assert retrained['concepts']['fingerprint'] == main_meta['fingerprint']
  again = pipeline.train(head, workdir_copy, ['sanity'])   # complete: loaded, not re-adopted
  assert again == metas
  result = evaluation.evaluate(head, workdir_copy)
  assert result['sanity']['randomized'] == 'head'
  assert result['attribution_sanity']['gradient']['layers'][0] == 'c2/Dense_0'  # the cascade
  with pytest.raises(checkpoints.CheckpointError, match="randomize='head', not 'init'"):
    evaluation.evaluate(tiny_config, workdir_copy)


def test_step_keys_are_fold_in_of_the_step_bit_for_bit():
  import jax
  import numpy as np
  from lsei_jax.training import trainer
  for rng in (jax.random.key(7), jax.random.PRNGKey(7), jax.random.key(7, impl='rbg')):
    # Within one block, across blocks, and in a run resumed at a step past the first block.
    for start, stop in ((3, 40), (0, 2 * trainer.KEY_BLOCK + 5), (trainer.KEY_BLOCK + 9, 1500)):
      key_of = trainer.step_keys(rng, start, stop)
      for step in (start, start + 14, stop - trainer.KEY_BLOCK, stop - 1):
        if step < start:
          continue
        want, got = jax.random.fold_in(rng, step), key_of(step)
        assert want.dtype == got.dtype
        assert np.array_equal(jax.random.normal(want, (5,)), jax.random.normal(got, (5,)))


def test_step_keys_compile_once_for_every_stage_length():
  import jax
  from lsei_jax.training import trainer
  rng = jax.random.key(3)
  trainer.step_keys(rng, 0, 7)
  before = trainer._fold_in_each._cache_size()
  for start, stop in ((0, 300), (5, 600), (0, 1500), (200, 200)):
    trainer.step_keys(rng, start, stop)
  assert trainer._fold_in_each._cache_size() == before  # no new shape: nothing compiled
