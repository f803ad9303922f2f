"""The invariance samples split by per-image reliance (issue 26; docs/method.md § "The
invariances as stages").

A classifier relies on an attribute for the images whose prediction flips with it
(reliance.flip_mask F [B, A]) and not for the others: for those, the attribute varying
under fixed h is one of the classifier's invariances. So the samples' attribute change is
read apart for the images with F = 1 ('where relied') and F = 0 ('where not relied'),
beside the aggregate that mixes the two."""
from __future__ import annotations

from typing import Sequence

import numpy as np

# Fewer relying images than this: the share where relied is reported but not judged (10
# images × 8 samples = 80 draws, a 5% share ± 2.4% standard error).
MIN_IMAGES = 10


def masked_share(x: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """x bool [n, B, A] (per sample of each image), mask bool [B, A] (which images count for
  each attribute) → (share of the counted images' n·images samples where x is True [A],
  NaN where no image counts; images [A] int)."""
  x, mask = np.asarray(x, bool), np.asarray(mask, bool)
  if x.shape[1:] != mask.shape:
    raise ValueError(f'samples {x.shape} must be [n, B, A] for the mask [B, A] {mask.shape}')
  images = mask.sum(0)
  hits = (x & mask[None]).sum((0, 1))
  with np.errstate(invalid='ignore', divide='ignore'):
    share = np.where(images > 0, hits / (x.shape[0] * images), np.nan)
  return share, images


def _num(x: float) -> float | None:
  return None if np.isnan(x) else float(x)


def summarise_by_reliance(flips: np.ndarray, names: Sequence[str], *, kept: np.ndarray,
                          changed: np.ndarray | None = None,
                          changed_latent: np.ndarray | None = None, change_max: float,
                          relied_on: Sequence[str] | None = None,
                          min_images: int = MIN_IMAGES) -> dict:
  """metrics.json 'invariance' entries of the samples split by flips [B, A] (F = 1: relied
  on for that image). kept bool [n, B]: sample labelled as its original; changed,
  changed_latent bool [n, B, A]: probe decision differs from D(E(x))'s (image / latent
  probes; None: not read).

  'attribute_change_where_relied' / '_where_not_relied' {a: {'images', 'label_kept',
  'change'}} (change with image probes only; null where no image), the same with suffix
  _latent {a: {'images', 'change'}}; 'relied_kept_per_image' (_latent): every attribute
  of relied_on (default: all; the pipeline passes those relied on over the whole split)
  that flips ≥ min_images (≥ 1) of the B images changes on ≤ change_max of their samples,
  'relied_per_image_judged' those attributes. A flip of any attribute moves a few
  borderline decisions: relied_on keeps those out."""
  flips = np.asarray(flips, bool)
  kept = np.broadcast_to(np.asarray(kept, bool)[..., None], kept.shape + (len(names),))
  counted = flips.sum(0) >= max(int(min_images), 1)
  judged = [a for a, k in zip(names, counted) if k and (relied_on is None or a in relied_on)]
  out = {'relied_per_image_min_images': int(min_images), 'relied_per_image_judged': judged}
  for suffix, ch in (('', changed), ('_latent', changed_latent)):
    if ch is None and suffix:
      continue
    for group, mask in (('where_relied', flips), ('where_not_relied', ~flips)):
      entry = {}
      if not suffix:
        share, images = masked_share(kept, mask)
        entry = {a: {'images': int(k), 'label_kept': _num(s)}
                 for a, k, s in zip(names, images, share)}
      if ch is not None:
        share, images = masked_share(ch, mask)
        for a, k, s in zip(names, images, share):
          entry.setdefault(a, {'images': int(k)})['change'] = _num(s)
      out[f'attribute_change_{group}{suffix}'] = entry
    if ch is not None:
      rel = out[f'attribute_change_where_relied{suffix}']
      out[f'relied_kept_per_image{suffix}'] = all(rel[a]['change'] <= change_max
                                                  for a in judged)
  return out
