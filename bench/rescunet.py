"""ReSCU-Net propagation over 20 frames against copying the first mask to every frame; one step against copying the previous mask.

Data: built-in synthetic videos (`biofastai.synth.synth_videos`, 128x128, 20 frames, 5 cell-like objects that drift,
turn, deform and touch). The first `--n-train` videos give the training samples (64x64 crops around each object, one
per object and frame); the next `--n-test` videos are held out. In each held-out video every object is followed from its
true first-frame mask to the last frame with `propagate_labels`, and compared with the truth in frames 1-19.

Baseline: the first-frame mask copied unchanged to every frame (what a user gets without propagation).

One step: each frame t is also predicted from the true mask of frame t-1 (`step_iou`), beside that true previous
mask copied (`copy_step_iou`): how much the network adds in one step, without the errors propagation accumulates.
Both come from `rescunet_evaluate` on the held-out videos.

Last line: key=value pairs. Exit status 1 when a target is missed: iou_model >= 0.85 and iou_model >= iou_copy + 0.15.
"""
import argparse, sys, tempfile, time
from pathlib import Path
import torch
from fastai.torch_core import set_seed
from biofastai.io import read_stack, read_mask
from biofastai.synth import synth_videos
from biofastai.rescunet import write_rescunet_samples, rescunet_dls, rescunet_learner, rescunet_evaluate

def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--n-train', type=int, default=4, help='training videos')
    p.add_argument('--n-test', type=int, default=3, help='held-out videos')
    p.add_argument('--crop', type=int, default=64, help='side of the training crops (and the network input)')
    p.add_argument('--width', type=int, default=16, help="filters of the U-Net's first stage")
    p.add_argument('--concat-level', type=int, default=1)
    p.add_argument('--epochs', type=int, default=8)
    p.add_argument('--lr', type=float, default=3e-3)
    p.add_argument('--threads', type=int, default=0, help='torch CPU threads (0: torch default)')
    p.add_argument('--seed', type=int, default=0)
    args = p.parse_args()
    if args.threads: torch.set_num_threads(args.threads)

    tmp = Path(tempfile.mkdtemp())
    videos = synth_videos(tmp/'videos', n=args.n_train+args.n_test, seed=args.seed)
    read = lambda i: (read_stack(videos/f'video_{i:03d}'/'image.tif')[:, 0], read_mask(videos/f'video_{i:03d}'/'labels.tif'))
    for i in range(args.n_train): write_rescunet_samples(*read(i), tmp/'samples', f'v{i}', crop_size=args.crop, seed=args.seed+i)

    set_seed(args.seed)
    dls = rescunet_dls(tmp/'samples', bs=16, seed=args.seed)
    learn = rescunet_learner(dls, concat_level=args.concat_level, width=args.width)
    t0 = time.perf_counter()
    with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(args.epochs, args.lr)
    train_s = time.perf_counter()-t0
    print(f'trained {args.epochs} epochs on {len(dls.train_ds)} samples in {train_s:.0f}s; valid IoU by epoch',
          ' '.join(f'{v[-1]:.3f}' for v in learn.recorder.values))

    t0 = time.perf_counter()
    ev = rescunet_evaluate(learn, [read(i) for i in range(args.n_train, args.n_train+args.n_test)])
    predict_s = time.perf_counter()-t0
    by_frame = ev.groupby('frame')[['iou', 'copy_iou']].mean()
    print('mean IoU per frame 1-19, ReSCU-Net:', ' '.join(f'{v:.3f}' for v in by_frame.iou))
    print('mean IoU per frame 1-19, copy     :', ' '.join(f'{v:.3f}' for v in by_frame.copy_iou))
    iou_model, iou_copy = ev.iou.mean(), ev.copy_iou.mean()
    tracks = ev.groupby(['video', 'object']).iou.mean()
    met = iou_model >= 0.85 and iou_model >= iou_copy + 0.15
    print(f'iou_model={iou_model:.3f} iou_copy={iou_copy:.3f} iou_model_last={by_frame.iou.iloc[-1]:.3f} iou_model_worst_track={tracks.min():.3f} '
          f'step_iou_model={ev.step_iou.mean():.3f} step_iou_copy_prev={ev.copy_step_iou.mean():.3f} '
          f'n_tracks={len(tracks)} train_s={train_s:.0f} predict_s={predict_s:.0f} target_met={met}')
    sys.exit(0 if met else 1)

if __name__ == '__main__': main()
