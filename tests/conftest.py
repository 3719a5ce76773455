"Fixtures shared by several test modules."
import os, pytest, torch

if 'PYTEST_XDIST_WORKER_COUNT' in os.environ:   # pytest -n N: share the cores among the workers (and the processes they start) instead of oversubscribing them
    _threads = str(max(1, (os.cpu_count() or 1) // int(os.environ['PYTEST_XDIST_WORKER_COUNT'])))
    os.environ.update(OMP_NUM_THREADS=_threads, MKL_NUM_THREADS=_threads)
    torch.set_num_threads(int(_threads))
from biofastai.io import read_stack, read_mask
from biofastai.synth import synth_cells, synth_videos, synth_spots, synth_nextframe, synth_dendrites
from biofastai.rescunet import write_rescunet_samples

@pytest.fixture(scope='session')
def tiny_data(tmp_path_factory):
    "Tiny built-in data for every workflow (`data[wf]`: what `biofastai train wf` reads) and prediction inputs (`data['inputs'][wf]`); read only."
    d = tmp_path_factory.mktemp('tiny_data')
    v = synth_videos(d/'videos', n=1, n_frames=6, size=64, n_objects=2)/'video_000'
    write_rescunet_samples(read_stack(v/'image.tif')[:, 0], read_mask(v/'labels.tif'), d/'samples', 'v0', crop_size=32)
    return dict(cellseg=synth_cells(d/'cells', n=8, size=32), rescunet=d/'samples', spots=synth_spots(d/'spots', n=4, n_frames=6, size=32),
                nextframe=synth_nextframe(d/'nextframe', n=8, n_frames=5, size=16), spines=synth_dendrites(d/'dendrites', n=3, size=96),
                inputs=dict(cellseg=d/'cells'/'FullImage', rescunet=d/'videos', spots=d/'spots', nextframe=d/'nextframe'/'sequences',
                            spines=d/'dendrites'/'images'))
