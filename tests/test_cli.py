"The installed `biofastai` console script, end to end, as the README's main job runs it."
import subprocess, sys, shutil
from pathlib import Path

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
    "A BioDataError is one line on stderr naming the file and a fix the command line can apply, exit status 2; --debug shows the traceback."
    assert run_cli('synth', 'cells', str(tmp_path/'cells'), '--n', '4').returncode == 0
    r = run_cli('cellseg', 'train', str(tmp_path/'cells'), '--loading-codes', '1', '150', '--epochs', '1', '--no-pretrained')
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert 'loading code 150' in r.stderr and 'use a raw channel 0-50 or one of the recipe codes' in r.stderr
    r = run_cli('cellseg', 'predict', str(tmp_path/'missing.pkl'), str(tmp_path/'cells'/'FullImage'), str(tmp_path/'pred'))
    assert r.returncode == 2 and 'missing.pkl: found no file' in r.stderr and 'Traceback' not in r.stderr
    r = run_cli('--debug', 'cellseg', 'predict', str(tmp_path/'missing.pkl'), str(tmp_path/'cells'/'FullImage'), str(tmp_path/'pred'))
    assert r.returncode == 1 and 'Traceback' in r.stderr and 'MissingFileError' in r.stderr
