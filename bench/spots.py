"""Spot bench: does a recurrent CNN find the faint tail frames of transcription bursts that a single-frame detector misses?

Trains the spot network in `forward` and `forward_backward` mode on built-in bursts (`synth_spots`, snr 4, 5 and 6: the
first frame of a burst and the end of its decay are at half the peak amplitude, 2-3 noise standard deviations) and
scores it on held-out series beside a LoG detector (skimage `blob_log`, threshold tuned for F1 on the training series)
and, when it can run here, Spotiflow trained from scratch on the same training frames.

Spot F1: frame by frame Hungarian matching within 3 px (`biofastai.metrics.match_spots`' rule), pooled over the test series.
Tail F1: the same matching, then only the faint tail spots (amplitude <= 0.6 x the burst peak; every burst of a series has
the same peak) and the predictions matched to them or to nothing are kept.
Targets: forward_backward F1 >= 0.85 and >= LoG + 0.2; tail F1 forward_backward >= forward >= Spotiflow.
The last line holds key=value pairs; the exit status is 1 when a target is missed.
"""
import argparse, importlib.util, sys, tempfile, time
from pathlib import Path
import numpy as np, pandas as pd, torch
from fastai.callback.progress import ProgressCallback
from fastai.learner import defaults
from biofastai.synth import synth_spots
from biofastai.spots import spots_items, spots_train, spots_evaluate

def pooled(ev:pd.DataFrame, prefix:str='') -> dict:
    "F1 over all test series from summed counts, and the mean tail F1."
    tp, fp, fn = (ev[prefix+k].sum() for k in ('tp', 'fp', 'fn'))
    return dict(f1=2*tp/(2*tp+fp+fn), tail_f1=ev[prefix+'tail_f1'].mean())

def spotiflow_status() -> str:
    "Why Spotiflow cannot run here, or '' when it can."
    if importlib.util.find_spec('spotiflow') is None: return 'not installed'
    missing = [m for m in ('lightning', 'dask', 'csbdeep', 'wandb', 'tensorboard', 'crick', 'pydash', 'zarr') if importlib.util.find_spec(m) is None]
    return f"missing dependencies {','.join(missing)} (the wheel is installed --no-deps)" if missing else ''

def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--n_train', type=int, default=12, help='training series per snr')
    p.add_argument('--n_test', type=int, default=6, help='test series per snr')
    p.add_argument('--epochs', type=int, default=40)
    p.add_argument('--layer_depth', type=int, default=32)
    p.add_argument('--lr', type=float, default=1e-2)
    p.add_argument('--spot_weight', type=float, default=5., help='loss weight of spot pixels')
    p.add_argument('--seed', type=int, default=0)
    a = p.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    defaults.callbacks = [c for c in defaults.callbacks if c is not ProgressCallback]
    root = Path(tempfile.mkdtemp(prefix='bench_spots_'))
    for i, snr in enumerate((4, 5, 6)):
        synth_spots(root/'train'/f'snr{snr}', n=a.n_train, n_frames=12, size=48, snr=snr, seed=1000+i)
        synth_spots(root/'test'/f'snr{snr}', n=a.n_test, n_frames=12, size=48, snr=snr, seed=2000+i)
    items = pd.concat([spots_items(root/'train').assign(is_valid=False), spots_items(root/'test').assign(is_valid=True)], ignore_index=True)
    res, times = {}, {}
    for arch in ('forward', 'forward_backward'):
        t0 = time.perf_counter()
        learn = spots_train(dict(name=arch, arch_path=arch, layer_depth=a.layer_depth, epochs=a.epochs, lr=a.lr, background_weight=0.3,
                                 spot_weight=a.spot_weight),
                            items, seed=a.seed, work_dir=root/'work')
        times[arch] = time.perf_counter()-t0
        ev = spots_evaluate(learn)
        res[arch], res['log'] = pooled(ev), pooled(ev, 'log_')
        print(f"{arch}: F1 {res[arch]['f1']:.3f}, tail F1 {res[arch]['tail_f1']:.3f} (threshold {ev.threshold[0]:.2f}, {times[arch]:.0f} s training); "
              f"LoG: F1 {res['log']['f1']:.3f}, tail F1 {res['log']['tail_f1']:.3f} (threshold {ev.log_threshold[0]:.3f})", flush=True)
    why = spotiflow_status()
    if why: print(f'Spotiflow baseline not run: {why}')
    fb, fw, log = res['forward_backward'], res['forward'], res['log']
    checks = {'f1>=0.85': fb['f1']>=0.85, 'f1>=log+0.2': fb['f1']>=log['f1']+0.2, 'tail fb>=fwd': fb['tail_f1']>=fw['tail_f1']}
    missed = [k for k, ok in checks.items() if not ok]
    if missed: print('missed targets:', ', '.join(missed))
    kv = dict(fb_f1=fb['f1'], fwd_f1=fw['f1'], log_f1=log['f1'], fb_tail_f1=fb['tail_f1'], fwd_tail_f1=fw['tail_f1'], log_tail_f1=log['tail_f1'])
    print(' '.join(f'{k}={v:.3f}' for k, v in kv.items()) + f" spotiflow={'unavailable' if why else 'run'} "
          f"train_s_fwd={times['forward']:.0f} train_s_fb={times['forward_backward']:.0f} ok={int(not missed)}")
    sys.exit(1 if missed else 0)

if __name__ == '__main__': main()
