"""fastai's training pipeline against a hand-written PyTorch loop: same model, data, batch size, augmentation and device.

The model is the cellseg U-Net (`cellseg_learner`, resnet18 encoder, no pretrained weights) on built-in 3-channel
fields of view (`synth_cells`, loading codes 1 4 7). fastai trains it with `fit_one_cycle` through `cellseg_dls`:
files read and normalised per item by `LoadChannels`, fastai's callbacks (recorder, Dice and IoU metrics), and with
`--augment` the default `aug_transforms` on the batch. The hand loop trains a copy of the same initial model with the
same loss (`WeightedCrossEntropy`), torch's AdamW (foreach, its fastest path on the CPU) under `OneCycleLR` (fastai's defaults: wd 0.01, 25 % warm-up,
betas 0.95-0.85/0.99), a torch `DataLoader` over the same files read by the same `LoadChannels`, and with `--augment` the
same fastai batch transforms called by hand; each epoch ends with a validation pass that computes loss and Dice.
Throughput is training samples per second over whole epochs (validation included, as in both), the best of
`--repeats` interleaved runs, so a burst of load from other processes on the machine does not decide the ratio.

Where fastai falls short, the bench names the slow part by splitting each pipeline's time per training batch into
data loading (iterating its loader alone, batch transforms included), the model step (the same model on batches
held in memory, timed once for both) and the rest (validation, callbacks, optimizer and scheduler), with the optimizer step timed alone (fastai's
`Optimizer` against torch's AdamW): the part where fastai spends the most beyond the hand loop is named.

Last line: key=value pairs. Exit status 1 when ratio = fastai samples/s / hand samples/s < 0.85.
"""
import argparse, copy, sys, tempfile, time
from pathlib import Path
import numpy as np, torch
from torch.utils.data import DataLoader, Dataset
from fastai.torch_core import set_seed
from biofastai.synth import synth_cells
from biofastai.io import read_mask
from biofastai.channels import channel_loader
from biofastai.cellseg import cellseg_dls, cellseg_learner

TARGET = 0.85

class Fields(Dataset):
    "The (image, mask) pairs of `items`, read with `load` (fastai's `LoadChannels`): the hand loop's dataset."
    def __init__(self, items, load, train): self.items, self.load, self.train = items.reset_index(drop=True), load, train
    def __len__(self): return len(self.items)
    def __getitem__(self, i):
        r = self.items.iloc[i]
        x = self.load(r['image'], split_idx=0 if self.train else 1)
        return torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(read_mask(r['mask']).astype(np.int64))

def hand_loaders(dls, bs):
    "torch `DataLoader`s over fastai's split of the same files."
    load = channel_loader(dls)
    return (DataLoader(Fields(dls.train_ds.items, load, True), bs, shuffle=True, drop_last=True),
            DataLoader(Fields(dls.valid_ds.items, load, False), bs))

def hand_fit(model, loss_func, train_dl, valid_dl, epochs, lr, batch_tfms):
    "A plain PyTorch one-cycle loop with a validation pass per epoch; training samples seen."
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.95, 0.99), weight_decay=0.01, foreach=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=epochs*len(train_dl), pct_start=0.25, base_momentum=0.85, max_momentum=0.95)
    n = 0
    for _ in range(epochs):
        model.train()
        for x, y in train_dl:
            for t in batch_tfms: x, y = t((x, y), split_idx=0)
            loss = loss_func(model(x), y)
            opt.zero_grad(); loss.backward(); opt.step(); sched.step()
            n += len(x)
        model.eval(); inter = total = 0
        with torch.no_grad():
            for x, y in valid_dl:
                out = model(x); loss_func(out, y)
                p, t = out.argmax(1)!=0, y!=0
                inter += (p&t).sum().item(); total += (p.sum()+t.sum()).item()
    return n

def fastai_fit(learn, epochs, lr):
    "`fit_one_cycle` as `cellseg_fit` runs it (no progress bar); training samples seen."
    with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(epochs, lr)
    return epochs*len(learn.dls.train)*learn.dls.train.bs

def timed(f, *args):
    start = time.perf_counter(); n = f(*args)
    return n/(time.perf_counter()-start)

def loading_s(dl, batch_tfms=(), batches=None) -> float:
    "Seconds per batch of iterating `dl` alone, with `batch_tfms` applied by hand."
    start, n = time.perf_counter(), 0
    for x, y in dl:
        for t in batch_tfms: x, y = t((x, y), split_idx=0)
        n += 1
        if n==batches: break
    return (time.perf_counter()-start)/n

def step_s(learn) -> float:
    "Seconds per training step of the model alone, on batches held in memory."
    held = list(learn.dls.train)
    model, opt = learn.model.train(), torch.optim.AdamW(learn.model.parameters(), lr=1e-3)
    start = time.perf_counter()
    for x, y in held:
        loss = learn.loss_func(model(x), y); opt.zero_grad(); loss.backward(); opt.step()
    return (time.perf_counter()-start)/len(held)

def opt_step_s(learn, steps:int=5) -> dict:
    "Seconds per optimizer step on the model's current gradients: fastai's optimizer (the learner's) and torch's AdamW."
    x, y = learn.dls.train.one_batch()
    learn.model.train(); learn.loss_func(learn.model(x), y).backward()
    if learn.opt is None: learn.create_opt()
    out = {}
    for k, opt in (('fastai', learn.opt), ('hand', torch.optim.AdamW(learn.model.parameters(), lr=1e-3, foreach=True))):
        opt.step()   # creates the state
        start = time.perf_counter()
        for _ in range(steps): opt.step()
        out[k] = (time.perf_counter()-start)/steps
    return out

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--n', type=int, default=64, help='fields of view (80 %% train)')
    p.add_argument('--size', type=int, default=64)
    p.add_argument('--bs', type=int, default=8)
    p.add_argument('--epochs', type=int, default=2)
    p.add_argument('--repeats', type=int, default=2)
    p.add_argument('--augment', action='store_true', help="fastai's default aug_transforms in both pipelines")
    p.add_argument('--threads', type=int, default=1)
    p.add_argument('--seed', type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = synth_cells(Path(tempfile.mkdtemp())/'cells', n=args.n, size=args.size, seed=args.seed)
    set_seed(args.seed)
    dls = cellseg_dls(data, [1, 4, 7], bs=args.bs, num_workers=0, **({} if args.augment else dict(batch_tfms=[])))
    learn = cellseg_learner(dls, 'resnet18', pretrained=False)
    init, hand_model = copy.deepcopy(learn.model.state_dict()), copy.deepcopy(learn.model)   # before any forward pass leaves tensors in the U-Net's hooks
    train_dl, valid_dl = hand_loaders(dls, args.bs)
    batch_tfms = list(dls.train.after_batch.fs) if args.augment else []
    lr, fastai_sps, hand_sps = 1e-3, [], []
    first_step = step_s(learn)   # also warms up the allocator and kernels before anything is timed
    for r in range(args.repeats):   # interleaved, best of each
        hand_model.load_state_dict(init)
        hand_sps.append(timed(hand_fit, hand_model, learn.loss_func, train_dl, valid_dl, args.epochs, lr, batch_tfms))
        learn.model.load_state_dict(init); learn.opt = None
        fastai_sps.append(timed(fastai_fit, learn, args.epochs, lr))
        print(f'run {r}: fastai {fastai_sps[-1]:.1f} samples/s, hand loop {hand_sps[-1]:.1f} samples/s', flush=True)
    fastai_best, hand_best = max(fastai_sps), max(hand_sps)
    ratio = fastai_best/hand_best
    model_s = min(first_step, step_s(learn))   # the same model and step in both
    data = dict(fastai=loading_s(learn.dls.train), hand=loading_s(train_dl, batch_tfms))
    fit = dict(fastai=args.bs/fastai_best, hand=args.bs/hand_best)   # seconds per training batch, validation included
    rest = {k: fit[k]-data[k]-model_s for k in fit}   # validation, callbacks, optimizer and scheduler, bookkeeping
    for k in fit: print(f'{k}: {fit[k]*1e3:.0f} ms per training batch = data {data[k]*1e3:.0f} + model step {model_s*1e3:.0f} '
                        f'+ validation, callbacks and the rest {rest[k]*1e3:.0f}')
    opt = opt_step_s(learn)
    print(f'optimizer step: fastai {opt["fastai"]*1e3:.1f} ms, torch AdamW {opt["hand"]*1e3:.1f} ms')
    excess = {'data loading and transforms': data['fastai']-data['hand'], 'callbacks and validation': rest['fastai']-rest['hand']-(opt['fastai']-opt['hand']),
              'optimizer': opt['fastai']-opt['hand']}
    slow = 'none' if ratio >= TARGET else max(excess, key=excess.get).replace(' ', '_')
    print(f'fastai_sps={fastai_best:.2f} hand_sps={hand_best:.2f} augment={args.augment} bs={args.bs} model_ms={model_s*1e3:.1f} '
          f'data_ms={data["fastai"]*1e3:.1f} hand_data_ms={data["hand"]*1e3:.1f} rest_ms={rest["fastai"]*1e3:.1f} hand_rest_ms={rest["hand"]*1e3:.1f} '
          f'opt_ms={opt["fastai"]*1e3:.1f} hand_opt_ms={opt["hand"]*1e3:.1f} '
          f'slow_part={slow} ratio={ratio:.3f} target={TARGET}')
    return 0 if ratio >= TARGET else 1

if __name__ == '__main__': sys.exit(main())
