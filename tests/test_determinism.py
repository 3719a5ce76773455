"Determinism: for every workflow, a short CPU training through `<wf>_train` with the same seed gives the same metrics, and its exported model the same predictions; another seed does not."
import numpy as np, pytest
from fastai.learner import load_learner
from biofastai.synth import synth_cells, synth_spots, synth_nextframe, make_video, make_dendrite

# per workflow: the training data, one tiny experiment, keyword arguments of `<wf>_train`, and a prediction of the exported model as an array
def cellseg_case(tmp):
    from biofastai.cellseg import cellseg_train, cellseg_predict
    src = synth_cells(tmp/'cells', n=8, size=64, seed=0)
    return (cellseg_train, src, dict(name='c', loading_codes=[1, 4, 7], arch='resnet18', epochs=1, lr=1e-3),
            dict(size=32, bs=4, pretrained=False, num_workers=0), lambda learn: cellseg_predict(learn, src/'FullImage'/'cell_000.tif')[1])

def rescunet_case(tmp):
    from biofastai.rescunet import rescunet_train, rescunet_predict, write_rescunet_samples
    video, labels = make_video(n_frames=4, size=64, n_objects=2, seed=0)
    write_rescunet_samples(video, labels, tmp/'samples', 'v0')
    first = (labels[0] == labels[0].max()).astype(np.uint8)
    return (rescunet_train, tmp/'samples', dict(name='r', width=4, epochs=1), dict(bs=4),
            lambda learn: rescunet_predict(learn, video[1], first, return_probs=True)[1])

def spines_case(tmp):
    from biofastai.spines import spines_train, scan
    d = [make_dendrite(72, seed=s) for s in range(3)]
    return (spines_train, ([i for i, _ in d], [p for _, p in d]), dict(name='s', epochs=1, filters=(4, 8, 8), fc=(8,)), {},
            lambda learn: scan(learn, d[0][0]))

def spots_case(tmp):
    from biofastai.spots import spots_train, spots_predict
    src = synth_spots(tmp/'spots', n=3, n_frames=6, size=32, seed=0)
    return (spots_train, src, dict(name='p', epochs=1, layer_depth=8), dict(work_dir=tmp/'work'),
            lambda learn: spots_predict(learn, src/'series_000')[0])

def nextframe_case(tmp):
    from biofastai.nextframe import nextframe_train, nextframe_predict
    src = synth_nextframe(tmp/'nextframe', n=12, n_frames=6, size=16, seed=0)
    return (nextframe_train, src, dict(name='n', epochs=1, hidden=8), {}, lambda learn: nextframe_predict(learn, src/'sequences'/'cell_000.tif'))

WORKFLOWS = ['cellseg', 'rescunet', 'spines', 'spots', 'nextframe']

def run(wf, tmp, seed):
    "Train `wf` with `seed` in a fresh folder; the recorded losses and metrics, and the prediction of the exported model (checked against the trained one)."
    tmp.mkdir()
    train, source, experiment, kwargs, predict = globals()[f'{wf}_case'](tmp)
    learn = train(experiment, source, seed=seed, **kwargs)
    values = np.array([[float(v) for v in row] for row in learn.recorder.values])
    learn.export(tmp/'model.pkl')
    pred = np.asarray(predict(load_learner(tmp/'model.pkl')))
    np.testing.assert_array_equal(pred, np.asarray(predict(learn)))   # the exported model predicts as the trained one
    return values, pred

@pytest.mark.parametrize('wf', WORKFLOWS)
def test_same_seed_same_metrics_and_predictions(wf, tmp_path):
    a_metrics, a_pred = run(wf, tmp_path/'a', 0)
    b_metrics, b_pred = run(wf, tmp_path/'b', 0)
    assert a_metrics.size and np.isfinite(a_metrics).all(), a_metrics
    np.testing.assert_array_equal(a_metrics, b_metrics)   # train loss, valid loss and every metric, bit for bit
    np.testing.assert_array_equal(a_pred, b_pred)
    c_metrics, c_pred = run(wf, tmp_path/'c', 1)   # the comparison can tell runs apart
    assert not np.array_equal(a_metrics, c_metrics) or not np.array_equal(a_pred, c_pred)
