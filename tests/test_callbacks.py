"Resume after a crash: a training process killed with SIGKILL mid-epoch, resumed from its checkpoint, ends as an uninterrupted run."
import json, os, signal, subprocess, sys, time
import pytest, torch
from biofastai.synth import synth_cells

SCRIPT = '''
import json, sys
from biofastai.callbacks import Checkpoint
from biofastai.cellseg import cellseg_train
source, ckpt, resume, out = sys.argv[1:]
experiment = dict(name='resume', loading_codes=[1, 4, 7], arch='resnet18', epochs=3, lr=5e-3)
learn = cellseg_train(experiment, source, size=64, bs=4, pretrained=False, num_workers=0, cbs=[Checkpoint(ckpt, resume=resume == '1')])
json.dump([[float(v) for v in row] for row in learn.recorder.values], open(out, 'w'))
'''

def _train(tmp_path, source, ckpt, resume, out):
    env = dict(os.environ, OMP_NUM_THREADS='1', MPLBACKEND='Agg')
    return subprocess.Popen([sys.executable, '-c', SCRIPT, str(source), str(ckpt), resume, str(out)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

def _epoch(ckpt):
    try: return torch.load(ckpt, weights_only=False)['epoch']
    except Exception: return -1

def test_killed_run_resumes_to_the_same_result(tmp_path):
    source = synth_cells(tmp_path/'cells', n=8, size=64, seed=0)
    whole = _train(tmp_path, source, tmp_path/'whole.pth', '0', tmp_path/'whole.json')
    assert whole.wait(timeout=600) == 0, whole.stderr.read()
    ckpt = tmp_path/'crash.pth'
    run = _train(tmp_path, source, ckpt, '0', tmp_path/'crash.json')
    deadline = time.time() + 600
    while _epoch(ckpt) < 1 and run.poll() is None and time.time() < deadline: time.sleep(0.05)
    assert run.poll() is None, f'the run ended before it could be killed: {run.stderr.read()}'
    run.send_signal(signal.SIGKILL); run.wait()
    assert _epoch(ckpt) == 1 and not (tmp_path/'crash.json').exists()   # killed in the middle, after epoch 1 was saved
    resumed = _train(tmp_path, source, ckpt, '1', tmp_path/'resumed.json')
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read()
    a, b = json.load(open(tmp_path/'whole.json')), json.load(open(tmp_path/'resumed.json'))
    assert len(a) == len(b) == 3
    assert a[-1] == pytest.approx(b[-1], rel=1e-4), f'uninterrupted {a[-1]}, resumed {b[-1]}'
