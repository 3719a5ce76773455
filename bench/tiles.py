"""Tiled prediction vs one whole-image pass: time, pixels processed, seams and peak memory.

The default model is a ResNet-like stack of 3x3 residual blocks at full resolution, without pooling: the shape of
biofastai's full-resolution networks (the recurrent spot detector, the spine scanner), with a receptive-field radius
that is known exactly (1 + 2*blocks = 9), so "tiled equals whole" is a hard, checkable claim. `--model unet` runs
fastai's DynamicUnet on resnet18 (the cell-segmentation and ReSCU-Net model) with `multiple=32`: its receptive field
is larger than any practical overlap, so tiles cannot match a whole-image pass exactly and the seam figure shows
how well blending hides the difference; it is too slow for 1024x1024 on 2 cores (use --size 512).

Peak memory is measured in a fresh subprocess per method: the peak resident set size (VmHWM, reset through
/proc/self/clear_refs where Linux allows it, else ru_maxrss) minus the resident size just before the call.

Last line: key=value pairs. Exit status 1 when a target is missed:
overhead = tiled_s / (whole_s * pixel_ratio) <= 1.2 and max_seam <= 1e-3.
"""
import argparse, resource, subprocess, sys, time
import numpy as np, torch
from torch import nn
from biofastai.tiles import predict_tiled, seam_score, tile_starts

class ResBlock(nn.Module):
    "Two 3x3 convolutions with a skip connection."
    def __init__(self, nf):
        super().__init__()
        self.convs = nn.Sequential(nn.Conv2d(nf, nf, 3, padding=1), nn.ReLU(), nn.Conv2d(nf, nf, 3, padding=1))
    def forward(self, x): return torch.relu(x + self.convs(x))

def conv_stack(c_in=1, c_out=2, width=16, blocks=4):
    "Full-resolution residual conv stack: receptive-field radius 1 + 2*blocks."
    return nn.Sequential(nn.Conv2d(c_in, width, 3, padding=1), nn.ReLU(), *[ResBlock(width) for _ in range(blocks)],
                         nn.Conv2d(width, c_out, 1))

def resnet18_unet(c_in=1, c_out=2):
    from fastai.vision.learner import create_body
    from fastai.vision.models.unet import DynamicUnet
    from torchvision.models import resnet18
    return DynamicUnet(create_body(resnet18(), n_in=c_in, pretrained=False), c_out, (256, 256))

def setup(args):
    "The seeded model, image and tiling options."
    torch.manual_seed(args.seed); torch.set_num_threads(args.threads)
    model = (conv_stack() if args.model=='convnet' else resnet18_unet()).eval()
    image = np.random.default_rng(args.seed).normal(size=(1, args.size, args.size)).astype(np.float32)
    radius = 9 if args.model=='convnet' else None
    kw = dict(tile_size=args.tile, overlap=args.overlap, batch_size=args.batch_size, multiple=1 if args.model=='convnet' else 32)
    return model, image, radius, kw

def whole(model, image):
    with torch.no_grad(): return model(torch.from_numpy(image)[None])[0]

def tiled(model, image, kw): return predict_tiled(model, image, **kw)

def best_time(f, repeats):
    f()  # warm-up
    ts = []
    for _ in range(repeats):
        t = time.perf_counter(); f(); ts.append(time.perf_counter()-t)
    return min(ts)

def _status_kb(key):
    return int(next(l for l in open('/proc/self/status') if l.startswith(key)).split()[1])

def measure_peak(args):
    "Run one prediction in this (fresh) process and print its peak memory increase in MB."
    model, image, _, kw = setup(args)
    before = _status_kb('VmRSS')
    try: open('/proc/self/clear_refs', 'w').write('5'); reset = True
    except OSError: reset = False
    whole(model, image) if args.measure=='whole' else tiled(model, image, kw)
    peak = _status_kb('VmHWM') if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print((peak-before)/1024)

def peak_mb(args, method):
    cmd = [sys.executable, __file__, '--measure', method] + [f'--{k.replace("_","-")}={v}' for k,v in vars(args).items() if k!='measure']
    return float(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.split()[-1])

def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--model', choices=['convnet', 'unet'], default='convnet')
    p.add_argument('--size', type=int, default=1024, help='image height and width')
    p.add_argument('--tile', type=int, default=256)
    p.add_argument('--overlap', type=int, default=32)
    p.add_argument('--batch-size', type=int, default=4)
    p.add_argument('--repeats', type=int, default=3, help='timed runs after one warm-up; the best counts')
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--measure', choices=['whole', 'tiled'], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.measure: return measure_peak(args)

    model, image, radius, kw = setup(args)
    whole_s = best_time(lambda: whole(model, image), args.repeats)
    tiled_s = best_time(lambda: tiled(model, image, kw), args.repeats)
    ref, out = whole(model, image), tiled(model, image, kw)
    padded = max(kw['tile_size'], -(-args.size//kw['multiple'])*kw['multiple'])
    n_tiles = len(tile_starts(padded, args.tile, args.overlap+args.overlap//2, kw['multiple']))**2
    pixel_ratio = n_tiles*args.tile**2/args.size**2
    overhead = tiled_s/(whole_s*pixel_ratio)
    border = radius or args.overlap//2
    max_seam = seam_score(out, ref, border=border)
    max_diff = (out-ref)[:, border:-border, border:-border].abs().max().item()
    mem_whole, mem_tiled = peak_mb(args, 'whole'), peak_mb(args, 'tiled')
    ok = overhead<=1.2 and max_seam<=1e-3
    print(f'model={args.model} size={args.size} tile={args.tile} overlap={args.overlap} tiles={n_tiles} threads={args.threads}')
    print(f'whole_s={whole_s:.3f} tiled_s={tiled_s:.3f} pixel_ratio={pixel_ratio:.3f} overhead={overhead:.3f} '
          f'max_seam={max_seam:.2e} max_diff={max_diff:.2e} peak_mem_whole_mb={mem_whole:.0f} peak_mem_tiled_mb={mem_tiled:.0f} '
          f'target_met={ok}')
    sys.exit(0 if ok else 1)

if __name__=='__main__': main()
