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
