"""Streaming a 16k x 16k OME-Zarr image through a model against an in-memory run of a 4k x 4k crop: throughput and peak memory.

`predict_large` reads the image block by block (2048 x 2048 with a halo), predicts each block through
`predict_tiled` and writes the foreground probability into a new OME-Zarr image; the baseline reads a 4096 x 4096
crop into memory and runs `predict_tiled` on it. The model is a 3x3 convolution to 2 classes (channels-last, the fast
path of CPU convolutions), so the bench measures the streaming machinery (zarr reads and writes, halos, stitching)
rather than a network. The image is synthetic and cheap (stripes and a checkerboard in uint8), written before timing.

Each run is a fresh subprocess; its peak memory is the peak resident set size (VmHWM, reset through
/proc/self/clear_refs) minus the resident size just before the call.

Last line: key=value pairs. Exit status 1 when a target is missed: the 16k run's peak memory <= 1024 MiB (one float32
copy of the image is 1024 MiB; the output alone would be as much) and its throughput >= 0.5 x the in-memory run's.
"""
import argparse, json, subprocess, sys, tempfile, time
from pathlib import Path
import numpy as np, torch, dask.array as da
from torch import nn
from biofastai.ngff import write_ngff, read_ngff, predict_large, PercentileNormalise
from biofastai.tiles import predict_tiled

def pattern(block_info=None):
    "Cheap content: stripes and a checkerboard that vary across block edges."
    (y0, y1), (x0, x1) = block_info[None]['array-location']
    yy, xx = np.ogrid[y0:y1, x0:x1]
    return (((yy//37 + xx//53) % 7)*30 + (yy*xx) % 5).astype(np.uint8)

def model():
    torch.manual_seed(0)
    return nn.Conv2d(1, 2, 3, padding=1).eval().to(memory_format=torch.channels_last)

def _status_mb(key): return int(next(l for l in open('/proc/self/status') if l.startswith(key)).split()[1])/1024

def measure(args):
    "One run in this (fresh) process; prints its seconds and peak memory increase as JSON."
    torch.set_num_threads(args.threads)
    net, norm, kw = model(), PercentileNormalise([0], [255]), dict(tile_size=args.tile, overlap=args.overlap, activation=lambda z: z.softmax(1))
    src = Path(args.folder)/'big.ome.zarr'
    if args.measure=='crop':
        crop = np.asarray(read_ngff(src).data[:args.crop, :args.crop])[None]
        predict_tiled(net, norm(crop[:, :64, :64]), **kw)   # torch's one-off start-up allocations are not the method's
    before = _status_mb('VmRSS')
    open('/proc/self/clear_refs', 'w').write('5')
    t0 = time.perf_counter()
    if args.measure=='crop': predict_tiled(net, norm(crop), **kw)
    else: predict_large(net, src, Path(args.folder)/'out.ome.zarr', preprocess=norm, channels=[1], block_size=args.block, workers=args.workers, **kw)
    print(json.dumps(dict(seconds=time.perf_counter()-t0, peak_mb=_status_mb('VmHWM')-before)))

def run(args, method):
    cmd = [sys.executable, __file__, '--measure', method] + [f'--{k}={v}' for k,v in vars(args).items() if k!='measure' and v is not None]
    return json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.split('\n')[-2])

def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--size', type=int, default=16384, help='height and width of the large image')
    p.add_argument('--crop', type=int, default=4096, help='height and width of the in-memory crop')
    p.add_argument('--block', type=int, default=2048)
    p.add_argument('--tile', type=int, default=512)
    p.add_argument('--overlap', type=int, default=8)
    p.add_argument('--workers', type=int, default=1, help='blocks of the large run predicted at once')
    p.add_argument('--threads', type=int, default=1, help='torch threads of each run')
    p.add_argument('--folder', help=argparse.SUPPRESS)
    p.add_argument('--measure', choices=['large', 'crop'], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.measure: return measure(args)
    with tempfile.TemporaryDirectory() as folder:
        args.folder = folder
        image = da.map_blocks(pattern, dtype=np.uint8, chunks=((2048,)*(args.size//2048),)*2, meta=np.empty((0, 0), np.uint8))
        write_ngff(Path(folder)/'big.ome.zarr', image, chunk=1024)
        large = run(args, 'large')
        crop = run(args, 'crop')
    mpx_large, mpx_crop = args.size**2/1e6/large['seconds'], args.crop**2/1e6/crop['seconds']
    image_mb = args.size**2*4/2**20
    ok = large['peak_mb']<=1024 and mpx_large>=0.5*mpx_crop
    print(f'size={args.size} crop={args.crop} block={args.block} tile={args.tile} workers={args.workers} threads={args.threads} float32_image_mb={image_mb:.0f}')
    print(f'mpx_s_large={mpx_large:.1f} mpx_s_crop={mpx_crop:.1f} throughput_ratio={mpx_large/mpx_crop:.2f} '
          f'peak_mb_large={large["peak_mb"]:.0f} peak_mb_crop={crop["peak_mb"]:.0f} seconds_large={large["seconds"]:.1f} target_met={ok}')
    sys.exit(0 if ok else 1)

if __name__=='__main__': main()
