"Spine counting: a briefly trained CNN counts better than a tuned LoG, the scanner equals the patch loop, bad input fails clearly."
from pathlib import Path
import numpy as np, pandas as pd, pytest
from fastai.torch_core import set_seed
from fastai.learner import load_learner
from biofastai.core import ShapeError, EmptyDataError, ValueRangeError, MissingFileError
from biofastai.io import write_tiff
from biofastai.synth import synth_dendrites, make_dendrite
from biofastai.io import read_table
from biofastai.metrics import count_error
from biofastai.spines import (read_spines, spines_dls, spines_learner, spines_patches, scan, scan_patchwise, tune_counter,
                              spines_predict, spines_predict_folder, spines_train, tune_log, log_spines, SPINE_COLUMNS)

SEED = 0   # the recipe reached count errors 0.020-0.065 (LoG 0.21-0.52) with seeds 0-3 on the dependencies of 2026-12

@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    "A spine learner trained on 8 synthetic dendrites, its counter tuned on 4 more held out of training."
    tmp = tmp_path_factory.mktemp('spines')
    imgs, pts = read_spines(synth_dendrites(tmp/'train', n=12, size=192, seed=SEED))
    set_seed(SEED)
    dls = spines_dls(imgs, pts, valid_pct=0.34, seed=SEED)
    learn = spines_learner(dls)
    with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(4, 3e-3)
    v = dls.valid_images
    counter, _ = tune_counter([scan(learn, imgs[i]) for i in v], [pts[i] for i in v])
    test_dir = synth_dendrites(tmp/'test', n=3, size=192, seed=SEED+1)
    return dict(learn=learn, counter=counter, imgs=imgs, pts=pts, test_dir=test_dir, test=read_spines(test_dir))

def test_counts_beat_log_and_a_constant(trained):
    "On 8 new dendrites with 1-3 branches (so counts vary), the model counts closer than a tuned LoG and than the mean training count."
    rng = np.random.default_rng(SEED+100)
    test = [make_dendrite(192, n_branches=int(rng.integers(1, 4)), seed=rng) for _ in range(8)]
    truth = [len(spines) for _, spines in test]
    model = count_error([len(spines_predict(trained['learn'], im, trained['counter'])) for im, _ in test], truth)['relative']
    train_counts = [len(p) for p in trained['pts']]
    thr, _ = tune_log(trained['imgs'], train_counts)
    log = count_error([len(log_spines(im, thr)) for im, _ in test], truth)['relative']
    constant = count_error([np.mean(train_counts)]*len(truth), truth)['relative']
    print(f'relative count error: model {model:.3f}, LoG {log:.3f}, constant {constant:.3f}')
    assert model <= 0.15 and model < min(log, constant)

def test_trained_scanner_equals_patch_loop(trained):
    im = trained['test'][0][0][:, 20:84, 30:130]
    fast, slow = scan(trained['learn'], im, tile_size=40), scan_patchwise(trained['learn'], im, batch_size=300)
    assert fast.shape == im.shape[1:]
    assert np.abs(fast - slow).max() <= 1e-4
    assert fast.max() > 0.9 and fast.min() < 0.1  # a trained map, not a constant

def test_export_and_predict_folder(trained, tmp_path):
    learn = trained['learn']
    learn.export(tmp_path/'spines.pkl')
    loaded = load_learner(tmp_path/'spines.pkl')
    im = trained['test'][0][0]
    np.testing.assert_allclose(scan(loaded, im), scan(learn, im), atol=1e-6)
    counts = spines_predict_folder(loaded, trained['test_dir']/'images', tmp_path/'out', trained['counter'], figures=True, progress=False)
    assert list(counts.file) == ['dendrite_000.tif', 'dendrite_001.tif', 'dendrite_002.tif']
    assert pd.read_csv(tmp_path/'out'/'counts.csv').equals(counts)
    table = pd.read_csv(tmp_path/'out'/'dendrite_000.csv')
    spines = spines_predict(learn, im, trained['counter']); n = len(spines)
    assert list(table.columns) == SPINE_COLUMNS and len(table) == n == counts['count'][0]
    np.testing.assert_allclose(table[['y', 'x', 'size']].to_numpy(float), spines[['y', 'x', 'size']].to_numpy(float), atol=1e-6)
    assert table['size'].between(np.pi*0.5**2, np.pi*8**2).all() and table.prob.between(trained['counter'].threshold, 1).all()
    assert (tmp_path/'out'/'dendrite_000.png').stat().st_size > 1000

@pytest.fixture
def dataset(tmp_path):
    "Two small annotated dendrites as files."
    return synth_dendrites(tmp_path/'data', n=2, size=64, seed=3)

def test_annotations_outside_image(dataset):
    fn = dataset/'spines'/'dendrite_001.csv'
    df = pd.read_csv(fn); df.loc[0, 'y'] = 70.; df.to_csv(fn, index=False)
    with pytest.raises(ValueRangeError, match=r'dendrite_001\.csv.*1 of \d+ spine centres outside the 64x64 image \(first: y=70'):
        read_spines(dataset)

def test_image_smaller_than_patch(dataset):
    imgs, pts = read_spines(dataset)
    with pytest.raises(ShapeError, match='image 1: found an image of 30x64 pixels, expected at least the patch size, 40x40'):
        spines_dls([imgs[0], imgs[1][:, :30]], [pts[0], pts[1][pts[1][:, 0] < 30]])
    with pytest.raises(ShapeError, match='image 0: found an image of 64x64 pixels, expected at least the patch size, 80x80'):
        spines_patches(imgs, pts, patch_size=80)

def test_no_positive_patches(dataset):
    for fn in (dataset/'spines').glob('*.csv'): pd.DataFrame(columns=['y', 'x']).to_csv(fn, index=False)
    imgs, pts = read_spines(dataset)
    with pytest.raises(EmptyDataError, match='2 annotated images: found no spine centres, so no positive patches'):
        spines_dls(imgs, pts)

def test_missing_annotation_file(dataset):
    (dataset/'spines'/'dendrite_000.csv').unlink()
    with pytest.raises(MissingFileError, match=r'dendrite_000\.tif: found no annotation file'):
        read_spines(dataset)

def test_point_image_annotations(dataset):
    "Centres given as a point image (one pixel per spine) give the same patches as the CSV table."
    imgs, pts = read_spines(dataset)
    c = np.rint(pts[0]); c = c[np.lexsort((c[:, 1], c[:, 0]))]   # the order in which a point image is read: row by row
    pim = np.zeros(imgs[0].shape[1:], np.uint8); pim[tuple(c.astype(int).T)] = 1
    x_csv, y_csv, _ = spines_patches(imgs[:1], [c], seed=0)
    x_pim, y_pim, _ = spines_patches(imgs[:1], [pim], seed=0)
    np.testing.assert_array_equal(x_csv, x_pim); np.testing.assert_array_equal(y_csv, y_pim)

def _stamps(folder) -> dict:
    "Each file's inode and modification time: both change when a file is written again."
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in Path(folder).iterdir()}

def test_predict_folder_finishes_after_a_crash(tmp_path, monkeypatch):
    "A crash while writing the second table leaves no truncated file; the re-run counts the rest, and after a deletion only that image."
    data = synth_dendrites(tmp_path/'data', n=3, size=64, seed=5)
    imgs, pts = read_spines(data)
    set_seed(0)
    learn = spines_learner(spines_dls(imgs, pts, valid_pct=0.34, seed=0), filters=(4, 8, 8), fc=(16,))
    whole = spines_predict_folder(learn, data/'images', tmp_path/'whole', figures=True, progress=False)
    real, calls = pd.DataFrame.to_csv, []
    def half_then_crash(df, path=None, **kwargs):
        "The second spine table: half of it written, then the process fails."
        calls.append(1)
        if len(calls)==2:
            text = real(df, None, **kwargs)
            open(path, 'w').write(text[:len(text)//2]); raise RuntimeError('crash')
        return real(df, path, **kwargs)
    monkeypatch.setattr(pd.DataFrame, 'to_csv', half_then_crash)
    with pytest.raises(RuntimeError, match='crash'): spines_predict_folder(learn, data/'images', tmp_path/'pred', figures=True, progress=False)
    monkeypatch.undo()
    assert sorted(_stamps(tmp_path/'pred')) == ['dendrite_000.csv', 'dendrite_000.png']   # no truncated table, no temporary file
    first = _stamps(tmp_path/'pred')
    res = spines_predict_folder(learn, data/'images', tmp_path/'pred', figures=True, progress=False)
    stamps = _stamps(tmp_path/'pred')
    assert sorted(stamps) == sorted(_stamps(tmp_path/'whole')) and all(stamps[f] == first[f] for f in first)
    pd.testing.assert_frame_equal(res, whole)
    for f in ('dendrite_001.csv', 'counts.csv'): pd.testing.assert_frame_equal(read_table(tmp_path/'pred'/f), read_table(tmp_path/'whole'/f))
    (tmp_path/'pred'/'dendrite_002.csv').unlink()
    spines_predict_folder(learn, data/'images', tmp_path/'pred', figures=True, progress=False)
    again = _stamps(tmp_path/'pred')
    assert [f for f in sorted(again) if again[f] != stamps.get(f)] == ['counts.csv', 'dendrite_002.csv', 'dendrite_002.png']

def test_train_resumes_after_a_crash_then_tunes_as_uninterrupted(tmp_path):
    "An exception in epoch 2 stops `spines_train`; `resume=True` finishes the fit and tunes the same counter and LoG threshold on the same weights."
    from fastai.callback.core import Callback
    class CrashMidEpoch(Callback):
        def after_batch(self):
            if self.training and self.epoch == 1 and self.iter == self.n_iter//2: raise RuntimeError('crash')
    data = synth_dendrites(tmp_path/'data', n=3, size=64, seed=5)
    exp = dict(name='resume', epochs=3, filters=(4, 8, 8), fc=(16,))
    whole = spines_train(exp, data, checkpoint=tmp_path/'whole.pth')
    with pytest.raises(RuntimeError, match='crash'): spines_train(exp, data, checkpoint=tmp_path/'crash.pth', cbs=[CrashMidEpoch()])
    resumed = spines_train(exp, data, checkpoint=tmp_path/'crash.pth', resume=True)
    np.testing.assert_allclose(resumed.recorder.values, whole.recorder.values, rtol=1e-5)
    for a, b in zip(resumed.model.parameters(), whole.model.parameters()): np.testing.assert_allclose(a.detach(), b.detach(), rtol=1e-5, atol=1e-6)
    assert repr(resumed.counter) == repr(whole.counter) and resumed.log_threshold == whole.log_threshold
