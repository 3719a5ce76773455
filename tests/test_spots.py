"Spot workflow: exact windows, bad input, a short training that beats an untrained model and a tuned LoG detector, export, real data."
import importlib.util, tempfile
from pathlib import Path
import numpy as np, pandas as pd, torch, pytest, scipy.io
from fastai.callback.progress import ProgressCallback
from fastai.learner import defaults, load_learner
from fastai.torch_core import set_seed
from biofastai.core import BioDataError, ShapeError, ValueRangeError, EmptyDataError
from biofastai.io import write_tiff, read_stack
from biofastai.synth import synth_spots
from biofastai.sequences import backprop_windows, reassemble
from biofastai.spots import (read_spot_series, spots_items, spots_dls, spots_learner, spots_fit, spots_train, spots_predict,
                             spots_evaluate, spot_bursts, SeriesList, SeriesDataLoader, SpotNet, _prepare)

EPOCHS = 60     # about a minute on one CPU thread; 20 epochs reached F1 0.55, 0.48, 0.44 with seeds 0, 1, 2
MIN_F1 = 0.55   # spot F1 on the validation series: the untrained model (0.12) and the tuned LoG detector (0.43) stay below; 60 epochs reach 0.70 (seeds 0, 1)

@pytest.fixture(scope='module')
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp('spots')
    synth_spots(root/'train', n=12, n_frames=12, size=40, snr=6, seed=1)
    synth_spots(root/'valid', n=4, n_frames=12, size=40, snr=6, seed=2)
    return pd.concat([spots_items(root/'train').assign(is_valid=False), spots_items(root/'valid').assign(is_valid=True)], ignore_index=True)

def test_windows_padding_and_reassembly_are_exact(tmp_path):
    "Every lane's windows, put back with `reassemble`, give each series exactly; repeated frames carry no weight."
    synth_spots(tmp_path, n=3, n_frames=12, size=32, snr=6, seed=0)
    series = SeriesList(_prepare(read_spot_series(p), (1., 99.8), 0.1, 5.) for p in spots_items(tmp_path).series)
    series[1] = {k: (v[:3] if isinstance(v, torch.Tensor) else v) for k, v in series[1].items()}   # a 3-frame series: one padded window
    series[2] = {k: (v[:9] if isinstance(v, torch.Tensor) else v) for k, v in series[2].items()}   # 9 frames: [0..5], [6,7,8,7,6,7]
    dl = SeriesDataLoader(series, backprop_length=6, bs=2)
    got = {}   # series -> list of windows (x, weights)
    for (lane, i, w), item in zip(dl.get_idxs(), map(dl.create_item, dl.get_idxs())):
        if i is not None: got.setdefault(i, []).append((w, item))
    for i, s in enumerate(series):
        idx, valid = backprop_windows(len(s['x']), 6)
        wins = [it for _, it in sorted(got[i], key=lambda o: o[0])]
        assert [bool(it[1]) for it in wins] == [True] + [False]*(len(wins)-1)       # reset flag at the first window only
        xs = torch.stack([it[0].as_subclass(torch.Tensor) for it in wins])
        ws = torch.stack([it[3].as_subclass(torch.Tensor) for it in wins])
        assert torch.equal(reassemble(xs, idx, valid, len(s['x'])), s['x'])
        assert torch.equal(reassemble(ws, idx, valid, len(s['x'])), s['weights'])
        assert ws[torch.from_numpy(~valid)].abs().sum() == 0

def test_bad_input(tmp_path):
    synth_spots(tmp_path/'ok', n=1, n_frames=6, size=32, snr=6, seed=0)
    s = read_spot_series(tmp_path/'ok'/'series_000')
    def series(name, **arrays):
        d = tmp_path/name; d.mkdir()
        write_tiff(d/'image.tif', arrays.pop('image', s['image']).astype(np.uint16))
        for k, v in arrays.items():
            if isinstance(v, pd.DataFrame): v.to_csv(d/f'{k}.csv', index=False)
            else: write_tiff(d/f'{k}.tif', v)
        return d
    with pytest.raises(ShapeError, match='labels of shape'): read_spot_series(series('short', labels=s['labels'][:4]))
    with pytest.raises(ShapeError, match='cell_mask of shape'): read_spot_series(series('size', labels=s['labels'], cell_mask=np.ones((20, 20), np.uint8)))
    with pytest.raises(ValueRangeError, match='binary labels'): read_spot_series(series('labels', labels=s['labels']*2))
    with pytest.raises(ValueRangeError, match='outside'): read_spot_series(series('coords', spots=pd.DataFrame(dict(frame=[6], y=[3.], x=[3.]))))
    with pytest.raises(ShapeError, match="columns 'frame', 'y' and 'x'"): read_spot_series(series('cols', spots=pd.DataFrame(dict(t=[0], y=[3.], x=[3.]))))
    scipy.io.savemat(tmp_path/'empty.mat', dict(image=np.zeros((32, 32, 0))))
    with pytest.raises(EmptyDataError, match='empty|non-empty'): read_spot_series(tmp_path/'empty.mat')
    with pytest.raises(BioDataError, match='spot annotations'): spots_items(series('unannotated'))
    # missing weights and cell mask: documented defaults (pixels near the spots, the whole frame)
    d = read_spot_series(series('defaults', labels=s['labels']))
    assert d['spot_mask'][s['labels'] > 0].all() and d['cell_mask'].all() and 0 < d['spot_mask'].mean() < 0.5

def _f1(ev, prefix=''):
    tp, fp, fn = (ev[prefix+k].sum() for k in ('tp', 'fp', 'fn'))
    return 2*tp/(2*tp+fp+fn)

@pytest.fixture(scope='module')
def trained(data, tmp_path_factory):
    defaults.callbacks = [c for c in defaults.callbacks if c is not ProgressCallback]
    e = dict(name='t', arch_path='forward_backward', layer_depth=16, combiner_conv_size=7, epochs=EPOCHS, lr=1e-2, background_weight=0.3)
    return spots_train(e, data, seed=0, work_dir=tmp_path_factory.mktemp('work'))


def test_training_beats_untrained_model_and_log(data, trained, tmp_path):
    ev = spots_evaluate(trained)
    set_seed(0)
    untrained = spots_learner(spots_dls(data, seed=0), 'forward_backward', layer_depth=16, combiner_conv_size=7, work_dir=tmp_path)
    ev0 = spots_evaluate(untrained, log_threshold=float(ev.log_threshold[0]))
    f1, f1_untrained, f1_log = _f1(ev), _f1(ev0), _f1(ev, 'log_')
    print(f'spot F1: trained {f1:.3f}, untrained {f1_untrained:.3f}, LoG {f1_log:.3f}')
    assert f1_untrained < MIN_F1 and f1_log < MIN_F1 <= f1


def test_export_and_predict_on_real_time_lapse(trained, tmp_path):
    "An exported learner reloads and predicts a crop of the spotiflow telomere time-lapse end to end."
    trained.export(tmp_path/'spots.pkl')
    learn = load_learner(tmp_path/'spots.pkl')
    spec = importlib.util.find_spec('spotiflow')
    if spec is None: pytest.skip('spotiflow wheel not installed (pip install --no-deps spotiflow==0.6.5): no real spot time-lapse')
    fn = Path(spec.submodule_search_locations[0])/'sample_data'/'images'/'timelapse_telomeres_2d.tif'
    if not fn.exists(): pytest.skip(f'{fn} not in the spotiflow wheel')
    movie = read_stack(fn)[:10, 0, 30:94, 40:104]
    probs, spots = spots_predict(learn, movie)
    assert probs.shape == (10, 64, 64) and np.isfinite(probs).all() and probs.min() >= 0 and probs.max() <= 1
    assert list(spots.columns) == ['frame', 'y', 'x', 'probability', 'intensity', 'area', 'track']
    assert len(spots) > 0 and spots.frame.between(0, 9).all()
    b = spot_bursts(spots)
    assert (b.duration >= 1).all() and (b.end >= b.start).all()
