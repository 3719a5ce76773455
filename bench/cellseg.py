"""Cell segmentation on held-out synthetic cells: U-Net against an Otsu threshold, and a loading-code ablation.

Data: `biofastai.synth.synth_cells`, 16-channel fields of view (0-8 fluorescence: cytoplasm, membrane, mitochondria at
gains 0.25/1/4; 9-15 bright-field planes at defocus -3..+3, 12 in focus), a quarter of them cell-free controls.
The models train on 128 fields (seed 0; cellseg_train holds out a fifth of them for its validation loss) and are
scored on 24 other fields (seed 1) that no step of training or model choice sees.

Models: `cellseg_train` (fastai unet_learner, weighted cross-entropy, one-cycle at lr 3e-3, the workflow's default
augmentation, the best epoch's weights) with the same recipe for every loading code: 10 epochs from scratch on 48x48
random crops (about 120 steps of 8 crops), predicting whole 128x128 fields. To run in CPU minutes
the encoder is a ResNet-18 at half width (fastai's `xresnet18(widen=0.5)`, 7.9 M parameters with its decoder)
instead of the workflow's default pretrained ResNet-34 (41 M).

Scores, per held-out image: Dice, IoU, precision and recall of cell pixels on the fields with cells, with the mean
and 95% t-interval from `compare_models`; on the cell-free controls, the false-positive area (fraction of the field
called cell), all from `cellseg_evaluate`.

Baseline: Otsu's threshold (skimage) of each image after percentile normalisation and a Gaussian blur (sigma 1),
holes filled. The channel it thresholds, one of the nine fluorescence channels or the merge of 0, 3 and 6, is the one
with the best mean Dice on the 128 training fields: picked on training data, scored on held-out data, like the model.
Otsu always splits an image in two, so it calls cells on every cell-free control.

Label-free recipes: bright-field planes at defocus -3..+3 (`synth_cells`: phase contrast from the transport of
intensity, its sign flipping through focus, blur growing away from it, faint absorption of granules in focus).
Each bright-field model is also scored on the held-out fields as a microscope focused elsewhere would show
them: every bright-field channel replaced by the plane at defocus z, for each z. Planes -2 and +2 are seen in
training by no bright-field model, so they measure how a recipe generalises across focus: one plane (in focus,
or defocus +1) against one plane drawn per sample from defocus -3, -1, +1, +3 (loading code 105).

Targets (DESIGN.md section 6): Dice >= 0.90 on the held-out fields with cells for the fluorescence model, loading
codes [0, 3, 6], and above Otsu's; the random-plane bright-field model Dice >= 0.80 on the held-out fields (at its
validation plane, defocus +1) and on the planes -2 and +2 that no bright-field model saw; and above each one-plane
model on the planes neither of the two saw in training (in focus: -2, +2; defocus +1: -2, 0, +2). Last line: key=value figures; exit status 1 when a target is missed or an
experiment fails.
Run: python bench/cellseg.py [--out DIR] [--epochs 10]   (18 minutes on 2 CPU cores shared with other jobs, load
about 10; 5 models of about 120 optimizer steps each)
"""
import argparse, shutil, sys, tempfile, time, warnings
from functools import partial
from pathlib import Path
import numpy as np, pandas as pd
from fastai.torch_core import defaults
from fastai.callback.progress import ProgressCallback
from fastai.vision.models.xresnet import xresnet18
from biofastai.synth import synth_cells, CELL_CHANNELS, IN_FOCUS_PLANE
from biofastai.io import read_image, read_mask, write_tiff, normalize_percentile
from biofastai.metrics import dice
from biofastai.cellseg import cellseg_items, cellseg_train, cellseg_evaluate, otsu_mask
from biofastai.compare import compare_models

FLUORESCENCE, TARGET, TARGET_BF = [0, 3, 6], 0.90, 0.80
BF_PLANES, UNSEEN = range(9, 16), (-2, 2)   # bright-field channels (defocus -3..+3); planes no bright-field model trains on
RECIPES = {  # name: (loading codes, what the model sees)
    'fluorescence': (FLUORESCENCE, 'cytoplasm, membrane, mitochondria (gain 0.25) as 3 channels'),
    'fluo_merged': ([100], 'the same three channels merged into one'),
    'bf_in_focus': ([12], 'the in-focus bright-field plane only'),
    'bf_one_plane': ([13], 'the bright-field plane at defocus +1 only'),
    'bf_random_plane': ([105], 'one bright-field plane of defocus -3, -1, +1, +3, drawn per sample'),
}
ONE_PLANE = ['bf_in_focus', 'bf_one_plane']
PLANES = range(-3, 4)
SEEN = {'bf_in_focus': {0}, 'bf_one_plane': {1}, 'bf_random_plane': {-3, -1, 1, 3}}   # defocus of the training planes

def unseen_by(*names) -> list:
    "The defocus planes none of the models `names` trained on."
    return [z for z in PLANES if not any(z in SEEN[n] for n in names)]


def at_focus(test_root:Path, dest:Path, z:int) -> Path:
    "The fields of `test_root` as seen at defocus `z`: every bright-field channel replaced by that plane."
    items = cellseg_items(test_root)
    (dest/'Mask_Norm').mkdir(parents=True, exist_ok=True)
    for img,msk in zip(items['image'], items['mask']):
        x = read_image(img)
        x[BF_PLANES.start:BF_PLANES.stop] = x[IN_FOCUS_PLANE+z]
        write_tiff(dest/'FullImage'/img.name, x, axes='CYX'); shutil.copy(msk, dest/'Mask_Norm'/msk.name)
    return dest

def evaluate(learn, test_root:Path, planes:dict) -> pd.DataFrame:
    "`cellseg_evaluate` on the held-out fields, with a column of Dice per image at each defocus in `planes`."
    res = cellseg_evaluate(learn, test_root, tile_size=128)
    for z,root in planes.items(): res[f'dice_z{z:+d}'] = cellseg_evaluate(learn, root, tile_size=128).dice.values
    return res

def _fields(root:Path) -> list:
    "(image, cell mask) of every field under `root`."
    items = cellseg_items(root)
    return [(read_image(i), read_mask(m)>0) for i,m in zip(items['image'], items['mask'])]

def otsu_scores(fields:list, channels:list) -> pd.DataFrame:
    "Per-field Dice on fields with cells, and the false-positive area on cell-free fields."
    rows = []
    for image,truth in fields:
        p = otsu_mask(normalize_percentile(image[channels]))
        rows.append(dict(dice=dice(p, truth) if truth.any() else np.nan, fp_area=np.nan if truth.any() else float(p.mean())))
    return pd.DataFrame(rows)

def otsu_baseline(train_root:Path, test_root:Path) -> tuple[str, pd.DataFrame]:
    "The Otsu channel choice with the best mean Dice on the training fields, and its held-out scores."
    choices = {f'channel {c} ({CELL_CHANNELS[c]})': [c] for c in range(9)} | {'merge of 0, 3, 6': FLUORESCENCE}
    train_fields = _fields(train_root)
    best = max(choices, key=lambda k: otsu_scores(train_fields, choices[k]).dice.mean())
    return best, otsu_scores(_fields(test_root), choices[best])

def main(out:Path, epochs:int, seed:int=0) -> int:
    start = time.perf_counter()
    train_root = synth_cells(out/'train', n=128, size=128, seed=seed)
    test_root = synth_cells(out/'test', n=24, size=128, seed=seed+1)
    otsu_choice, otsu = otsu_baseline(train_root, test_root)

    planes = {z: at_focus(test_root, out/f'test_z{z:+d}', z) for z in PLANES}
    arch = partial(xresnet18, widen=0.5)
    experiments = [dict(name=n, loading_codes=codes, arch=arch, penalty=1., epochs=epochs, lr=3e-3) for n,(codes,_) in RECIPES.items()]
    train = partial(cellseg_train, source=train_root, size=48, bs=8, seed=seed, pretrained=False, num_workers=0)
    res = compare_models(experiments, train, partial(evaluate, test_root=test_root, planes=planes), out/'models', seed=seed)

    pd.set_option('display.width', 200)
    table = pd.DataFrame({'loading_codes': res.loading_codes.map(str),
                          'dice [95% CI]': [f'{r.dice:.3f} [{r.dice_lo:.3f}, {r.dice_hi:.3f}]' for r in res.itertuples()],
                          'iou': res.iou.round(3), 'precision': res.precision.round(3), 'recall': res.recall.round(3),
                          'fp_area': res.fp_area.round(4), 'train_s': res.train_time.round(0), 'input': [RECIPES[n][1] for n in res.index]},
                         index=res.index)
    n_cells, n_neg = int(otsu.dice.notna().sum()), int(otsu.fp_area.notna().sum())
    print(f'\nLoading-code ablation: {len(res)} recipes, same split, seed and schedule ({epochs} epochs, {res.n_params.iloc[0]:,} parameters); '
          f'held-out: {n_cells} fields with cells, {n_neg} cell-free')
    print(table.to_string())
    print(f"Otsu baseline ({otsu_choice}, chosen on the training fields): dice {otsu.dice.mean():.3f}, fp_area {otsu.fp_area.mean():.4f}")

    bf = [n for n in res.index if n.startswith('bf_')]
    focus = res.loc[bf, [f'dice_z{z:+d}' for z in PLANES]].astype(float)
    focus['unseen_-2_+2'] = focus[[f'dice_z{z:+d}' for z in UNSEEN]].mean(1)
    print('\nBright-field models at each defocus of the held-out fields (Dice on fields with cells); '
          'seen in training: in_focus 0, one_plane +1, random_plane -3, -1, +1, +3')
    print(focus.round(3).to_string())
    pairs = {n: unseen_by(n, 'bf_random_plane') for n in ONE_PLANE}
    fair = pd.DataFrame({n: {'planes': ' '.join(f'{z:+d}' for z in zs), 'one_plane_model': focus.loc[n, [f'dice_z{z:+d}' for z in zs]].mean(),
                             'bf_random_plane': focus.loc['bf_random_plane', [f'dice_z{z:+d}' for z in zs]].mean()} for n,zs in pairs.items()}).T
    print('\nEach one-plane model against the random-plane model on the planes neither saw in training (mean Dice)')
    print(fair.to_string(float_format='{:.3f}'.format))

    failed = list(res.index[res.status=='failed'])
    dice_model, dice_otsu = float(res.loc['fluorescence', 'dice']), float(otsu.dice.mean())
    unseen = focus['unseen_-2_+2']
    bf_met = bool(unseen['bf_random_plane'] >= TARGET_BF and res.loc['bf_random_plane', 'dice'] >= TARGET_BF
                  and all(fair.loc[n, 'bf_random_plane'] > fair.loc[n, 'one_plane_model'] for n in ONE_PLANE))
    target_met = bool(dice_model >= TARGET and dice_model > dice_otsu and bf_met) and not failed
    print(f"dice_model={dice_model:.3f} dice_model_lo={res.loc['fluorescence', 'dice_lo']:.3f} dice_otsu={dice_otsu:.3f} "
          f"best_recipe={res.dice.idxmax()} dice_merged={res.loc['fluo_merged', 'dice']:.3f} dice_bf_in_focus={res.loc['bf_in_focus', 'dice']:.3f} "
          f"dice_bf_random_plane={res.loc['bf_random_plane', 'dice']:.3f} unseen_bf_random_plane={unseen['bf_random_plane']:.3f} "
          f"unseen_bf_in_focus={unseen['bf_in_focus']:.3f} unseen_bf_one_plane={unseen['bf_one_plane']:.3f} "
          f"fair_in_focus={fair.loc['bf_in_focus', 'one_plane_model']:.3f}/{fair.loc['bf_in_focus', 'bf_random_plane']:.3f} "
          f"fair_one_plane={fair.loc['bf_one_plane', 'one_plane_model']:.3f}/{fair.loc['bf_one_plane', 'bf_random_plane']:.3f} "
          f"fp_area_model={res.loc['fluorescence', 'fp_area']:.4f} fp_area_otsu={otsu.fp_area.mean():.4f} "
          f"failed={len(failed)} seconds={time.perf_counter()-start:.0f} target_met={target_met}")
    return 0 if target_met else 1

if __name__=='__main__':
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--out', type=Path, help='keep data and models here (a re-run reuses finished models); default: a temporary folder')
    p.add_argument('--epochs', type=int, default=10, help='epochs per model')
    args = p.parse_args()
    warnings.filterwarnings('ignore')
    defaults.callbacks = [cb for cb in defaults.callbacks if cb is not ProgressCallback]  # one line per epoch, no bars
    out = args.out or Path(tempfile.mkdtemp(prefix='bench_cellseg_'))
    try: sys.exit(main(out, args.epochs))
    finally:
        if args.out is None: shutil.rmtree(out, ignore_errors=True)
