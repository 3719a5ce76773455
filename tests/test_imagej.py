"ImageJ interop: hyperstacks with axes and pixel size, ROI zips of outlines and points, point tables, all read back."
import numpy as np, pandas as pd, pytest, tifffile
from matplotlib.path import Path as MplPath
from scipy import ndimage as ndi
from biofastai.synth import make_cell_field
from biofastai.imagej import write_imagej, write_roi_zip, write_point_rois, write_points_csv, label_outlines

roifile = pytest.importorskip('roifile', reason="ROI zips need roifile: pip install 'biofastai[imagej]'")

def _inside(xy, shape):
    "Pixels whose centres (x+0.5, y+0.5 in ImageJ coordinates) lie inside polygon `xy`."
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    return MplPath(xy).contains_points(np.stack([xx.ravel()+0.5, yy.ravel()+0.5], 1)).reshape(shape)

@pytest.mark.parametrize('axes', ['TZCYX', 'CYX', 'ZYX', 'TYX'])
def test_hyperstack_round_trip(tmp_path, axes):
    "Each axis order ImageJ knows reads back with its axes, pixel size, unit and values."
    shape = dict(T=3, Z=2, C=2, Y=20, X=30)
    x = np.random.default_rng(0).integers(0, 1000, [shape[a] for a in axes]).astype(np.uint16)
    fn = write_imagej(tmp_path/'x.tif', x, axes=axes, pixel_size=(0.3, 0.2), z_spacing=2.)
    with tifffile.TiffFile(fn) as tif:
        assert tif.is_imagej and tif.series[0].axes==axes
        num, den = tif.pages[0].tags['YResolution'].value
        assert abs(den/num-0.3) < 1e-6 and tif.imagej_metadata['unit']=='um'
        np.testing.assert_array_equal(tif.asarray(), x)

def test_label_outlines_hold_their_objects(tmp_path):
    "The ROI zip of a synthetic cell field: one ROI per cell, each holding exactly its cell's pixels (cells without holes)."
    _, labels = make_cell_field(96, 6, seed=3)
    labels = labels.astype(np.int32)
    fn = write_roi_zip(tmp_path/'cells.zip', labels)
    rois = roifile.roiread(fn)
    ids = [i for i in np.unique(labels) if i]
    assert sorted(int(r.name) for r in rois)==ids
    for r in rois:
        obj = labels==int(r.name)
        if ndi.label(obj)[1]==1 and (ndi.binary_fill_holes(obj)==obj).all():
            np.testing.assert_array_equal(_inside(r.coordinates(), labels.shape), obj)

def test_points(tmp_path):
    "Spots as CSV (0-based pixel-centre X, Y) and as point ROIs (0.5 added), per frame."
    spots = pd.DataFrame(dict(t=[0, 2], y=[4., 10.5], x=[7., 3.25], prob=[.9, .6]))
    df = pd.read_csv(write_points_csv(tmp_path/'spots.csv', spots, pixel_size=0.5))
    assert list(df.columns)==['X', 'Y', 'X_um', 'Y_um', 't', 'prob']
    np.testing.assert_allclose(df[['X', 'Y', 'X_um']].to_numpy(), [[7., 4., 3.5], [3.25, 10.5, 1.625]])
    rois = roifile.roiread(write_point_rois(tmp_path/'spots.zip', spots))
    np.testing.assert_allclose(np.concatenate([r.coordinates() for r in rois]), [[7.5, 4.5], [3.75, 11.]])
    assert [r.t_position for r in rois]==[1, 3]
