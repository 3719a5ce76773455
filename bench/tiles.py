"""Tiled prediction vs one whole-image pass: time, pixels processed, seams and peak memory.

The model is a ResNet-like stack of 3x3 residual blocks at full resolution, 16 channels, no pooling: the shape of
biofastai's full-resolution networks (the recurrent spot detector, the spine scanner). Its receptive-field radius is
known exactly (1 + 2*blocks = 9 <= overlap//2), so "tiled equals whole, no seams" is a hard, checkable claim, and a
1024x1024 image runs in seconds on 2 cores. (A random-weight resnet18 DynamicUnet is no good here: its receptive
field spans the whole image, so even shifting the input by 32 pixels changes its output far from the border.)

Peak memory is measured in a fresh subprocess per method: the peak resident set size (VmHWM, reset through
/proc/self/clear_refs where Linux allows it, else ru_maxrss) minus the resident size just before the call.

Memory against image size: the peak of `predict_tiled` alone (a one-block stack, cheap enough for 8192x8192) at each of
--mem-sizes, against the size of its float32 output. `mem_growth` is the peak's growth from the smallest to the largest
image divided by the output's growth: 1 when the output is the only full-size array held (measured 1.01 up to 8192);
the previous `predict_tiled`, which held a padded float copy of the image, a weight map and the divided output next to
the accumulated one, measured 2.6 (1024 to 4096).

Last line: key=value pairs. Exit status 1 when a target is missed:
overhead = tiled_s / (whole_s * pixel_ratio) <= 1.2, max_seam <= 1e-3, and mem_growth <= 1.25 (memory grows no
faster than the output).
"""
import argparse, resource, subprocess, sys, time
import numpy as np, torch
from torch import nn
from biofastai.tiles import predict_tiled, seam_score

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

def setup(args):
    "The seeded model, image and tiling options."
    torch.manual_seed(args.seed); torch.set_num_threads(args.threads)
    model = conv_stack(blocks=args.blocks).eval()
    image = np.random.default_rng(args.seed).normal(size=(1, args.size, args.size)).astype(np.float32)
    kw = dict(tile_size=args.tile, overlap=args.overlap, batch_size=args.batch_size)
    return model, image, 1+2*args.blocks, kw

def whole(model, image):
    with torch.no_grad(): return model(torch.from_numpy(image)[None])[0]

def tiled(model, image, kw): return predict_tiled(model, image, **kw)

def best_times(fs, repeats):
    "Best time of each function over `repeats` interleaved rounds, so load from other processes hits all alike."
    ts = [[] for _ in fs]
    for _ in range(repeats):
        for f,t in zip(fs, ts):
            t0 = time.perf_counter(); f(); t.append(time.perf_counter()-t0)
    return [min(t) for t in ts]

def _status_kb(key):
    return int(next(l for l in open('/proc/self/status') if l.startswith(key)).split()[1])

def measure_peak(args):
    "Run one prediction in this (fresh) process and print its peak memory increase in MB."
    model, image, _, kw = setup(args)
    whole(model, image[:, :64, :64])  # torch's one-off start-up allocations are not the method's
    before = _status_kb('VmRSS')
    try: open('/proc/self/clear_refs', 'w').write('5'); reset = True
    except OSError: reset = False
    whole(model, image) if args.measure=='whole' else tiled(model, image, kw)
    peak = _status_kb('VmHWM') if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print((peak-before)/1024)

def peak_mb(args, method):
    cmd = [sys.executable, __file__, '--measure', method] + [f'--{k.replace("_","-")}={v}' for k,v in vars(args).items() if k!='measure' and v is not None]
    return float(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.split()[-1])

def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--blocks', type=int, default=4, help='residual blocks: receptive-field radius 1+2*blocks')
    p.add_argument('--size', type=int, default=1024, help='image height and width')
    p.add_argument('--tile', type=int, default=256)
    p.add_argument('--overlap', type=int, default=32)
    p.add_argument('--batch-size', type=int, default=4)
    p.add_argument('--repeats', type=int, default=3, help='timed rounds after one warm-up; the best counts')
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--mem-sizes', default='1024,2048,4096,8192', help='image sizes of the memory sweep, comma-separated')
    p.add_argument('--measure', choices=['whole', 'tiled'], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.measure: return measure_peak(args)

    model, image, radius, kw = setup(args)
    pixels = []  # pixels the model sees, counted during the warm-up runs
    hook = model.register_forward_pre_hook(lambda m, a: pixels.append(a[0][:, 0].numel()))
    ref, out = whole(model, image), tiled(model, image, kw)
    hook.remove()
    whole_s, tiled_s = best_times([lambda: whole(model, image), lambda: tiled(model, image, kw)], args.repeats)
    pixel_ratio = sum(pixels[1:])/pixels[0]
    overhead = tiled_s/(whole_s*pixel_ratio)
    max_seam = seam_score(out, ref, border=radius)
    max_diff = (out-ref)[:, radius:-radius, radius:-radius].abs().max().item()
    mem_whole, mem_tiled = peak_mb(args, 'whole'), peak_mb(args, 'tiled')
    sizes = [int(n) for n in args.mem_sizes.split(',')]
    sweep = [peak_mb(argparse.Namespace(**{**vars(args), 'size': n, 'blocks': 0}), 'tiled') for n in sizes]
    out_mb = [2*n*n*4/2**20 for n in sizes]   # the (2,H,W) float32 output
    for n,o,m in zip(sizes, out_mb, sweep): print(f'size={n} output_mb={o:.0f} peak_mb={m:.0f}')
    mem_growth = (sweep[-1]-sweep[0])/(out_mb[-1]-out_mb[0])
    ok = overhead<=1.2 and max_seam<=1e-3 and mem_growth<=1.25
    print(f'size={args.size} tile={args.tile} overlap={args.overlap} radius={radius} tiles={sum(pixels[1:])//args.tile**2} threads={args.threads}')
    print(f'whole_s={whole_s:.3f} tiled_s={tiled_s:.3f} pixel_ratio={pixel_ratio:.3f} overhead={overhead:.3f} '
          f'max_seam={max_seam:.2e} max_diff={max_diff:.2e} peak_mem_whole_mb={mem_whole:.0f} peak_mem_tiled_mb={mem_tiled:.0f} '
          f'peak_mem_{sizes[-1]}_mb={sweep[-1]:.0f} output_{sizes[-1]}_mb={out_mb[-1]:.0f} mem_growth={mem_growth:.2f} '
          f'memory_grows_no_faster_than_output={mem_growth<=1.25} target_met={ok}')
    sys.exit(0 if ok else 1)

if __name__=='__main__': main()
