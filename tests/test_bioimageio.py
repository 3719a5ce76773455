"bioimage.io export: every workflow's package passes bioimageio.core's model test, offline, and predicts through bioimageio.core what the workflow predicts."
import numpy as np, pytest, torch
pytest.importorskip('bioimageio.core', reason='the bioimage.io validator is not installed: pip install "biofastai[bioimageio]" (or the dev extra)')
import bioimageio.core as bc
from bioimageio.spec import load_model_description
from bioimageio.spec.utils import load_array
from fastai.learner import load_learner
from biofastai.cli import main
from biofastai.channels import channel_loader
from biofastai.cellseg import cellseg_predict
from biofastai.spines import scan
from biofastai.nextframe import nextframe_predict
from biofastai.spots import spots_predict
from biofastai.bioimageio import export_bioimageio, learner_workflow

# the tiny recipes of tests/test_cli.py, smaller still where a workflow allows it
OPTS = dict(cellseg=['--loading-codes', '1', '100', '7', '--arch', 'resnet18', '--lr', '5e-3', '--size', '32', '--bs', '4', '--no-pretrained'],
            rescunet=['--width', '4', '--bs', '4'], spots=['--layer-depth', '8', '--backprop-length', '3', '--bs', '2'],
            spots_fb=['--arch-path', 'forward_backward', '--layer-depth', '8', '--backprop-length', '3', '--bs', '2'],
            nextframe=['--hidden', '8', '--bs', '4'], spines=['--filters', '4', '8', '16', '--fc', '16', '8'])

@pytest.fixture(scope='module')
def learners(tiny_data, tmp_path_factory):
    "One briefly trained learner of each workflow (on the shared tiny data), exported and reloaded as `biofastai export` would read it."
    d = tmp_path_factory.mktemp('bioimageio')
    for k in OPTS: main(['train', _wf(k), str(tiny_data[_wf(k)]), '--epochs', '1', *OPTS[k], '--out', str(d/'models'/f'{k}.pkl')])
    return d, {k: load_learner(d/'models'/f'{k}.pkl') for k in OPTS}

def _wf(k:str) -> str: return k.removesuffix('_fb')   # spots_fb: the spot model in forward_backward

def _workflow_prediction(wf, learn, xs):
    "What the workflow's own functions predict for the package's test inputs (raw), shaped like the package's output."
    if wf=='cellseg': return cellseg_predict(learn, xs[0][0])[1][None]
    if wf=='spines': return scan(learn, xs[0][0])[None, None]   # the probability map `spines_predict` counts
    if wf=='nextframe': return nextframe_predict(learn, xs[0][0])[None]
    if wf=='spots': return spots_predict(learn, xs[0][0][:, 0])[0][None, :, None]
    img = channel_loader(learn.dls).encodes(xs[0][0])   # rescunet: the network on one sub-image, normalised as `rescunet_predict` does
    with torch.no_grad(): return learn.model.eval()(torch.from_numpy(img)[None], torch.from_numpy(xs[1])).softmax(1).numpy()

@pytest.mark.parametrize('k', list(OPTS))
def test_package_passes_and_predicts_as_the_workflow(learners, k):
    d, ls = learners
    learn, wf = ls[k], _wf(k)
    assert learner_workflow(learn)==wf
    if wf=='spots': assert learn.model.arch_path==('forward_backward' if k=='spots_fb' else 'forward')
    pkg = export_bioimageio(learn, d/'packages'/(f'{k}.zip' if wf=='cellseg' else k))
    assert pkg.exists() and (pkg.suffix=='.zip' or {'rdf.yaml', 'README.md', 'cover.png', 'weights.pt', 'weights_torchscript.pt'} <= {f.name for f in pkg.iterdir()})
    summary = bc.test_model(pkg if pkg.suffix=='.zip' else pkg/'rdf.yaml')   # both weight formats, test tensors, and other sizes where axes are parameterised
    assert summary.status=='passed', summary.format()
    descr = load_model_description(pkg if pkg.suffix=='.zip' else pkg/'rdf.yaml', perform_io_checks=False)
    assert set(descr.weights.available_formats) == {'pytorch_state_dict', 'torchscript'}
    xs = [load_array(t.test_tensor) for t in descr.inputs]
    out = bc.predict(model=descr, inputs={t.id: x for t,x in zip(descr.inputs, xs)})
    y = out.members[descr.outputs[0].id].data.values
    ref = _workflow_prediction(wf, learn, xs)
    assert y.shape==ref.shape, (y.shape, ref.shape)
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4 if wf!='nextframe' else 1e-3*float(np.abs(ref).max()))
    assert np.abs(ref-ref.mean()).max()>1e-3   # the comparison is not between two constants

def test_what_is_not_a_workflow(tmp_path):
    "Another model is one error naming the workflows, and nothing is written."
    from biofastai.core import ValueRangeError
    with pytest.raises(ValueRangeError, match='cellseg, spines, rescunet, nextframe, spots'): export_bioimageio(torch.nn.Linear(2, 2), tmp_path/'x')
    assert not (tmp_path/'x').exists()
