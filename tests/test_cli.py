"The installed `biofastai` console script, end to end, as the README's main job runs it."
import subprocess, sys, shutil
from pathlib import Path
import pandas as pd

def run_cli(*args):
    exe = shutil.which('biofastai', path=str(Path(sys.executable).parent)) or 'biofastai'
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=600)

def test_synth_all_writes_every_dataset(tmp_path):
    r = run_cli('synth', 'all', str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert (tmp_path/'cells'/'codes.txt').exists()
    assert list((tmp_path/'cells'/'FullImage').glob('*.tif'))
    assert list((tmp_path/'videos').glob('video_*/labels.tif'))
    assert list((tmp_path/'spots').glob('series_*/spots.csv'))
    assert list((tmp_path/'nextframe'/'sequences').glob('*.tif'))
    assert list((tmp_path/'dendrites'/'spines').glob('*.csv'))

def test_unknown_workflow_is_refused(tmp_path):
    r = run_cli('synth', 'nope', str(tmp_path))
    assert r.returncode == 2 and 'invalid choice' in r.stderr

def test_cellseg_train_and_predict(tmp_path):
    "The README's main job in miniature: built-in cells, a short training, a folder of predicted masks."
    assert run_cli('synth', 'cells', str(tmp_path/'cells'), '--n', '8').returncode == 0
    r = run_cli('cellseg', 'train', str(tmp_path/'cells'), '--codes', '1', '4', '7', '--arch', 'resnet18', '--epochs', '1',
                '--lr', '5e-3', '--size', '32', '--bs', '4', '--no-pretrained', '--out', str(tmp_path/'model.pkl'))
    assert r.returncode == 0, r.stderr
    assert 'validation: dice=' in r.stdout and 'fields with cells' in r.stdout and (tmp_path/'model.pkl').exists()
    r = run_cli('cellseg', 'predict', str(tmp_path/'model.pkl'), str(tmp_path/'cells'/'FullImage'), str(tmp_path/'pred'))
    assert r.returncode == 0, r.stderr
    assert len(list((tmp_path/'pred'/'masks').glob('*.tif'))) == 8

def test_bad_input_is_one_line_and_exit_2(tmp_path):
    "A BioDataError is one line on stderr naming the file and a fix the command line can apply, exit status 2 (the notebook tests --debug)."
    from biofastai.synth import synth_cells
    r = run_cli('cellseg', 'train', str(synth_cells(tmp_path/'cells', n=4, size=32)), '--loading-codes', '1', '150', '--epochs', '1', '--no-pretrained')
    errors = [l for l in r.stderr.splitlines() if l.startswith('biofastai: error:')]   # library warnings may come before it
    assert r.returncode == 2 and len(errors) == 1 and 'Traceback' not in r.stderr, r.stderr
    assert 'loading code 150' in errors[0] and 'use a raw channel 0-50 or one of the recipe codes' in errors[0]

def test_rescunet_and_spines_train_and_predict(tmp_path):
    "The other workflows' train and predict commands, on tiny built-in data."
    from biofastai.io import read_stack, read_mask
    from biofastai.synth import synth_videos, synth_dendrites
    from biofastai.rescunet import write_rescunet_samples
    v = synth_videos(tmp_path/'videos', n=1, n_frames=6, size=64, n_objects=2)/'video_000'
    write_rescunet_samples(read_stack(v/'image.tif')[:, 0], read_mask(v/'labels.tif'), tmp_path/'samples', 'v0', crop_size=32)
    r = run_cli('rescunet', 'train', str(tmp_path/'samples'), '--epochs', '1', '--width', '4', '--bs', '4', '--out', str(tmp_path/'rescunet.pkl'))
    assert r.returncode == 0, r.stderr
    assert 'validation: one-step IoU=' in r.stdout and 'copying the previous mask' in r.stdout
    r = run_cli('rescunet', 'predict', str(tmp_path/'rescunet.pkl'), str(tmp_path/'videos'), str(tmp_path/'tracks'))
    assert r.returncode == 0, r.stderr
    assert read_mask(tmp_path/'tracks'/'video_000.tif').shape == read_mask(v/'labels.tif').shape
    r = run_cli('spines', 'train', str(synth_dendrites(tmp_path/'dendrites', n=3, size=96)), '--epochs', '1', '--out', str(tmp_path/'spines.pkl'))
    assert r.returncode == 0, r.stderr
    assert 'validation: count error=' in r.stdout and '(LoG' in r.stdout
    r = run_cli('spines', 'predict', str(tmp_path/'spines.pkl'), str(tmp_path/'dendrites'/'images'), str(tmp_path/'counts'))
    assert r.returncode == 0, r.stderr
    assert len(pd.read_csv(tmp_path/'counts'/'counts.csv')) == 3
