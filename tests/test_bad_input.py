"Bad input: every public loader meets missing, empty, corrupt, mis-shaped and out-of-range data with a `BioDataError` naming the file and the fix; fuzzed readers; killed writers leave no truncated file."
import os, signal, subprocess, sys, textwrap, time
from pathlib import Path
import numpy as np, pandas as pd, pytest, tifffile
from hypothesis import given, settings, strategies as st, HealthCheck
from biofastai.core import BioDataError
from biofastai.io import read_stack, read_image, read_mask, write_tiff, read_table, _to_tcyx, _default_axes
from biofastai.channels import load_channels, resolve_codes, RecipeBook, Merge, LoadChannels
from biofastai.cellseg import cellseg_dls
from biofastai.rescunet import rescunet_items
from biofastai.spines import read_spines, spines_items
from biofastai.spots import spots_items
from biofastai.nextframe import nextframe_items
from biofastai.ngff import read_ngff, read_tiff_lazy, read_lazy, write_ngff, predict_large
from torch import nn

# ---- files -------------------------------------------------------------------------------------------------------------
def img(h=32, w=32, seed=0, c=None):
    "A 16-bit image with structure, (H,W) or (C,H,W)."
    x = np.random.default_rng(seed).integers(100, 4000, (h, w) if c is None else (c, h, w))
    return x.astype(np.uint16)

def mask(h=32, w=32, value=1):
    m = np.zeros((h, w), np.uint8); m[8:20, 10:22] = value
    return m

def truncated(fn:Path, x=None) -> Path:
    "A TIFF cut in half, as an interrupted copy leaves it."
    write_tiff(fn, img(128, 128) if x is None else x)
    b = fn.read_bytes(); fn.write_bytes(b[:len(b)//2])
    return fn

def zero_bytes(fn:Path) -> Path: fn.parent.mkdir(parents=True, exist_ok=True); fn.write_bytes(b''); return fn
def garbage(fn:Path) -> Path: fn.parent.mkdir(parents=True, exist_ok=True); fn.write_bytes(np.random.default_rng(0).bytes(3000)); return fn
def npy(fn:Path, x) -> Path: fn.parent.mkdir(parents=True, exist_ok=True); np.save(fn, x); return fn

# ---- cases: name -> builder(tmp) returning (call, culprit); `culprit` must appear in the message ---------------------------
def _io(reader):
    "Cases common to `read_stack`, `read_image` and `read_mask`."
    nan = np.ones((16, 16), np.float32); nan[3, 4] = np.nan
    inf = np.ones((16, 16), np.float32); inf[0, 0] = np.inf
    def multi_series(t):
        with tifffile.TiffWriter(t/'two.tif') as w: w.write(img()); w.write(img(20, 20))
        return t/'two.tif'
    def png_cut(t):
        import imageio.v3 as iio
        iio.imwrite(t/'cut.png', img(64, 64).astype(np.uint8)); b = (t/'cut.png').read_bytes(); (t/'cut.png').write_bytes(b[:len(b)//2])
        return t/'cut.png'
    files = {
        'missing-path': lambda t: t/'nope.tif',
        'folder-not-file': lambda t: (t/'adir.tif').mkdir() or t/'adir.tif',
        'zero-byte-tif': lambda t: zero_bytes(t/'zero.tif'),
        'zero-byte-png': lambda t: zero_bytes(t/'zero.png'),
        'zero-byte-npy': lambda t: zero_bytes(t/'zero.npy'),
        'random-bytes-tif': lambda t: garbage(t/'noise.tif'),
        'random-bytes-npy': lambda t: garbage(t/'noise.npy'),
        'truncated-tif': lambda t: truncated(t/'half.tif'),
        'truncated-png': png_cut,
        'wrong-extension': lambda t: (t/'notes.txt').write_text('hello') and t/'notes.txt',
        '6d-array': lambda t: npy(t/'six.npy', np.zeros((2, 2, 2, 2, 4, 4), np.uint8)),
        '1d-array': lambda t: npy(t/'line.npy', np.arange(10)),
        'empty-array': lambda t: npy(t/'empty.npy', np.zeros((0, 5), np.uint8)),
        'nan-pixels': lambda t: npy(t/'nan.npy', nan),
        'inf-pixels': lambda t: write_tiff(t/'inf.tif', inf),
        'pickled-object-array': lambda t: (np.save(t/'obj.npy', np.array([{'a': 1}], dtype=object), allow_pickle=True), t/'obj.npy')[1],
        'two-image-series': multi_series,
    }
    cases = {k: (lambda f: lambda t: (lambda fn: (lambda: reader(fn), Path(fn).name))(f(t)))(f) for k, f in files.items()}
    if reader is read_image: cases['stack-for-image'] = lambda t: (lambda fn: (lambda: read_image(fn), 'stack.tif'))(write_tiff(t/'stack.tif', img(c=5), axes='TYX'))
    if reader is read_mask:
        cases['rgb-mask'] = lambda t: (lambda fn: (lambda: read_mask(fn), 'rgb.npy'))(npy(t/'rgb.npy', np.zeros((16, 16, 3), np.uint8)))
        cases['probability-mask'] = lambda t: (lambda fn: (lambda: read_mask(fn), 'prob.tif'))(write_tiff(t/'prob.tif', np.full((16, 16), 0.7, np.float32)))
    return cases

def _edit(root, edit:dict, axes=lambda v: None):
    "Change the good dataset at `root`: per relative path, None deletes, a DataFrame is written as CSV, a callable edits the file, an array is written as TIFF."
    for rel, v in edit.items():
        fn = root/rel
        if v is None: fn.unlink()
        elif isinstance(v, pd.DataFrame): v.to_csv(fn, index=False)
        elif callable(v): v(fn)
        else: write_tiff(fn, v, axes=axes(v))
    return root

def cellseg_root(t, n=3, **edit):
    "A cellseg folder (images/, masks/) of `n` good samples, then `edit` (name -> array or builder) applied."
    for i in range(n):
        write_tiff(t/'data'/'images'/f's{i}.tif', img(seed=i, c=2), axes='CYX'); write_tiff(t/'data'/'masks'/f's{i}.tif', mask())
    return _edit(t/'data', edit, lambda v: 'CYX' if v.ndim==3 else None)

def _cellseg(culprit, codes=(0,), **edit):
    return lambda t: (lambda root: (lambda: cellseg_dls(root, loading_codes=list(codes), bs=2), culprit))(cellseg_root(t, **edit))

CELLSEG = {
    'missing-folder': lambda t: (lambda: cellseg_dls(t/'nowhere', loading_codes=[0]), 'nowhere'),
    'empty-folder': lambda t: ((t/'empty').mkdir(), (lambda: cellseg_dls(t/'empty', loading_codes=[0]), 'empty'))[1],
    'empty-image-folders': lambda t: ((t/'e'/'images').mkdir(parents=True), (t/'e'/'masks').mkdir(), (lambda: cellseg_dls(t/'e', loading_codes=[0]), 'masks'))[-1],
    'image-without-mask': _cellseg('s1', **{'masks/s1.tif': None}),
    'mask-without-image': _cellseg('s1', **{'images/s1.tif': None}),
    'corrupt-image': _cellseg('s1.tif', **{'images/s1.tif': garbage}),
    'truncated-image': _cellseg('s2.tif', **{'images/s2.tif': truncated}),
    'zero-byte-mask': _cellseg('s0.tif', **{'masks/s0.tif': zero_bytes}),
    'size-mismatch': _cellseg('s1.tif', **{'masks/s1.tif': mask(24, 32)}),
    'mask-values-outside-classes': _cellseg('s2.tif', **{'masks/s2.tif': mask(value=255)}),
    'nan-image': _cellseg('s0.tif', **{'images/s0.tif': np.full((2, 32, 32), np.nan, np.float32)}),
    'unknown-loading-code': _cellseg('loading code 150', codes=(150,)),
    'channel-out-of-range': _cellseg('s0.tif', codes=(0, 5)),
    'one-good-one-bad': lambda t: (lambda root: (lambda: cellseg_dls(root, loading_codes=[0]), 's1.tif'))(cellseg_root(t, n=2, **{'images/s1.tif': garbage})),
    'all-masks-empty': _cellseg('masks', **{f'masks/s{i}.tif': np.zeros((32, 32), np.uint8) for i in range(3)}),
    'one-class-codes-txt': _cellseg('codes.txt', **{'codes.txt': lambda fn: fn.write_text('Background\n')}),
}

def rescunet_root(t, n=2, **edit):
    "A ReSCU-Net folder of `n` good samples, then `edit` (relative path -> array, builder or None to delete)."
    for i in range(n):
        s = t/'data'/f'obj{i}'
        write_tiff(s/'image'/'f.tif', img(seed=i)); write_tiff(s/'mask'/'f.tif', mask()); write_tiff(s/'prev_mask'/'f.tif', mask())
    return _edit(t/'data', edit)

def _rescunet(culprit, n=2, **edit): return lambda t: (lambda root: (lambda: rescunet_items(root), culprit))(rescunet_root(t, n, **edit))

RESCUNET = {
    'missing-folder': lambda t: (lambda: rescunet_items(t/'nowhere'), 'nowhere'),
    'empty-folder': lambda t: ((t/'empty').mkdir(), (lambda: rescunet_items(t/'empty'), 'empty'))[1],
    'missing-prev-mask': _rescunet('prev_mask', **{'obj1/prev_mask/f.tif': None}),
    'two-masks': _rescunet('mask', **{'obj0/mask/g.tif': mask()}),
    'corrupt-image': _rescunet('f.tif', **{'obj1/image/f.tif': garbage}),
    'zero-byte-mask': _rescunet('f.tif', **{'obj0/mask/f.tif': zero_bytes}),
    'size-mismatch': _rescunet('obj1', **{'obj1/mask/f.tif': mask(24, 32)}),
    'empty-prev-mask': _rescunet('obj0', **{'obj0/prev_mask/f.tif': np.zeros((32, 32), np.uint8)}),
    'label-mask-not-binary': _rescunet('f.tif', **{'obj1/mask/f.tif': mask() + (np.arange(32)[:, None] > 25).astype(np.uint8)*2}),
    'mask-stack': _rescunet('f.tif', **{'obj0/mask/f.tif': np.stack([mask()]*3)}),
    'nan-image': _rescunet('f.tif', **{'obj0/image/f.tif': np.full((32, 32), np.nan, np.float32)}),
}

def spines_root(t, n=2, rows=None, **edit):
    "A spines folder (images/, spines/) of `n` good images with CSV centres, then `edit`."
    for i in range(n):
        write_tiff(t/'data'/'images'/f'd{i}.tif', img(48, 48, seed=i)); (t/'data'/'spines').mkdir(parents=True, exist_ok=True)
        pd.DataFrame(dict(y=[10., 30.], x=[12., 40.])).to_csv(t/'data'/'spines'/f'd{i}.csv', index=False)
    return _edit(t/'data', edit)

def _spines(culprit, reader=read_spines, **edit): return lambda t: (lambda root: (lambda: reader(root), culprit))(spines_root(t, **edit))

SPINES = {
    'missing-folder': lambda t: (lambda: read_spines(t/'nowhere'), 'nowhere'),
    'empty-images-folder': lambda t: ((t/'e'/'images').mkdir(parents=True), (lambda: read_spines(t/'e'), 'images'))[1],
    'image-without-annotations': _spines('d1.tif', reader=spines_items, **{'spines/d1.csv': None}),
    'annotations-outside-image': _spines('d0.csv', **{'spines/d0.csv': pd.DataFrame(dict(y=[10., 60.], x=[12., 5.]))}),
    'negative-coordinates': _spines('d1.csv', **{'spines/d1.csv': pd.DataFrame(dict(y=[-4.], x=[12.]))}),
    'nan-coordinates': _spines('d1.csv', **{'spines/d1.csv': pd.DataFrame(dict(y=[10., np.nan], x=[12., 5.]))}),
    'wrong-columns': _spines('d0.csv', **{'spines/d0.csv': pd.DataFrame(dict(row=[10.], col=[12.]))}),
    'corrupt-image': _spines('d1.tif', **{'images/d1.tif': garbage}),
    'zero-byte-image': _spines('d0.tif', **{'images/d0.tif': zero_bytes}),
    'mask-annotation-wrong-size': _spines('d0.tif', **{'spines/d0.csv': None, 'spines/d0.tif': mask(20, 20)}),
    'nan-image': _spines('d1.tif', **{'images/d1.tif': np.full((48, 48), np.nan, np.float32)}),
}

def spots_root(t, n=2, n_frames=6, **edit):
    "A spots folder of `n` good series (image.tif, labels.tif), then `edit`."
    for i in range(n):
        s = t/'data'/f'series_{i}'
        lab = np.zeros((n_frames, 32, 32), np.uint8); lab[:, 10:13, 10:13] = 1
        write_tiff(s/'image.tif', np.stack([img(seed=f) for f in range(n_frames)])); write_tiff(s/'labels.tif', lab)
    return _edit(t/'data', edit)

def _spots(culprit, **edit): return lambda t: (lambda root: (lambda: spots_items(root), culprit))(spots_root(t, **edit))

SPOTS = {
    'missing-folder': lambda t: (lambda: spots_items(t/'nowhere'), 'nowhere'),
    'empty-folder': lambda t: ((t/'empty').mkdir(), (lambda: spots_items(t/'empty'), 'empty'))[1],
    'no-annotations': _spots('series_1', **{'series_1/labels.tif': None}),
    'labels-too-few-frames': _spots('series_0', **{'series_0/labels.tif': np.zeros((3, 32, 32), np.uint8)}),
    'labels-not-binary': _spots('series_1', **{'series_1/labels.tif': np.full((6, 32, 32), 3, np.uint8)}),
    'spots-outside-image': _spots('series_0', **{'series_0/labels.tif': None, 'series_0/spots.csv': pd.DataFrame(dict(frame=[0], y=[50.], x=[3.]))}),
    'spots-frame-out-of-range': _spots('series_0', **{'series_0/labels.tif': None, 'series_0/spots.csv': pd.DataFrame(dict(frame=[9], y=[5.], x=[3.]))}),
    'corrupt-image': _spots('image.tif', **{'series_1/image.tif': garbage}),
    'truncated-image': _spots('image.tif', **{'series_0/image.tif': lambda fn: truncated(fn, np.stack([img(64, 64)]*6))}),
    'nan-image': _spots('image.tif', **{'series_1/image.tif': np.full((6, 32, 32), np.nan, np.float32)}),
    'cell-mask-wrong-size': _spots('series_1', **{'series_1/cell_mask.tif': np.ones((20, 20), np.uint8)}),
}

def nextframe_root(t, n=2, **edit):
    "A folder of `n` good sequence stacks (T,H,W), then `edit`."
    for i in range(n): write_tiff(t/'data'/f'cell_{i}.tif', np.stack([img(seed=f) for f in range(5)]), axes='TYX')
    return _edit(t/'data', edit, lambda v: 'TYX' if v.ndim==3 else 'TCYX')

def _nextframe(culprit, **edit): return lambda t: (lambda root: (lambda: nextframe_items(root), culprit))(nextframe_root(t, **edit))

NEXTFRAME = {
    'missing-folder': lambda t: (lambda: nextframe_items(t/'nowhere'), 'nowhere'),
    'empty-folder': lambda t: ((t/'empty').mkdir(), (lambda: nextframe_items(t/'empty'), 'empty'))[1],
    'sequence-too-short': _nextframe('cell_1', **{'cell_1.tif': lambda fn: write_tiff(fn, img())}),
    'nan-frames': _nextframe('cell_0', **{'cell_0.tif': np.full((5, 32, 32), np.nan, np.float32)}),
    'channel-mismatch': _nextframe('cell_1', **{'cell_1.tif': np.stack([img(c=2)]*5)}),
    'corrupt-file': _nextframe('cell_1.tif', **{'cell_1.tif': garbage}),
    'zero-byte-file': _nextframe('cell_0.tif', **{'cell_0.tif': zero_bytes}),
    'csv-without-file-column': _nextframe('sequences.csv', **{'sequences.csv': lambda fn: fn.write_text('path\ncell_0.tif\n')}),
    'csv-names-missing-file': _nextframe('gone.tif', **{'sequences.csv': lambda fn: fn.write_text('file\ncell_0.tif\ngone.tif\n')}),
    'empty-array-source': lambda t: (lambda: nextframe_items(np.zeros((0, 5, 8, 8))), 'sequences'),
}

def _codes(codes, culprit, image=None, **kwargs):
    return lambda t: (lambda: load_channels(img(c=3) if image is None else image, codes, **kwargs), culprit)

CHANNELS = {
    'unknown-recipe-code': _codes([150], 'loading code 150'),
    'code-beyond-dropout-range': _codes([460], 'loading code 460'),
    'negative-code': _codes([-1], 'loading code -1'),
    'string-code': _codes(['dapi'], "loading code 'dapi'"),
    'float-code': _codes([1.5], 'loading code 1.5'),
    'raw-channel-out-of-range': _codes([0, 7], 'loading code 7'),
    'recipe-channel-out-of-range': _codes([100], 'loading code 100'),
    'dropout-of-missing-channel': _codes([205], 'loading code 205'),
    'dropout-probability': _codes([200], 'channel_dropout', channel_dropout=1.5),
    '2d-image': _codes([0], 'image of shape', image=img()),
    'nan-array': _codes([0, 1], 'NaN or infinite', image=np.where(np.eye(32, dtype=bool), np.inf, 1.)[None].repeat(2, 0)),
    'recipe-code-in-raw-range': lambda t: (lambda: RecipeBook({10: Merge([0, 1])}), 'recipe book'),
    'recipe-without-channels': lambda t: (lambda: Merge([]), 'Merge'),
    'not-a-recipe': lambda t: (lambda: resolve_codes([60], recipes={60: 'merge'}), 'recipe book'),
    'file-channel-out-of-range': lambda t: (lambda fn: (lambda: LoadChannels([4])(fn, split_idx=1), 'rgbish.tif'))(write_tiff(t/'rgbish.tif', img(c=3), axes='CYX')),
    'per-channel-files-of-two-sizes': lambda t: (lambda a, b: (lambda: LoadChannels([0, 1])((a, b), split_idx=1), 'c0.tif'))(write_tiff(t/'c0.tif', img()), write_tiff(t/'c1.tif', img(20, 20))),
}

def _table(culprit, write, **kwargs):
    return lambda t: (lambda fn: (write(fn), (lambda: read_table(fn, **kwargs), culprit))[1])(t/culprit)

TABLE = {
    'missing-file': lambda t: (lambda: read_table(t/'gone.csv'), 'gone.csv'),
    'folder': lambda t: ((t/'dir.csv').mkdir(), (lambda: read_table(t/'dir.csv'), 'dir.csv'))[1],
    'zero-byte': _table('zero.csv', zero_bytes),
    'random-bytes': _table('noise.csv', garbage),
    'unclosed-quote': _table('quote.csv', lambda fn: fn.write_text('y,x\n"1,2\n3,4\n')),
    'text-in-numeric-column': _table('words.csv', lambda fn: fn.write_text('y,x\n1,2\n3,four\n'), numeric=('y', 'x')),
}

def _zarr(t, edit=None):
    "A good one-level OME-Zarr image (NGFF 0.4), then `edit(folder)`."
    root = write_ngff(t/'img.ome.zarr', img(c=2), axes='cyx', chunk=16)
    if edit: edit(root)
    return root

def _damaged_chunk(root):
    "Overwrite the image's first chunk with noise, as a copy that stopped part-way might leave it."
    garbage(next(p for p in sorted((root/'0').rglob('*')) if p.is_file() and not p.name.startswith('.')))

def _attrs(root, f): (root/'.zattrs').write_text(f(__import__('json').loads((root/'.zattrs').read_text())))

LAZY = {
    'ngff-missing-folder': lambda t: (lambda: read_ngff(t/'gone.ome.zarr'), 'gone.ome.zarr'),
    'ngff-file-not-folder': lambda t: (lambda: read_ngff(write_tiff(t/'a.tif', img())), 'a.tif'),
    'ngff-plain-folder': lambda t: ((t/'plain').mkdir(), (lambda: read_ngff(t/'plain'), 'plain'))[1],
    'ngff-no-multiscales': lambda t: (lambda r: (lambda: read_ngff(r), 'img.ome.zarr'))(_zarr(t, lambda r: (r/'.zattrs').write_text('{}'))),
    'ngff-garbage-metadata': lambda t: (lambda r: (lambda: read_ngff(r), 'img.ome.zarr'))(_zarr(t, lambda r: garbage(r/'.zattrs'))),
    'ngff-level-out-of-range': lambda t: (lambda r: (lambda: read_ngff(r, level=3), 'level 3'))(_zarr(t)),
    'ngff-axes-disagree-with-array': lambda t: (lambda r: (lambda: read_ngff(r), 'img.ome.zarr'))(
        _zarr(t, lambda r: _attrs(r, lambda a: __import__('json').dumps(a | dict(multiscales=[a['multiscales'][0] | dict(axes=['y', 'x'])]))))),
    'ngff-damaged-chunk': lambda t: (lambda r: (lambda: read_ngff(r).data.compute(), 'img.ome.zarr'))(_zarr(t, _damaged_chunk)),
    'ngff-damaged-chunk-predict-large': lambda t: (lambda r: (lambda: predict_large(nn.Conv2d(2, 2, 1), r, dest=t/'out.ome.zarr', tile_size=16, overlap=4),
                                                              'img.ome.zarr'))(_zarr(t, _damaged_chunk)),
    'tiff-missing-file': lambda t: (lambda: read_tiff_lazy(t/'gone.tif'), 'gone.tif'),
    'tiff-folder': lambda t: ((t/'d.tif').mkdir(), (lambda: read_tiff_lazy(t/'d.tif'), 'd.tif'))[1],
    'tiff-zero-byte': lambda t: (lambda: read_tiff_lazy(zero_bytes(t/'zero.tif')), 'zero.tif'),
    'tiff-random-bytes': lambda t: (lambda: read_tiff_lazy(garbage(t/'noise.tif')), 'noise.tif'),
    'tiff-axes-of-wrong-length': lambda t: (lambda: read_tiff_lazy(write_tiff(t/'flat.tif', img()), axes='tcyx'), 'flat.tif'),
    'tiff-axes-out-of-order': lambda t: (lambda: read_tiff_lazy(write_tiff(t/'two.tif', img(c=2), axes='CYX'), axes='ycx'), 'two.tif'),
    'array-without-yx': lambda t: (lambda: read_lazy(np.zeros((4, 8, 8)), axes='cyz'), 'array'),
}

TABLES = dict(read_stack=_io(read_stack), read_image=_io(read_image), read_mask=_io(read_mask), read_table=TABLE, cellseg=CELLSEG, rescunet=RESCUNET,
              spines=SPINES, spots=SPOTS, nextframe=NEXTFRAME, channels=CHANNELS, lazy=LAZY)

# Text files (annotation tables through `io.read_table`, class names) that cannot be read, or hold text among the coordinates.
TEXT_FILES = {
    'spines-empty-annotation-csv': _spines('d0.csv', **{'spines/d0.csv': zero_bytes}),
    'spines-text-coordinates': _spines('d0.csv', **{'spines/d0.csv': lambda fn: fn.write_text('y,x\nabc,3\n')}),
    'spots-binary-spots-csv': _spots('spots.csv', **{'series_0/labels.tif': None, 'series_0/spots.csv': garbage}),
    'spots-text-coordinates': _spots('spots.csv', **{'series_0/labels.tif': None, 'series_0/spots.csv': lambda fn: fn.write_text('frame,y,x\n0,abc,3\n')}),
    'nextframe-empty-sequences-csv': _nextframe('sequences.csv', **{'sequences.csv': zero_bytes}),
    'cellseg-binary-codes-txt': _cellseg('codes.txt', **{'codes.txt': garbage}),
}
CASES = [pytest.param(build, id=f'{loader}-{name}') for loader, table in TABLES.items() for name, build in table.items()
        ] + [pytest.param(build, id=name) for name, build in TEXT_FILES.items()]

def test_tables_are_large():
    "At least 15 bad inputs for the readers and the channel codes, and more than 10 per workflow loader."
    for loader, table in TABLES.items(): assert len(table) >= {'read_table': 6}.get(loader, 15 if loader in ('read_stack', 'read_image', 'read_mask', 'channels', 'cellseg') else 10), loader

@pytest.mark.parametrize('build', CASES)
def test_bad_input(build, tmp_path, monkeypatch):
    "The loader raises a `BioDataError` whose message names the file (or the input) and gives the fix."
    monkeypatch.chdir(tmp_path)
    call, culprit = build(tmp_path)
    with pytest.raises(BioDataError) as e: call()
    msg = str(e.value)
    assert str(culprit) in msg, msg
    assert ', expected ' in msg and '. Fix: ' in msg, msg

def test_constant_image_reads_cleanly(tmp_path):
    "An all-constant image (a blank field, an all-zero negative-control mask) is data, not an error: it reads and normalises to finite values."
    fn = write_tiff(tmp_path/'flat.tif', np.full((2, 16, 16), 700, np.uint16), axes='CYX')
    x = LoadChannels([0, 1])(fn, split_idx=1)
    assert x.shape == (2, 16, 16) and np.isfinite(x).all() and (x == 0).all()
    assert (read_mask(write_tiff(tmp_path/'zero.tif', np.zeros((16, 16), np.uint8))) == 0).all()

# ---- fuzz ----------------------------------------------------------------------------------------------------------------
READERS = (read_stack, read_image, read_mask)
EXTS = ('.tif', '.png', '.npy', '.jpg')
fuzz = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, database=None)   # the same examples every run, nothing written

def _clean(reader, fn):
    "`reader(fn)` gives an array or a `BioDataError`; anything else fails the test."
    try: out = reader(fn)
    except BioDataError as e: assert str(fn.name) in str(e); return None
    assert isinstance(out, np.ndarray) and out.ndim in (2, 3, 4)
    return out

@fuzz
@given(data=st.binary(max_size=4096), ext=st.sampled_from(EXTS), reader=st.sampled_from(READERS))
def test_fuzz_random_bytes(tmp_path_factory, data, ext, reader):
    "Random bytes under any image extension read cleanly or give a `BioDataError`."
    fn = tmp_path_factory.mktemp('fuzz')/f'x{ext}'; fn.write_bytes(data)
    _clean(reader, fn)

@fuzz
@given(data=st.binary(min_size=1, max_size=512), header=st.sampled_from(['tif-le', 'tif-be', 'npy', 'png']), reader=st.sampled_from(READERS), cut=st.floats(0, 1))
def test_fuzz_damaged_headers(tmp_path_factory, data, header, reader, cut):
    "A valid file cut anywhere and followed by random bytes reads cleanly or gives a `BioDataError`."
    d = tmp_path_factory.mktemp('fuzz')
    x = img(24, 24)
    if header.startswith('tif'): tifffile.imwrite(d/'a.tif', x, byteorder='<' if header=='tif-le' else '>'); fn = d/'a.tif'
    elif header=='npy': fn = npy(d/'a.npy', x)
    else:
        import imageio.v3 as iio
        iio.imwrite(d/'a.png', x.astype(np.uint8)); fn = d/'a.png'
    b = fn.read_bytes(); fn.write_bytes(b[:int(cut*len(b))] + data)
    _clean(reader, fn)

DTYPES = ('uint8', 'uint16', 'int16', 'int32', 'int64', 'float16', 'float32', 'float64', 'bool', 'complex64')
@fuzz
@given(shape=st.lists(st.integers(0, 5), min_size=0, max_size=6), dtype=st.sampled_from(DTYPES), reader=st.sampled_from(READERS),
       special=st.sampled_from([None, np.nan, np.inf, -np.inf]))
def test_fuzz_shapes_and_dtypes(tmp_path_factory, shape, dtype, reader, special):
    "Arrays of any shape and data type, saved as NPY, read cleanly or give a `BioDataError`; what reads has the documented shape."
    x = np.ones(shape, dtype)
    if special is not None and x.size and x.dtype.kind in 'fc': x.flat[0] = special
    fn = npy(tmp_path_factory.mktemp('fuzz')/'a.npy', x)
    out = _clean(reader, fn)
    if out is not None:
        assert out.ndim == {read_stack: 4, read_image: 3}.get(reader, out.ndim) and out.size == x.size
        if out.dtype.kind == 'f': assert np.isfinite(out).all()

WRITABLE = ('uint8', 'uint16', 'int8', 'int16', 'int32', 'uint32', 'int64', 'float32', 'float64', 'bool')
@fuzz
@given(shape=st.lists(st.integers(1, 6), min_size=2, max_size=4), dtype=st.sampled_from(WRITABLE), seed=st.integers(0, 9))
def test_fuzz_write_read_round_trip(tmp_path_factory, shape, dtype, seed):
    "`write_tiff` of any (H,W), (T,H,W) or (T,C,H,W) array, however small, reads back exactly, data type included."
    x = (np.random.default_rng(seed).random(shape)*50).astype(dtype)
    back = read_stack(write_tiff(tmp_path_factory.mktemp('fuzz')/'a.tif', x))
    assert back.dtype == x.dtype
    np.testing.assert_array_equal(back, _to_tcyx(x, _default_axes(x.shape), '', ''))   # (T,C,H,W) by the documented axes rules

# ---- atomic outputs ------------------------------------------------------------------------------------------------------
WRITER = textwrap.dedent('''
    import sys, numpy as np, tifffile
    fn, atomic = sys.argv[1], sys.argv[2] == 'atomic'
    if atomic: from biofastai.io import write_tiff
    xs = [np.full((4, 2048, 2048), k, np.uint16) for k in (1, 2)]   # made once: the loop does nothing but write
    write = (lambda a: write_tiff(fn, a)) if atomic else (lambda a: tifffile.imwrite(fn, a, imagej=True, metadata={'axes': 'TYX'}))
    write(xs[0]); print('ready', flush=True)
    for k in range(10**6): write(xs[k % 2])
''')

def _kill_while_writing(tmp_path:Path, atomic:bool, delays) -> list:
    "Kill processes writing a 32 MB TIFF again and again, each after its delay; what each leaves: the values read or the error, and the folder's files."
    fns = [tmp_path/f'{"atomic" if atomic else "plain"}_{i}'/'probs.tif' for i in range(len(delays))]
    procs = []
    for fn in fns:
        fn.parent.mkdir()
        procs.append(subprocess.Popen([sys.executable, '-c', WRITER, str(fn), 'atomic' if atomic else 'plain'], stdout=subprocess.PIPE, text=True,
                                      env={**os.environ, 'OMP_NUM_THREADS': '1', 'MKL_NUM_THREADS': '1'}))
    for p in procs: assert p.stdout.readline().strip() == 'ready'
    t0 = time.monotonic()
    for p, delay in sorted(zip(procs, delays), key=lambda o: o[1]):
        time.sleep(max(0, t0+delay-time.monotonic())); p.send_signal(signal.SIGKILL); p.wait()
    left = []
    for fn in fns:
        try: x = read_stack(fn); values = np.unique(x) if x.shape == (4, 1, 2048, 2048) else f'shape {x.shape}'
        except BioDataError as e: values = e
        left.append((values, sorted(q.name for q in fn.parent.iterdir())))
    return left

def test_killed_writer_leaves_previous_file(tmp_path):
    "SIGKILL while `write_tiff` writes leaves a complete earlier file (one value throughout), never a truncated one; a plain write does not."
    delays = (0.4, 0.7, 1.0)
    atomic = _kill_while_writing(tmp_path, True, delays)
    for values, names in atomic:
        assert isinstance(values, np.ndarray) and len(values) == 1, (values, names)   # one whole earlier write
        assert 'probs.tif' in names
    assert any(len(names) > 1 for _, names in atomic), atomic   # some kills hit a write in progress: its temporary file is left, hidden
    plain = _kill_while_writing(tmp_path, False, delays)
    assert any(not (isinstance(v, np.ndarray) and len(v) == 1) for v, _ in plain), plain   # the test can see truncation
