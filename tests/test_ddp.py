"Two CPU processes under torchrun (gloo) train cellseg through `distributed()`: the same weights on both ranks, and the score of one process with the same total batch."
import hashlib, json, os, shutil, socket, subprocess, sys
from pathlib import Path
import pytest
from biofastai.synth import synth_cells

SCRIPT = '''
import hashlib, json, sys
from pathlib import Path
from fastai.torch_core import rank_distrib
from biofastai.distributed import distributed, is_rank0
from biofastai.cellseg import cellseg_train, cellseg_evaluate, cellseg_dls, cellseg_learner
data, out, bs, epochs = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
if epochs:
    with distributed() as cbs:
        learn = cellseg_train(dict(name='ddp', loading_codes=[1, 4, 7], arch='resnet18', lr=5e-3, epochs=epochs), data, size=32, bs=bs,
                              pretrained=False, cbs=cbs, num_workers=0, batch_tfms=[], checkpoint=out/'ddp.pth')
else: learn = cellseg_learner(cellseg_dls(data, [1, 4, 7], size=32, bs=bs, num_workers=0), 'resnet18', pretrained=False)   # untrained
sd = learn.model.state_dict()
digest = hashlib.sha256(b''.join(sd[k].numpy().tobytes() for k in sorted(sd))).hexdigest()
(out/f'rank{rank_distrib()}.json').write_text(json.dumps(dict(weights=digest, n_batches=getattr(learn, 'train_iter', 0))))
if is_rank0():
    ev, (loss, dice, _) = cellseg_evaluate(learn), learn.validate()   # the whole validation set, in this process
    (out/'score.json').write_text(json.dumps(dict(loss=float(loss), dice=float(dice), otsu=float(ev.otsu_dice.mean()), n=len(ev))))
'''

EPOCHS = 8

def _free_port() -> int:
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); return s.getsockname()[1]

def _train(tmp:Path, data:Path, nproc:int, bs:int, epochs:int) -> Path:
    "Run the script in `nproc` processes (torchrun, gloo) or in one plain process; its output folder."
    out = tmp/f'out{nproc}_{epochs}'; out.mkdir()
    args = [str(tmp/'train.py'), str(data), str(out), str(bs), str(epochs)]
    torchrun = shutil.which('torchrun', path=str(Path(sys.executable).parent))
    cmd = ([torchrun, '--nproc_per_node', str(nproc), '--master_addr', '127.0.0.1', '--master_port', str(_free_port())] if nproc>1 else [sys.executable]) + args
    env = os.environ | dict(OMP_NUM_THREADS='1', MKL_NUM_THREADS='1')
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=1200, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return out

def test_two_cpu_processes_train_like_one(tmp_path):
    "Both ranks train (the same number of batches) and end with identical weights, and score (Dice) within 0.1 of one process with the same total batch."
    # augmentation off, so that the runs differ only in batch-norm statistics (over 4 samples per rank instead of 8)
    data = synth_cells(tmp_path/'cells', n=30, size=32)   # 24 training samples: 3 batches of 8, or 3 per rank of 4
    (tmp_path/'train.py').write_text(SCRIPT)
    one, two, untrained = _train(tmp_path, data, 1, 8, EPOCHS), _train(tmp_path, data, 2, 4, EPOCHS), _train(tmp_path, data, 1, 8, 0)
    ranks = [json.loads((two/f'rank{r}.json').read_text()) for r in (0, 1)]
    assert ranks[0]['n_batches'] == ranks[1]['n_batches'] == json.loads((one/'rank0.json').read_text())['n_batches']
    assert ranks[0]['weights'] == ranks[1]['weights']   # gradients averaged: the same update on both ranks at every step
    s1, s2 = (json.loads((o/'score.json').read_text()) for o in (one, two))
    assert s1['n'] == s2['n'] == 6
    s0 = json.loads((untrained/'score.json').read_text())
    print(f"validation loss (dice): one process {s1['loss']:.3f} ({s1['dice']:.3f}), two processes {s2['loss']:.3f} ({s2['dice']:.3f}), "
          f"untrained {s0['loss']:.3f} ({s0['dice']:.3f}), otsu dice {s1['otsu']:.3f}")
    assert max(s1['loss'], s2['loss']) < s0['loss'] - 0.05   # both learned (Dice cannot tell: an untrained net calling every pixel a cell scores 0.4-0.7)
    assert abs(s1['dice'] - s2['dice']) < 0.1   # the whole validation set, scored in one process after training
