"Images larger than memory: a 16k x 16k OME-Zarr image streamed through a model with bounded memory, the same result as in memory; a distributed cluster; cellseg and spine models."
import json, os, subprocess, sys, textwrap
from functools import partial
import numpy as np, pytest, torch
from torch import nn

da = pytest.importorskip('dask.array', reason="predict_large needs dask: pip install 'biofastai[large]'")
pytest.importorskip('zarr', reason="predict_large needs zarr: pip install 'biofastai[large]'")
from biofastai.tiles import predict_tiled, PaddedModel
from biofastai.ngff import write_ngff, read_ngff, predict_large, PercentileNormalise

GIB = 2**30

# Runs in a fresh process: its peak resident memory (VmHWM, reset just before predicting) is the prediction's alone.
_LARGE = textwrap.dedent('''
    import json, sys, time, numpy as np, torch, dask.array as da
    from torch import nn
    from biofastai.ngff import write_ngff, predict_large, read_ngff, PercentileNormalise
    from biofastai.tiles import predict_tiled
    n, folder = int(sys.argv[1]), sys.argv[2]
    torch.set_num_threads(1)

    def pattern(block_info=None):
        "Cheap content: stripes and a checkerboard that vary across block edges."
        (y0, y1), (x0, x1) = block_info[None]['array-location']
        yy, xx = np.ogrid[y0:y1, x0:x1]
        return (((yy//37 + xx//53) % 7)*30 + (yy*xx) % 5).astype(np.uint8)

    def status_mb(key): return int(next(l for l in open('/proc/self/status') if l.startswith(key)).split()[1])/1024

    image = da.map_blocks(pattern, dtype=np.uint8, chunks=((2048,)*(n//2048),)*2, meta=np.empty((0, 0), np.uint8))
    src = write_ngff(f'{folder}/big.ome.zarr', image, chunk=1024)
    torch.manual_seed(0)
    net = nn.Conv2d(1, 2, 3, padding=1).eval().to(memory_format=torch.channels_last)   # radius 1; channels-last is the fast path on CPUs
    kw = dict(tile_size=512, overlap=8, activation=lambda z: z.softmax(1))
    norm = PercentileNormalise([0], [255])
    before = status_mb('VmRSS')
    open('/proc/self/clear_refs', 'w').write('5')   # reset the peak
    t0 = time.perf_counter()
    out = predict_large(net, src, preprocess=norm, channels=[1], block_size=2048, workers=2, **kw)
    seconds = time.perf_counter() - t0
    peak = status_mb('VmHWM') - before
    res, img = read_ngff(out), read_ngff(src).data
    diffs = {}
    for name, (y0, x0) in dict(inner=(1500, 3500), corner=(n-1024, n-1024)).items():   # across block edges; at the image border
        m0, m1 = min(y0, 8), 8 if y0+1024 < n else 0                                    # context around the crop, none past the border
        crop = np.asarray(img[y0-m0:y0+1024+m1, x0-m0:x0+1024+m1])
        ref = predict_tiled(net, norm(crop[None]), **kw)[1].numpy()
        diffs[name] = float(np.abs(res.data[0, y0:y0+1024, x0:x0+1024].compute() - ref[m0:m0+1024, m0:m0+1024]).max())
    print(json.dumps(dict(peak_mb=peak, seconds=seconds, axes=res.axes, shape=res.shape, scale=res.scale, **diffs)))
''')

def test_16k_bounded_memory(tmp_path):
    "A 16384 x 16384 OME-Zarr image: peak memory far below one float32 copy of it (1 GiB), and the in-memory result on crops."
    n = 16384
    r = subprocess.run([sys.executable, '-c', _LARGE, str(n), str(tmp_path)], capture_output=True, text=True, timeout=900,
                       env={**os.environ, 'OMP_NUM_THREADS': '1', 'MKL_NUM_THREADS': '1'})
    assert r.returncode==0, r.stderr[-3000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    print(res)
    assert res['axes']=='cyx' and res['shape']==[1, n, n] and res['scale']==[1., 1., 1.]
    assert res['inner'] < 1e-5 and res['corner'] < 1e-5
    assert res['peak_mb'] < 1024, f"peak {res['peak_mb']:.0f} MB: a full-size float32 copy of the image is {n*n*4/GIB:.0f} GiB"

def _conv_net(c_in=1, c_out=2, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(c_in, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, c_out, 3, padding=1)).eval()

def test_distributed_cluster(tmp_path):
    "Blocks run on a local dask distributed cluster of two worker processes give the same result as local threads."
    distributed = pytest.importorskip('dask.distributed', reason="the cluster option needs distributed: pip install 'biofastai[large]'")
    x = np.random.default_rng(0).normal(size=(1, 300, 420)).astype(np.float32)
    src = write_ngff(tmp_path/'img.ome.zarr', x, chunk=128)
    kw = dict(tile_size=64, overlap=8, block_size=128, activation=partial(torch.softmax, dim=1))
    net = _conv_net()
    local = read_ngff(predict_large(net, src, tmp_path/'local.ome.zarr', **kw)).data.compute()
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        remote = read_ngff(predict_large(net, src, tmp_path/'remote.ome.zarr', client=client, **kw)).data.compute()
        assert len(client.scheduler_info()['workers'])==2
    np.testing.assert_allclose(remote, local, atol=1e-6)   # worker processes may sum in another order (one element differed by 3e-8 in CI)
    np.testing.assert_allclose(local, predict_tiled(net, x, tile_size=64, overlap=8, activation=kw['activation']).numpy(), atol=1e-5)

def test_cellseg_learner(tmp_path):
    "A cellseg learner brings its normalisation, loading codes and activation: one block gives `cellseg_predict`'s probabilities."
    from fastai.vision.models.xresnet import xresnet18
    from biofastai.synth import synth_cells
    from biofastai.io import read_image
    from biofastai.cellseg import cellseg_dls, cellseg_learner, cellseg_predict
    data = synth_cells(tmp_path/'cells', n=5, size=128, seed=0)
    learn = cellseg_learner(cellseg_dls(data, size=128, bs=2, num_workers=0), partial(xresnet18, widen=0.5), pretrained=False)
    fn = sorted((data/'FullImage').glob('*'))[0] if (data/'FullImage').exists() else sorted((data/'images').glob('*'))[0]
    image = read_image(fn)
    tile = 64
    out = predict_large(learn, image, tmp_path/'probs.ome.zarr', axes='cyx', tile_size=tile, overlap=16, multiple=32, block_size=1024)
    _, ref = cellseg_predict(learn, image, tile_size=tile, overlap=16)
    np.testing.assert_allclose(read_ngff(out).data.compute(), ref, atol=1e-4)

def test_spine_scanner(tmp_path):
    "The spine scanner (valid convolutions) through `PaddedModel` and blocks gives `scan`'s probability map."
    from biofastai.spines import SpineCNN, scanner_from, scan
    torch.manual_seed(0)
    model = SpineCNN(patch_size=24, filters=(4, 8), fc=(16,)).eval()
    sc = scanner_from(model)
    p = sc.patch_size//2
    img = np.random.default_rng(1).random((1, 200, 260)).astype(np.float32)
    lo, hi = np.percentile(img, (1., 99.8))
    out = predict_large(PaddedModel(sc, p, sc.patch_size-p), img, tmp_path/'spines.ome.zarr', axes='cyx', preprocess=PercentileNormalise([lo], [hi]),
                        activation=partial(torch.softmax, dim=1), channels=[1], tile_size=128, overlap=48, block_size=128)
    np.testing.assert_allclose(read_ngff(out).data[0].compute(), scan(model, img), atol=1e-5)
