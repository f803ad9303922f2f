"""Human-readable outputs: the paper's tables as text, image grids as PNG."""
from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw


def format_tables(m: dict) -> str:
  """Table 1 (percentages, as in the paper) and Table 2 (cosines) as plain text."""
  pct = lambda key: f'{100 * m[key]:6.2f}'
  lines = [
      f'Table 1 — {m.get("split", "test")}, {m.get("num_examples", "?")} images',
      f'  {"% change":>9} {"acc":>8} {"acc on ĥ":>9} {"agreement":>10}',
      f'  {pct("flip_all_change"):>9} {pct("accuracy"):>8} {pct("recon_accuracy"):>9} '
      f'{pct("agreement"):>10}',
      'Table 2 — cosine similarity of I(g) and I(c2)',
      f'  {"without reg":>12} {"with reg":>9}',
      f'  {_fmt(m.get("info_cosine_noreg")):>12} {_fmt(m.get("info_cosine")):>9}',
  ]
  return '\n'.join(lines)


def _fmt(x) -> str:
  return '—' if x is None else f'{x:.3f}'


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
    for j, t in enumerate(titles):
      draw.text(((pad + j * (w + pad)) * scale + 2, 2), t, fill=(0, 0, 0))
  img.save(path)
