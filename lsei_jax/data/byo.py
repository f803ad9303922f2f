"""Bring your own data: NumPy arrays (an .npz file or arrays registered in Python) or an
image folder with a CSV of binary attributes. Both become a `Dataset`; the uint8 images of
an image folder, an .npz and a directory of .npy files stay on disk (rows.Rows), read per
batch; registered arrays stay where the caller has them.

Splits: an optional per-example split ('train', 'validation', 'test') — the `split` array
of the .npz / `split` column of the CSV — or else a deterministic hold-out of
`test_fraction` (and `validation_fraction`) of the examples, drawn from `seed`.
"""
from __future__ import annotations

import concurrent.futures
import csv
import itertools
import os
from typing import Any, Sequence

import numpy as np
from PIL import Image

from lsei_jax.data import rows
from lsei_jax.errors import UserError

SPLITS = ('train', 'validation', 'test')
CSV_NAME = 'attributes.csv'
_ARRAYS: dict[str, dict[str, Any]] = {}
_VERSIONS = itertools.count(1)  # each registration's number: data/fingerprint.py's cache key


# ------------------------------------------------------------------ validation
def check_images(images: np.ndarray, what: str) -> np.ndarray:
  """uint8 [N,H,W,3] (float input in [0, 1] is scaled); clear errors otherwise."""
  images = np.asarray(images)
  check_images_layout(images, what)
  if images.ndim != 4 or images.shape[-1] != 3:
    raise ValueError(f'{what}: images must be [N, H, W, 3] RGB, got shape {images.shape}; '
                     'convert greyscale with np.repeat(x[..., None], 3, -1) and drop alpha')
  if images.dtype == np.uint8:
    return images
  if np.issubdtype(images.dtype, np.floating):
    finite = np.isfinite(images)
    if not finite.all():
      i = int(np.argwhere(~finite)[0][0])
      raise ValueError(f'{what}: {int((~finite).sum())} pixel value(s) are NaN or infinite '
                       f'(first in image #{i}); fix or drop those images')
    if images.size and (images.min() < 0 or images.max() > 1):
      raise ValueError(f'{what}: float images must lie in [0, 1], got '
                       f'[{images.min():.3g}, {images.max():.3g}]; or pass uint8')
    return np.round(images * 255).astype(np.uint8)
  raise ValueError(f'{what}: images must be uint8 or float in [0, 1], got {images.dtype}')


def to_bool(values: np.ndarray, names: Sequence[str], what: str) -> np.ndarray:
  """Binary attributes given as bool, {0, 1} or {-1, +1} → bool [N, A]."""
  values = np.asarray(values)
  if values.dtype == bool:
    return values
  for j, name in enumerate(names):
    col = values[:, j]
    seen = set(np.unique(col).tolist())
    if not (seen <= {0, 1} or seen <= {-1, 1}):
      bad = sorted(seen - {-1, 0, 1})[:3] or sorted(seen)
      raise ValueError(f'{what}: attribute {name!r} is not binary (values {bad}); use 0/1 '
                       'or -1/+1 in each column')
  return values > 0


def resize_all(images: Sequence[np.ndarray], image_size: int, resize: bool,
               names: Sequence[str], what: str) -> np.ndarray:
  """Images of any size → uint8 [N, S, S, 3]: centre square crop + resize when `resize`,
  else an error naming the images that are not S×S."""
  wrong = [(n, im.shape[:2]) for n, im in zip(names, images)
           if im.shape[:2] != (image_size, image_size)]
  if wrong and not resize:
    shown = ', '.join(f'{n} {h}×{w}' for n, (h, w) in wrong[:3])
    raise ValueError(f'{what}: {len(wrong)} image(s) are not {image_size}×{image_size} '
                     f'(e.g. {shown}); set config.data.resize=True to centre-crop and resize '
                     'them, or config.data.image_size to their size')
  out = np.empty((len(images), image_size, image_size, 3), np.uint8)
  for i, im in enumerate(images):
    out[i] = im if im.shape[:2] == (image_size, image_size) else _crop_resize(im, image_size)
  return out


def _crop_resize(image: np.ndarray, size: int) -> np.ndarray:
  h, w = image.shape[:2]
  s = min(h, w)
  box = ((w - s) / 2, (h - s) / 2, (w + s) / 2, (h + s) / 2)
  return np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR, box=box))


def labels_for(task: str, names: Sequence[str], attributes: np.ndarray,
               labels: np.ndarray | None, what: str) -> np.ndarray:
  """int32 [N]: the task attribute's column, or the given labels when task names none."""
  if task in names:
    col = attributes[:, list(names).index(task)].astype(np.int32)
    if labels is not None and not np.array_equal(np.asarray(labels).astype(np.int32), col):
      raise ValueError(f'{what}: labels disagree with attribute {task!r}; drop one of them')
    return col
  if labels is None:
    raise ValueError(f'{what}: unknown task attribute {task!r}; known: {", ".join(names)}')
  labels = np.asarray(labels)
  if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0:
    raise ValueError(f'{what}: labels must be non-negative integers [N], got '
                     f'{labels.dtype} {labels.shape}')
  return labels.astype(np.int32)


def select_split(n: int, split: str, split_column: np.ndarray | None, data_config,
                 what: str) -> np.ndarray:
  """Indices (int64) of `split` among n examples."""
  if split not in SPLITS:
    raise ValueError(f'unknown split {split!r} for {what}; known: {", ".join(SPLITS)}')
  if split_column is not None:
    split_column = np.asarray(split_column).astype(str)
    unknown = sorted(set(split_column.tolist()) - set(SPLITS))
    if unknown:
      raise ValueError(f'{what}: unknown split value(s) {unknown[:3]}; use '
                       f'{", ".join(SPLITS)}')
    idx = np.flatnonzero(split_column == split)
  else:
    test_f = float(data_config.get('test_fraction', 0.2))
    val_f = float(data_config.get('validation_fraction', 0.0))
    if not (0 <= test_f and 0 <= val_f and test_f + val_f < 1):
      raise ValueError('config.data.test_fraction + validation_fraction must be in [0, 1)')
    perm = np.random.default_rng([int(data_config.get('seed', 0)), 7]).permutation(n)
    n_test, n_val = int(round(n * test_f)), int(round(n * val_f))
    parts = {'test': perm[:n_test], 'validation': perm[n_test:n_test + n_val],
             'train': perm[n_test + n_val:]}
    idx = np.sort(parts[split])
  if len(idx) == 0:
    raise ValueError(f'{what}: split {split!r} is empty; add a {split!r} split or set '
                     'config.data.test_fraction / validation_fraction')
  return idx


def check_names(names: Sequence[str], what: str) -> None:
  """Attribute names are the report's row keys: each must name one column."""
  seen: dict[str, int] = {}
  for j, name in enumerate(names):
    if name in seen:
      raise UserError(f'{what}: attribute name {name!r} is given twice (columns {seen[name]} '
                      f'and {j}); give each attribute column its own name')
    seen[name] = j


def check_arrays(images, attributes, names: Sequence[str], labels, split, what: str) -> None:
  """Every array of one dataset agrees on N, before anything is loaded from them: images
  NHWC [N, H, W, 3], attributes [N, A] with A distinct names, labels and split [N]."""
  check_images_layout(images, what)
  n = int(np.shape(images)[0])
  check_names(names, what)
  if np.ndim(attributes) != 2 or np.shape(attributes) != (n, len(names)):
    raise UserError(f'{what}: attributes must be [N={n}, A={len(names)}] (one column per '
                    f'attribute name), got {tuple(np.shape(attributes))}')
  for key, value in (('labels', labels), ('split', split)):
    if value is not None and np.shape(value) != (n,):
      raise UserError(f'{what}: {key} must be [N={n}], one per image, got '
                      f'{list(np.shape(value))}; give one {key[:-1] if key == "labels" else key}'
                      f' value for each image, in the same order')


def check_explain_data(data: dict) -> None:
  """`lsei_jax.explain`'s data dict: its keys, then `check_arrays`."""
  what = 'explain data'
  if not hasattr(data, 'get'):
    raise UserError(f'{what} must be a dict of arrays, got {type(data).__name__}')
  missing = [k for k in ('images', 'attributes', 'attribute_names') if data.get(k) is None]
  unknown = sorted(set(data) - {'images', 'attributes', 'attribute_names', 'labels', 'split',
                                'task'})
  if missing or unknown:
    raise UserError(f'{what}: ' + '; '.join(
        ([f'missing {", ".join(missing)}'] if missing else []) +
        ([f'unknown key(s) {", ".join(map(repr, unknown))}'] if unknown else [])) +
        '; expected images [N,H,W,3], attributes [N,A], attribute_names [A] (+ labels [N], '
        'split [N], task)')
  names = [str(n) for n in np.asarray(data['attribute_names']).reshape(-1)]
  check_arrays(np.asarray(data['images']), np.asarray(data['attributes']), names,
               data.get('labels'), data.get('split'), what)


def check_images_layout(images, what: str) -> None:
  """The layout part of `check_images`, on the shape alone (no pixel is read)."""
  shape = np.shape(images)
  if len(shape) == 4 and shape[1] == 3 and shape[-1] != 3:
    n, _, h, w = shape
    raise UserError(f'{what}: images must be NHWC [N, H, W, 3], got [N, 3, H, W] = '
                    f'{list(shape)}: transpose them with np.transpose(images, (0, 2, 3, 1)) '
                    f'to [{n}, {h}, {w}, 3]')
  if len(shape) != 4 or shape[-1] != 3:
    raise UserError(f'{what}: images must be [N, H, W, 3] RGB, got shape {tuple(shape)}; '
                    'convert greyscale with np.repeat(x[..., None], 3, -1) and drop alpha')


# ------------------------------------------------------------------ arrays
def register_arrays(key: str, images: np.ndarray, attributes: np.ndarray,
                    attribute_names: Sequence[str], labels: np.ndarray | None = None,
                    split: Sequence[str] | None = None) -> None:
  """Makes arrays loadable as config.data.name='numpy', config.data.arrays=key (this
  process only; save an .npz with the same keys for the command line)."""
  _ARRAYS[key] = dict(images=images, attributes=attributes,
                      attribute_names=np.asarray(attribute_names), labels=labels, split=split,
                      version=next(_VERSIONS))


def registered_version(key: str) -> int | None:
  """A number that changes whenever arrays are registered again under `key` (None if none)."""
  return _ARRAYS.get(key, {}).get('version')


def save_npz(path: str, images, attributes, attribute_names, labels=None, split=None) -> None:
  """Writes arrays in the layout config.data.name='numpy' reads from config.data.path."""
  extra = {k: np.asarray(v) for k, v in (('labels', labels), ('split', split)) if v is not None}
  np.savez(path, images=images, attributes=attributes,
           attribute_names=np.asarray(attribute_names), **extra)


def load_arrays(data_config, split: str):
  """(images, labels, attributes, names) of `split` from registered arrays or an .npz."""
  key = data_config.get('arrays', '')
  if key:
    if key not in _ARRAYS:
      raise ValueError(f'no arrays registered as {key!r} (lsei_jax.data.byo.register_arrays); '
                       f'registered: {", ".join(_ARRAYS) or "none"}')
    arrays, what = _ARRAYS[key], f'arrays {key!r}'
  else:
    path = data_config.get('path', '')
    if not path:
      raise ValueError("config.data.path must name an .npz file for data.name='numpy' "
                       '(or set config.data.arrays to a registered key)')
    if os.path.isdir(path):
      arrays = _npy_dir(path)
    elif not os.path.isfile(path):
      raise FileNotFoundError(f'no .npz file or directory of .npy files at '
                              f'config.data.path={path!r}')
    else:
      arrays = _npz(path, rows.spill_dir_of(data_config))
    what = path
  missing = [k for k in ('images', 'attributes', 'attribute_names') if arrays.get(k) is None]
  if missing:
    raise ValueError(f'{what}: missing array(s) {", ".join(missing)}; expected images '
                     '[N,H,W,3], attributes [N,A], attribute_names [A] (+ labels, split)')
  names = tuple(str(n) for n in np.asarray(arrays['attribute_names']).reshape(-1))
  images = arrays['images']
  check_arrays(images, arrays['attributes'], names, arrays.get('labels'), arrays.get('split'),
               what)   # shapes only: an on-disk array is not read
  on_disk = isinstance(images, rows.Rows) and images.dtype == np.uint8
  if on_disk:   # read by rows, never whole; uint8 needs no check of its values
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f'{what}: images must be [N, H, W, 3] RGB, got shape {images.shape}')
  else:
    images = check_images(np.asarray(images), what)
  attributes = np.asarray(arrays['attributes'])
  labels = arrays.get('labels')
  if attributes.ndim != 2 or attributes.shape != (len(images), len(names)):
    raise ValueError(f'{what}: attributes must be [N={len(images)}, A={len(names)}] '
                     f'(one column per attribute name), got {attributes.shape}')
  if labels is not None and np.shape(labels) != (len(images),):
    raise ValueError(f'{what}: labels must be [N={len(images)}], got {np.shape(labels)}')
  idx = select_split(len(images), split, arrays.get('split'), data_config, what)
  size = int(data_config.image_size)
  attributes = to_bool(attributes, names, what)[idx]
  labels = labels_for(data_config.task, names, attributes,
                      None if labels is None else np.asarray(labels)[idx], what)
  images = images.subset(idx) if on_disk else images[idx]
  if images.shape[1:3] != (size, size):
    images = resize_all(np.asarray(images), size, bool(data_config.get('resize', False)),
                        [f'#{i}' for i in idx], what)
  return images, labels, attributes, names


NPY_NAMES = ('images', 'attributes', 'attribute_names', 'labels', 'split')


def _npz(path: str, spill_dir: str | None) -> dict[str, Any]:
  """The arrays of an .npz; uint8 images stay on disk, read by rows (rows.npz_rows: in place,
  or inflated into an unlinked temporary file under `spill_dir`, config.data.cache_dir)."""
  with np.load(path, allow_pickle=False) as z:
    arrays: dict[str, Any] = {k: z[k] for k in z.files if k != 'images'}
    if 'images' in z.files:
      images = rows.npz_rows(path, 'images', spill_dir)
      arrays['images'] = z['images'] if images is None else images   # float: checked whole
  return arrays


def _npy_dir(path: str) -> dict[str, Any]:
  """The arrays of a directory of NAME.npy files (save_npy_dir); images.npy stays on disk
  and is read by rows (rows.Rows), so a split larger than memory can be trained on."""
  found = {k: os.path.join(path, f'{k}.npy') for k in NPY_NAMES
           if os.path.isfile(os.path.join(path, f'{k}.npy'))}
  if 'images' not in found:
    raise FileNotFoundError(f'{path}: no images.npy; a directory of .npy files needs '
                            f'images.npy, attributes.npy, attribute_names.npy '
                            f'(+ labels.npy, split.npy): see byo.save_npy_dir')
  arrays: dict[str, Any] = {k: np.load(p, allow_pickle=False) for k, p in found.items()
                            if k != 'images'}
  arrays['images'] = rows.Rows.open(found['images'])
  return arrays


def save_npy_dir(path: str, images, attributes, attribute_names, labels=None,
                 split=None) -> None:
  """Writes arrays as a directory of .npy files that config.data.name='numpy' reads from
  config.data.path with the images on disk (read per batch, not loaded whole)."""
  os.makedirs(path, exist_ok=True)
  for k, v in (('images', images), ('attributes', attributes),
               ('attribute_names', np.asarray(attribute_names)), ('labels', labels),
               ('split', split)):
    if v is not None:
      np.save(os.path.join(path, f'{k}.npy'), np.asarray(v), allow_pickle=False)


# ------------------------------------------------------------------ folder + CSV
def read_csv(path: str) -> tuple[list[str], tuple[str, ...], np.ndarray, np.ndarray | None]:
  """(file names, attribute names, int values [N, A], split column or None)."""
  with open(path, newline='') as f:
    rows = [r for r in csv.reader(f) if r and any(c.strip() for c in r)]
  if not rows:
    raise ValueError(f'{path} is empty; expected a header filename,attr1,attr2,… and one '
                     'row per image')
  header = [h.strip() for h in rows[0]]
  if header[0].lower() not in ('filename', 'file', 'image', 'path') or len(header) < 2:
    raise ValueError(f'{path}: the header must be filename,attr1,attr2,… got '
                     f'{",".join(header[:4])}')
  split_col = header.index('split') if 'split' in header else None
  attr_cols = [j for j in range(1, len(header)) if j != split_col]
  files, values, splits = [], [], []
  for line, row in enumerate(rows[1:], start=2):
    if len(row) != len(header):
      raise ValueError(f'{path}:{line}: {len(row)} fields, the header has {len(header)}')
    files.append(row[0].strip())
    try:
      values.append([int(float(row[j])) if float(row[j]).is_integer() else float(row[j])
                     for j in attr_cols])
    except ValueError:
      raise ValueError(f'{path}:{line}: attribute values must be 0/1 or -1/+1, got '
                       f'{[row[j] for j in attr_cols][:5]}') from None
    if split_col is not None:
      splits.append(row[split_col].strip())
  dup = sorted({f for f in files if files.count(f) > 1}) if len(set(files)) < len(files) else []
  if dup:
    raise ValueError(f'{path}: file(s) listed twice: {", ".join(dup[:3])}')
  arr = np.array(values, dtype=float).reshape(len(files), len(attr_cols))
  return (files, tuple(header[j] for j in attr_cols), arr,
          np.array(splits) if split_col is not None else None)


def _read_image(path: str) -> np.ndarray:
  """uint8 [H, W, 3]; 16-bit greyscale scaled to 8 bits (PIL's convert('RGB') clips it)."""
  try:
    with Image.open(path) as im:
      if im.mode in ('I;16', 'I;16L', 'I;16B', 'I;16N', 'I'):
        grey = np.asarray(im).astype(np.int64)
        if grey.size and (grey.min() < 0 or grey.max() > 65535):
          raise ValueError(f'{path}: integer image with values outside [0, 65535] '
                           f'(mode {im.mode}); save it as 8- or 16-bit PNG')
        grey = np.round(grey / 257.0).astype(np.uint8)  # 65535 → 255
        return np.repeat(grey[..., None], 3, -1)
      if im.mode == 'F':
        raise ValueError(f'{path}: floating-point image (mode F) is not supported; save '
                         'it as an 8- or 16-bit PNG')
      return np.asarray(im.convert('RGB'))  # greyscale / palette / RGBA → RGB
  except (OSError, SyntaxError) as e:  # PIL: truncated or not an image
    raise ValueError(f'cannot read image {path}: {e}; re-export it or remove it from the '
                     'CSV') from e


def load_folder(data_config, split: str):
  """(images, labels, attributes, names) of `split` from config.data.path + its CSV."""
  root = data_config.get('path', '')
  if not root or not os.path.isdir(root):
    raise FileNotFoundError(f'image folder config.data.path={root!r} does not exist; point '
                            'it at a folder of images with an attributes CSV')
  if not os.listdir(root):
    raise FileNotFoundError(f'image folder {root} is empty; put the images and '
                            f'{CSV_NAME} (filename,attr1,…) there')
  csv_path = data_config.get('csv', '') or os.path.join(root, CSV_NAME)
  if not os.path.isfile(csv_path):
    raise FileNotFoundError(f'no attribute CSV at {csv_path}; write filename,attr1,… rows '
                            'there or set config.data.csv')
  files, names, values, split_column = read_csv(csv_path)
  if not files:
    raise ValueError(f'{csv_path} lists no images')
  bad = ~np.isin(values, (-1, 0, 1))
  if bad.any():
    r, c = np.argwhere(bad)[0]
    raise ValueError(f'{csv_path}: attribute {names[c]!r} of {files[r]} is {values[r, c]:g}, '
                     'not binary; use 0/1 or -1/+1')
  attributes = to_bool(values.astype(np.int64), names, csv_path)
  paths = [os.path.join(root, f) for f in files]
  missing = [f for f, p in zip(files, paths) if not os.path.isfile(p)]
  if missing:
    raise FileNotFoundError(f'{len(missing)} image(s) listed in {csv_path} are not in {root} '
                            f'(e.g. {", ".join(missing[:3])}); fix the CSV or add the files')
  idx = select_split(len(files), split, split_column, data_config, csv_path)
  labels = labels_for(data_config.task, names, attributes[idx], None, csv_path)
  workers = int(data_config.get('workers', -1))
  workers = (os.cpu_count() or 1) if workers < 0 else max(workers, 1)
  size, resize = int(data_config.image_size), bool(data_config.get('resize', False))

  def decoded():   # chunk by chunk: the split is never whole in memory
    # PIL releases the GIL while decoding, so threads use every core without pickling.
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
      for s in range(0, len(idx), DECODE_CHUNK):
        part = idx[s:s + DECODE_CHUNK]
        yield resize_all(list(pool.map(_read_image, [paths[i] for i in part])), size, resize,
                         [files[i] for i in part], csv_path)
  images = rows.spill(decoded(), (len(idx), size, size, 3), np.uint8,
                      rows.spill_dir_of(data_config))
  return images, labels, attributes[idx], names


# Images decoded (and held) at a time while a folder is read into its on-disk split.
DECODE_CHUNK = 1024
