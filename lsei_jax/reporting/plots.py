"""Figures as PNG: the Fig. 3 image grid, per-bit bars, bias-report bars with intervals."""
from __future__ import annotations

from typing import Sequence

import matplotlib
matplotlib.use('Agg')  # files only, never a window
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image, ImageDraw, ImageFont  # noqa: E402


def save_grid(path: str, columns: Sequence[np.ndarray], titles: Sequence[str] = (),
              scale: int = 4) -> None:
  """Writes a PNG whose columns are image batches [k, H, W, 3] in [0, 1], one row per sample."""
  cols = [np.clip(np.asarray(c, np.float32), 0, 1) for c in columns]
  k, h, w, _ = cols[0].shape
  pad, head = 2, 14 if titles else 0
  canvas = np.ones((head + k * (h + pad) + pad, len(cols) * (w + pad) + pad, 3), np.float32)
  for j, col in enumerate(cols):
    for i in range(k):
      y, x = head + pad + i * (h + pad), pad + j * (w + pad)
      canvas[y:y + h, x:x + w] = col[i]
  img = Image.fromarray((canvas * 255).astype(np.uint8))
  img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
  if titles:
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=max(10, 3 * scale))
    for j, t in enumerate(titles):
      draw.text(((pad + j * (w + pad)) * scale + 2, 2), t, fill=(0, 0, 0), font=font)
  img.save(path)


def per_bit_bars(path: str, per_bit: dict) -> None:
  """Bars of the fraction of predictions each single-bit flip changes, per predicted class."""
  per_class = np.asarray(per_bit['per_class'])                    # [C, K]
  c, k = per_class.shape
  fig, ax = plt.subplots(figsize=(max(6, 0.35 * k + 2), 3.2), dpi=110)
  width = 0.8 / c
  for i in range(c):
    ax.bar(np.arange(k) + (i - (c - 1) / 2) * width, per_class[i], width,
           label=f'predicted class {i}')
  ax.set_xticks(np.arange(k))
  ax.set_xlabel('latent bit')
  ax.set_ylabel('fraction of predictions changed')
  ax.set_ylim(0, 1)
  ax.set_title(f'Single-bit interventions ({100 * per_bit["single_bit_change"]:.1f}% of '
               'samples have a decisive bit)')
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)


def bias_bars(path: str, report: list[dict], intervention: str = 'flip all bits') -> None:
  """Horizontal bars of each attribute's shift with its confidence interval; task in grey."""
  rows = list(reversed(report))                                    # largest at the top
  shift = np.array([r['shift'] for r in rows])
  err = np.array([[r['shift'] - r['ci_low'] for r in rows], [r['ci_high'] - r['shift'] for r in rows]])
  flagged = lambda r: r.get('flagged', r['ci_low'] > 0 or r['ci_high'] < 0)
  colors = ['0.85' if not r.get('readable', True) else
            ('0.6' if r['is_task'] and not flagged(r) else
             ('tab:red' if flagged(r) else 'tab:blue')) for r in rows]
  fig, ax = plt.subplots(figsize=(6, 0.4 * len(rows) + 1.4), dpi=110)
  ax.barh(np.arange(len(rows)), shift, xerr=err, color=colors, capsize=3)
  ax.set_yticks(np.arange(len(rows)))
  ax.set_yticklabels([r['attribute'] + (' (task)' if r['is_task'] else '')
                      + ('' if r.get('readable', True) else ' (not readable)') for r in rows])
  ax.axvline(0, color='k', lw=0.8)
  ax.set_xlabel('change of P(prediction = class) with the attribute (test split)')
  ax.set_title('Bias report; red: relied on', fontsize=10)
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)


def frequency_bars(path, hist: dict, kind: str = '') -> None:
  """Histogram of log10 unit activation frequencies (concept_metrics.frequency_histogram),
  units never active as a separate bar at the left."""
  edges, counts = np.asarray(hist['log10_edges']), np.asarray(hist['counts'])
  fig, ax = plt.subplots(figsize=(6, 2.8), dpi=110)
  width = edges[1] - edges[0] if len(edges) > 1 else 0.1
  ax.bar(edges[:-1], counts, width=width, align='edge', color='tab:blue', edgecolor='w')
  ax.bar([edges[0] - 1.5 * width], [hist['never']], width=width, color='tab:red')
  ax.set_xlabel('log10 fraction of test samples a unit is on (red: never on)')
  ax.set_ylabel('units')
  ax.set_title(f'Activation frequencies {kind}'.strip(), fontsize=10)
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)


def sweep_grid(path: str, original: np.ndarray, sweeps: np.ndarray, names: Sequence[str],
               pred: np.ndarray, original_pred: np.ndarray, image_pred: np.ndarray | None = None,
               scale: int = 4) -> None:
  """The factor sweeps as a PNG: a row per (image, attribute), the original (uint8
  [B, H, W, 3]) then the S sweep images (uint8 [B, A, S, H, W, 3]); under each image the
  head's label c2(h') (pred [B, A, S]; original_pred [B] for the original) and, given
  image_pred [B, A, S], the classifier's label of the decoded image after a slash."""
  b, num_a, steps, h, w, _ = sweeps.shape
  font = ImageFont.load_default(size=max(10, 2 * scale))
  # The left margin fits the longest attribute name (CelebA's run to 19 characters).
  pad, head, foot = 2, 10, 9
  left = max(28, int(np.ceil(max(font.getlength(n) for n in names[:num_a]) / scale)) + 3)
  rows = b * num_a
  canvas = np.full((head + rows * (h + foot + pad) + pad, left + (steps + 1) * (w + pad) + pad,
                    3), 255, np.uint8)
  labels = []   # (x, y, text) in unscaled pixels
  for i in range(b):
    for a in range(num_a):
      y = head + pad + (i * num_a + a) * (h + foot + pad)
      cells = [(original[i], str(int(original_pred[i])))] + [
          (sweeps[i, a, s], str(int(pred[i, a, s])) +
           ('' if image_pred is None else f'/{int(image_pred[i, a, s])}'))
          for s in range(steps)]
      for j, (img, text) in enumerate(cells):
        x = left + pad + j * (w + pad)
        canvas[y:y + h, x:x + w] = img
        labels.append((x, y + h, text))
      labels.append((1, y + h // 2 - 3, names[a]))
  img = Image.fromarray(canvas).resize((canvas.shape[1] * scale, canvas.shape[0] * scale),
                                       Image.NEAREST)
  draw = ImageDraw.Draw(img)
  titles = ['original'] + [f't={s / max(steps - 1, 1):.2f}' for s in range(steps)]
  for j, t in enumerate(titles):
    draw.text(((left + pad + j * (w + pad)) * scale + 2, 2), t, fill=(0, 0, 0), font=font)
  for x, y, t in labels:
    draw.text((x * scale + 2, y * scale), t, fill=(0, 0, 0), font=font)
  img.save(path)
