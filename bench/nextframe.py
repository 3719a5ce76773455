"""Next-frame prediction: the seed's ConvLSTM model and the next-step variants against copy-last-frame and
mean-frame, over the whole cell and over its interior.

Data: built-in synthetic localisation dynamics (`biofastai.synth.synth_nextframe`: pole-to-pole oscillation, a ring
forming at mid-cell, diffuse protein getting brighter or dimmer, in growing rod-shaped cells), 32x32 frames.
Training: `--n-train` sequences of 8 frames (a fifth held out for validation). Test: `--n-test` sequences of 10
frames from another seed. The next frame (frame 8 from frames 1-7, the time range of training) is scored by
`nextframe_evaluate`, which computes the model and both baselines in the same pass; the 3-step rollout (frames
8-10 from frames 1-7, each prediction fed back as an input) by `rollout_error`. The interior is the cell (Li's threshold of the target frame) with a 2-pixel
rim eroded away: the part the seed's network did not learn.

Models: the seed's (ReLU, BatchNorm, ConvLSTM, Conv2d on the last hidden state) and the next-step variants of its
authors' list (residual connection; a prediction and a loss per step; a causal 3D-convolution head over all
hidden states; an encoder-decoder); by default the two best of them in trial runs, to keep the bench to a few
minutes (`--variants` picks others). The best variant is picked on the validation loss, never on the test set.

Last line: key=value pairs. Exit status 1 when a target is missed:
interior RMSE of the best variant <= 0.7 x copy-last, and below the seed model's interior RMSE.
"""
import argparse, sys, tempfile, time
from functools import partial
from pathlib import Path
import pandas as pd, torch
from biofastai.synth import synth_nextframe
from fastai.torch_core import defaults
from fastai.callback.progress import ProgressCallback
from biofastai.nextframe import read_sequence, nextframe_items, nextframe_train, nextframe_evaluate, rollout_error

VARIANTS = dict(residual=dict(head='last', residual=True),
                per_step_residual=dict(head='per_step', residual=True),
                conv3d_residual=dict(head='conv3d', residual=True),
                encoder_decoder_residual=dict(head='last', residual=True, encoder_decoder=True))
DEFAULT_VARIANTS = 'per_step_residual,conv3d_residual'

def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--n-train', type=int, default=256)
    p.add_argument('--n-test', type=int, default=96)
    p.add_argument('--epochs', type=int, default=12)
    p.add_argument('--hidden', type=int, default=32)
    p.add_argument('--lr', type=float, default=3e-3)
    p.add_argument('--variants', default=DEFAULT_VARIANTS, help=f'comma-separated next-step variants to train, from {", ".join(VARIANTS)}')
    p.add_argument('--threads', type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument('--seed', type=int, default=0)
    args = p.parse_args()
    if args.threads: torch.set_num_threads(args.threads)
    defaults.callbacks = [c for c in defaults.callbacks if c is not ProgressCallback]   # no progress bars in the log
    tmp = Path(tempfile.mkdtemp())
    train = synth_nextframe(tmp/'train', n=args.n_train, n_frames=8, seed=args.seed)
    test = synth_nextframe(tmp/'test', n=args.n_test, n_frames=10, seed=args.seed+1)
    test8 = [read_sequence(f)[:8] for f in nextframe_items(test).sequence]   # the next frame within the training time range
    fit = partial(nextframe_train, source=train, bs=16, seed=args.seed)
    res, learners = {}, {}
    for name, cfg in [('seed', dict(head='last', residual=False))] + [(v, VARIANTS[v]) for v in args.variants.split(',')]:
        t0 = time.perf_counter()
        learn = fit(dict(name=name, epochs=args.epochs, lr=args.lr, hidden=args.hidden, **cfg))
        with learn.no_bar(), learn.no_logging(): valid_loss = float(learn.validate()[1])   # next-frame RMSE on validation
        ev = nextframe_evaluate(learn, test8)
        res[name], learners[name] = dict(ev=ev, valid=valid_loss, time=time.perf_counter()-t0), learn
        print(f"{name:18s} train {res[name]['time']:5.0f} s  valid next-frame RMSE {valid_loss:.4f}  test interior RMSE {ev.rmse_interior.mean():.4f}"
              f"  cell {ev.rmse_cell.mean():.4f}  SSIM interior {ev.ssim_interior.mean():.3f}", flush=True)
    ev = res['seed']['ev']
    print(f"{'copy_last':18s} test interior RMSE {ev.copy_last_rmse_interior.mean():.4f}  cell {ev.copy_last_rmse_cell.mean():.4f}  SSIM interior {ev.copy_last_ssim_interior.mean():.3f}")
    print(f"{'mean_frame':18s} test interior RMSE {ev.mean_frame_rmse_interior.mean():.4f}  cell {ev.mean_frame_rmse_cell.mean():.4f}  SSIM interior {ev.mean_frame_ssim_interior.mean():.3f}")
    best = min((n for n in res if n!='seed'), key=lambda n: res[n]['valid'])
    b, s = res[best]['ev'], res['seed']['ev']
    print('by kind (interior RMSE, best variant / copy-last):')
    kinds = pd.read_csv(test/'sequences.csv').kind.values   # rows of `b` are the test sequences in order
    for k, g in b.groupby(kinds): print(f'  {k:12s} {g.rmse_interior.mean():.4f} / {g.copy_last_rmse_interior.mean():.4f}')
    roll = rollout_error(learners[best], test, steps=3).groupby('k').mean(numeric_only=True)
    print('rollout (interior RMSE, model / copy-last):', '  '.join(f'k={k}: {r.rmse_interior:.4f} / {r.copy_last_rmse_interior:.4f}' for k, r in roll.iterrows()))
    out = dict(best=best, interior_best=b.rmse_interior.mean(), interior_seed=s.rmse_interior.mean(),
               interior_copy_last=s.copy_last_rmse_interior.mean(), interior_mean_frame=s.mean_frame_rmse_interior.mean(),
               cell_best=b.rmse_cell.mean(), cell_seed=s.rmse_cell.mean(), cell_copy_last=s.copy_last_rmse_cell.mean(),
               cell_mean_frame=s.mean_frame_rmse_cell.mean(), ssim_interior_best=b.ssim_interior.mean(), ssim_interior_copy_last=s.copy_last_ssim_interior.mean(),
               rollout3_best=roll.rmse_interior[3], rollout3_copy_last=roll.copy_last_rmse_interior[3])
    out['ratio_best_copy_last'] = out['interior_best']/out['interior_copy_last']
    ok = out['ratio_best_copy_last'] <= 0.7 and out['interior_best'] < out['interior_seed']
    print(' '.join(f'{k}={v:.4f}' if isinstance(v, float) else f'{k}={v}' for k, v in out.items()) + f' ok={int(ok)}')
    sys.exit(0 if ok else 1)

if __name__ == '__main__': main()
