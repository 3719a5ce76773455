"""The workflow grid: every workflow module has the same names in the same roles, trains two tiny experiments under
`compare_models` on built-in data, and evaluates the model beside its baseline in one table.

spots and nextframe are walked too once `biofastai.spots` / `biofastai.nextframe` import; their `_train` must
accept an experiment holding only a name and `epochs` (every other key has a default), as the grid tutorial says."""
import importlib, inspect
from functools import partial
import pandas as pd, pytest
from fastcore.docments import docments
from biofastai.compare import compare_models
from biofastai.synth import synth_cells, synth_spots, synth_nextframe, make_video, make_dendrite

WORKFLOWS = ['cellseg', 'rescunet', 'spots', 'nextframe', 'spines']
GRID = ['items', 'dls', 'learner', 'train', 'predict', 'predict_folder', 'evaluate']
BUILT = ['cellseg', 'rescunet', 'spines']

def workflow(wf):
    "The module of workflow `wf`; skipped while it is not written yet."
    try: return importlib.import_module(f'biofastai.{wf}')
    except ModuleNotFoundError as e:
        if wf in BUILT or e.name!=f'biofastai.{wf}': raise
        pytest.skip(f'biofastai.{wf} is not written yet')

def params(f) -> dict: return inspect.signature(f).parameters

@pytest.mark.parametrize('wf', WORKFLOWS)
def test_grid_names_and_parameters(wf):
    m = workflow(wf)
    missing = [f'{wf}_{n}' for n in GRID if not callable(getattr(m, f'{wf}_{n}', None))]
    assert not missing, f'biofastai.{wf} lacks {missing}'
    f = {n: getattr(m, f'{wf}_{n}') for n in GRID}
    assert list(params(f['train']))[:2] == ['experiment', 'source'] and {'seed', 'cbs'} <= set(params(f['train']))
    assert list(params(f['learner']))[0] == 'dls'
    assert list(params(f['predict']))[0] == 'learn'
    assert list(params(f['predict_folder']))[:3] == ['learn', 'folder', 'dest']
    assert list(params(f['evaluate']))[:2] == ['learn', 'source'] and params(f['evaluate'])['source'].default is None
    for name, fn in f.items(): assert not {'out', 'model'} & set(params(fn)), (name, list(params(fn)))   # `dest`, `learn`

SHARED = ['core', 'io', 'channels', 'tiles', 'losses', 'metrics', 'compare', 'cellseg', 'rescunet', 'spines']

@pytest.mark.parametrize('mod', SHARED)
def test_one_meaning_per_parameter_name(mod):
    "`codes` are class names, `loading_codes` channel loading codes, `learn` a Learner, `dest` an output folder; no `out` folders."
    m = importlib.import_module(f'biofastai.{mod}')
    for name in m.__all__:
        f = getattr(m, name)
        if not inspect.isfunction(f): continue
        ps = params(f)
        doc = docments(f) if {'codes', 'loading_codes'} & set(ps) else {}
        assert 'out' not in ps, f'{mod}.{name}: an output folder is `dest`'
        if 'codes' in ps: assert 'class' in (doc.get('codes') or ''), f'{mod}.{name}: `codes` are class names, not {doc.get("codes")!r}'
        if 'loading_codes' in ps: assert 'loading code' in (doc.get('loading_codes') or ''), f'{mod}.{name}: {doc.get("loading_codes")!r}'
        if 'learn' in ps: assert (ps['learn'].annotation in ('Learner', inspect._empty) or 'Learner' in str(ps['learn'].annotation)), f'{mod}.{name}'

# built-in data and two tiny experiments per workflow: (source, [experiment, experiment], train keyword arguments)
def cellseg_case(tmp):
    exps = [dict(name=f'p{p}', loading_codes=[1, 4, 7], arch='resnet18', penalty=p, epochs=1, lr=1e-3) for p in (1, 2)]
    return synth_cells(tmp/'cells', n=8, size=64, seed=0), exps, dict(size=32, bs=4, pretrained=False, num_workers=0)

def rescunet_case(tmp):
    from biofastai.rescunet import write_rescunet_samples
    write_rescunet_samples(*make_video(n_frames=4, size=64, n_objects=2, seed=0), tmp/'samples', 'v0')
    return tmp/'samples', [dict(name=f'level{l}', concat_level=l, width=4, epochs=1) for l in (0, 1)], dict(bs=4)

def spines_case(tmp):
    d = [make_dendrite(72, seed=s) for s in range(3)]
    exps = [dict(name=f'fc{u}', epochs=1, filters=(4, 8, 8), fc=(u,)) for u in (8, 16)]
    return ([i for i,_ in d], [p for _,p in d]), exps, {}

def spots_case(tmp): return synth_spots(tmp/'spots', n=3, n_frames=6, size=32, seed=0), [dict(name=f'e{i}', epochs=1) for i in range(2)], {}
def nextframe_case(tmp): return synth_nextframe(tmp/'nextframe', n=12, n_frames=6, size=16, seed=0), [dict(name=f'e{i}', epochs=1) for i in range(2)], {}

@pytest.mark.parametrize('wf', WORKFLOWS)
def test_compare_and_evaluate(wf, tmp_path):
    "Two tiny experiments train under `compare_models`; `<wf>_evaluate` gives the model's metrics and the baseline's in one table."
    m = workflow(wf)
    source, exps, kw = globals()[f'{wf}_case'](tmp_path)
    tables = []
    def evaluate(learn):
        tables.append(getattr(m, f'{wf}_evaluate')(learn))
        return tables[-1]
    res = compare_models(exps, partial(getattr(m, f'{wf}_train'), source=source, **kw), evaluate, tmp_path/'models', verbose=False)
    assert list(res.status) == ['trained']*2, res.error.tolist()
    ev = tables[0]
    prefixes = ev.attrs.get('baseline')
    assert prefixes, f"{wf}_evaluate: no df.attrs['baseline'] naming the baseline's column prefix (or a tuple of them)"
    for prefix in [prefixes] if isinstance(prefixes, str) else prefixes:
        paired = [c for c in ev.columns if f'{prefix}_{c}' in ev.columns and pd.api.types.is_numeric_dtype(ev[c])]
        assert paired, f'{wf}_evaluate: no metric column m with a baseline column {prefix}_m in {list(ev.columns)}'
        assert all(c in res.columns and f'{prefix}_{c}' in res.columns for c in paired)   # both in the comparison table, with intervals
