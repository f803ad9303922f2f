"""Which classifier a workdir explains: trained here, given (a `ClassifierSplit` with its
fingerprint recorded in WORKDIR/classifier.json), or randomised for the sanity check."""
from __future__ import annotations

import dataclasses
import json
import os

import jax
import numpy as np

from lsei_jax import classifier_split, errors
from lsei_jax.classifier_split import ClassifierSplit
from lsei_jax.streams import stream
from lsei_jax.training import atomic, checkpoints, parallel
from lsei_jax.training import given as given_lib

GIVEN_FILE = 'classifier.json'  # WORKDIR/classifier.json: the given classifier's fingerprint
SANITY_MODES = ('auto', 'init', 'head')
SANITY_PROBE_IMAGES = 128  # training images the sanity check's random head is scaled on


def builtin_split(module, params) -> ClassifierSplit:
  """The config's own classifier (models.Classifier) with trained params, as a split."""
  return classifier_split.from_module(module, {'params': params})


def probe_images(image_size: int) -> np.ndarray:
  """A fixed batch [8, S, S, 3] in [0, 1] that fingerprints a classifier's function."""
  key = stream(0, 'classifier/fingerprint')
  return np.asarray(jax.random.uniform(key, (8, image_size, image_size, 3)))


def classifier_fingerprint(split: ClassifierSplit, image_size: int) -> str:
  """Fingerprint of a given classifier: its params and functions (training/given.py); its
  logits on `probe_images` are kept for the workdir's record, compared to a tolerance."""
  return given_lib.identify(split, probe_images(image_size))


def given_identity(split: ClassifierSplit, image_size: int) -> dict:
  """What downstream stages record about a given classifier (instead of a checkpoint)."""
  return {'given': classifier_fingerprint(split, image_size)}


def sanity_mode(sanity_cfg, given: bool) -> str:
  """How the sanity check randomises the classifier (config.sanity.randomize): 'init'
  re-initialises the config's own classifier; 'head' keeps the classifier's embedding and
  puts a random linear head on it (classifier_split.random_head: needs only the functions,
  so it is the one for a given classifier). 'auto' (default): 'init' for the built-in
  classifier, 'head' for a given one."""
  mode = sanity_cfg.get('randomize', 'auto')
  if mode not in SANITY_MODES:
    raise errors.UserError(f'config.sanity.randomize={mode!r}: must be one of '
                           f'{", ".join(map(repr, SANITY_MODES))}')
  if mode == 'init' and given:
    raise errors.UserError("config.sanity.randomize='init' re-initialises the config's own "
                           "classifier, which a given classifier is not: use 'head' (a random "
                           "head on its embedding) or 'auto'")
  return ('head' if given else 'init') if mode == 'auto' else mode


def sanity_classifier(seed: int, split: ClassifierSplit, train_images: np.ndarray
                      ) -> ClassifierSplit:
  """The sanity check's random-head classifier of `split`: a pure function of the seed
  (stream 'sanity/classifier'), the classifier and the first SANITY_PROBE_IMAGES training
  images (uint8 [N, H, W, 3]), on which its logits are scaled like the real head's."""
  probe = np.asarray(train_images[:SANITY_PROBE_IMAGES], np.float32) / 255.0
  return classifier_split.random_head(split, stream(seed, 'sanity/classifier'), probe)


def check_sanity_workdir(sdir: str, mode: str) -> None:
  """WORKDIR/sanity holds the run of one sanity_mode: a re-initialised classifier
  checkpoint ('init') or a random head's record ('head'), never the other."""
  other = {'init': os.path.join(sdir, GIVEN_FILE), 'head': os.path.join(sdir, 'classifier')}
  if os.path.exists(other[mode]):
    was = 'head' if mode == 'init' else 'init'
    raise checkpoints.CheckpointError(
        f"{sdir} holds the sanity check made with config.sanity.randomize='{was}', not "
        f"'{mode}': set it back, or move {sdir} away and rerun with --stages=sanity")


def resolve_classifier(config, classifier: ClassifierSplit | None, mesh
                       ) -> ClassifierSplit | None:
  """`classifier`, or the one config.classifier.source names, or None (train one); its
  params replicated on the mesh (a restored checkpoint may sit on one device)."""
  if classifier is None:
    classifier = classifier_split.load_source(config)
    if classifier is None:
      return None
  if not isinstance(classifier, ClassifierSplit):
    raise TypeError(f'classifier must be a lsei_jax.ClassifierSplit, got '
                    f'{type(classifier).__name__}')
  return dataclasses.replace(classifier, params=parallel.replicate(classifier.params, mesh))


def _given_record(workdir: str) -> dict | None:
  path = os.path.join(workdir, GIVEN_FILE)
  return json.load(open(path)) if os.path.exists(path) else None


def check_classifier_workdir(workdir: str, given: dict | None) -> None:
  """A workdir explains one classifier: the trained one or a given one, never a mix."""
  record = _given_record(workdir)
  trained = os.path.isdir(os.path.join(workdir, 'classifier'))
  if given is not None and trained:
    raise checkpoints.CheckpointError(
        f'{workdir} holds a classifier trained by the pipeline; explain a given classifier '
        f'in a new workdir')
  if given is None and record is not None:
    raise checkpoints.CheckpointError(
        f'{workdir} explains a given classifier (fingerprint {record["given"]}); pass it '
        f'again (classifier=… or --config.classifier.source=…)')
  if given is not None and record is not None:
    given_lib.check_record(workdir, record, given)  # fingerprint, then logits to a tolerance


def record_given(workdir: str, given: dict, d: int, num_classes: int, name: str) -> None:
  """WORKDIR/classifier.json: the given classifier's fingerprint and shape."""
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    atomic.write_json(os.path.join(workdir, GIVEN_FILE),
                      dict(given, embed_dim=d, num_classes=num_classes, cut=name,
                           **given_lib.record_fields(given)))


def check_renamed_stages(workdir: str) -> None:
  """Workdirs of lsei_jax < 0.2 named the concept stage 'dvae': refused with the fix."""
  old, new = os.path.join(workdir, 'dvae'), os.path.join(workdir, 'concepts')
  if os.path.isdir(old) and not os.path.isdir(new):
    raise checkpoints.CheckpointError(
        f"{old} was written by lsei_jax < 0.2, whose concept-learner stage was named 'dvae' "
        f"(config.dvae); it is now 'concepts' (config.concepts) and its checkpoints record the "
        f"new names: move {old} away and retrain with --stages=concepts (the classifier is "
        f"kept), or use a new workdir")
