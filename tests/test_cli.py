"The `biofastai` verbs for every workflow: train, predict, evaluate, lr-find, compare; export and reload in a fresh process."
import subprocess, sys, shutil
from pathlib import Path
import numpy as np, pandas as pd, pytest, torch
from fastai.learner import load_learner
from biofastai.cli import main, make_parser
from biofastai.io import read_stack
from biofastai.synth import synth_cells

def run_cli(*args):
    exe = shutil.which('biofastai', path=str(Path(sys.executable).parent)) or 'biofastai'
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=600)

@pytest.fixture(scope='module')
def data(tiny_data, tmp_path_factory):
    "The shared tiny data of every workflow (tests/conftest.py), with a folder of this module's own for outputs."
    return tiny_data | dict(root=tmp_path_factory.mktemp('cli'))

OPTS = dict(cellseg=['--loading-codes', '1', '4', '7', '--arch', 'resnet18', '--lr', '5e-3', '--size', '32', '--bs', '4', '--no-pretrained'],
            rescunet=['--width', '4', '--bs', '4'], spots=['--layer-depth', '8', '--backprop-length', '3', '--bs', '2'],
            nextframe=['--hidden', '8', '--bs', '4'], spines=[])

def test_train_predict_evaluate_every_workflow(data, capsys):
    "Each workflow through the same verbs, in process; then every exported model reloaded in one fresh process predicts the same files."
    d = data['root']
    for wf in OPTS:
        main(['train', wf, str(data[wf]), '--epochs', '1', *OPTS[wf], '--out', str(d/'models'/f'{wf}.pkl')])
        out = capsys.readouterr().out
        assert 'validation:' in out and 'not scored' not in out and (d/'models'/f'{wf}_log.csv').exists() and (d/'models'/f'{wf}_loss.png').exists(), out
        assert len(pd.read_csv(d/'models'/f'{wf}_log.csv')) == 1
        main(['predict', str(d/'models'/f'{wf}.pkl'), str(data['inputs'][wf]), str(d/'pred'/wf)])
        assert len(pd.read_csv(d/'pred'/wf/'predictions.csv')) > 0
    main(['evaluate', str(d/'models'/'cellseg.pkl'), str(data['cellseg'])])
    out = capsys.readouterr().out
    assert 'dice=' in out and '(otsu ' in out and len(pd.read_csv(d/'models'/'cellseg_evaluation.csv')) == 8
    assert len(list((d/'pred'/'cellseg'/'masks').glob('*.tif'))) == 8
    assert len(pd.read_csv(d/'pred'/'spines'/'counts.csv')) == 3
    assert list((d/'pred'/'spots'/'bursts').glob('*.csv'))
    main(['predict', str(d/'models'/'spines.pkl'), str(data['inputs']['spines']), str(d/'figs'), '--figures'])
    assert len(list((d/'figs').glob('*.png'))) == 3
    with pytest.raises(SystemExit) as e: main(['predict', str(d/'models'/'cellseg.pkl'), str(data['inputs']['cellseg']), str(d/'no'), '--steps', '2'])
    assert e.value.code == 2 and '--steps' in capsys.readouterr().err   # an option of another workflow's prediction
    from fastai.learner import load_learner
    assert load_learner(d/'models'/'spines.pkl').counter.threshold > 0   # the tuned counter travels with the model
    # item 5: export, then load_learner in a fresh process, gives identical predictions
    script = '; '.join(f"main(['predict', {str(d/'models'/f'{wf}.pkl')!r}, {str(data['inputs'][wf])!r}, {str(d/'fresh'/wf)!r}])" for wf in OPTS)
    r = subprocess.run([sys.executable, '-c', f'from biofastai.cli import main; {script}'], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    for wf in OPTS:
        files = sorted(f.relative_to(d/'pred'/wf) for f in (d/'pred'/wf).rglob('*') if f.is_file() and f.name != 'predictions.csv')
        assert files and files == sorted(f.relative_to(d/'fresh'/wf) for f in (d/'fresh'/wf).rglob('*') if f.is_file() and f.name != 'predictions.csv'), wf
        for f in files:
            a, b = d/'pred'/wf/f, d/'fresh'/wf/f
            if f.suffix == '.tif': np.testing.assert_array_equal(read_stack(a), read_stack(b), err_msg=str(f))
            else: assert a.read_bytes() == b.read_bytes(), f

def test_lr_find_and_compare(data, tmp_path, capsys):
    "lr-find saves its plot and prints a suggestion; compare trains a YAML list of experiments and writes its table and plots."
    main(['lr-find', 'spines', str(data['spines']), '--plot', str(tmp_path/'lr.png')])
    assert 'suggested lr:' in capsys.readouterr().out and (tmp_path/'lr.png').exists()
    conf = tmp_path/'exps.yaml'
    conf.write_text(f"workflow: spines\ndata: {data['spines']}\nexperiments:\n  - {{name: small, epochs: 1, filters: [4, 8, 16]}}\n  - {{name: wide, epochs: 1}}\n")
    main(['compare', str(conf)])
    res = pd.read_csv(tmp_path/'exps'/'comparison.csv', index_col='name')
    assert list(res.index) == ['small', 'wide'] and (res.status == 'trained').all()
    assert (tmp_path/'exps'/'losses.png').exists() and (tmp_path/'exps'/'comparison_count_error.png').exists()

def test_help_from_docments_and_bad_options(data, tmp_path, capsys):
    "Options and their help come from the docments; an option the model's workflow lacks, or a bad config, is one error line and exit 2."
    help = make_parser()._subparsers._group_actions[0].choices['train']._subparsers._group_actions[0].choices['rescunet'].format_help()
    assert '--concat-level' in help and 'stages' in help.lower() and '--no-augment' in help
    with pytest.raises(SystemExit) as e: main(['synth', 'nope', str(tmp_path)])
    assert e.value.code == 2 and 'invalid choice' in capsys.readouterr().err
    (tmp_path/'bad.yaml').write_text('epoch: 3\n')
    with pytest.raises(SystemExit) as e: main(['train', 'spines', str(data['spines']), '--config', str(tmp_path/'bad.yaml')])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count('\n') == 1 and 'epoch' in err
    with pytest.raises(SystemExit) as e: main(['predict', str(tmp_path/'none.pkl'), str(tmp_path), str(tmp_path/'out')])
    assert e.value.code == 2 and 'biofastai train WORKFLOW DATA' in capsys.readouterr().err

def test_bad_input_is_one_line_and_exit_2(tmp_path):
    "In the installed console script: a BioDataError is one line on stderr naming the fix, exit status 2, no traceback."
    r = run_cli('train', 'cellseg', str(synth_cells(tmp_path/'cells', n=4, size=32)), '--loading-codes', '1', '150', '--epochs', '1', '--no-pretrained')
    errors = [l for l in r.stderr.splitlines() if l.startswith('biofastai: error:')]   # library warnings may come before it
    assert r.returncode == 2 and len(errors) == 1 and 'Traceback' not in r.stderr, r.stderr
    assert 'loading code 150' in errors[0] and 'use a raw channel 0-50 or one of the recipe codes' in errors[0]

def test_train_resumes_from_its_checkpoint(data, tmp_path, capsys):
    "`train --resume` goes on from the checkpoint beside the model: a finished training is not redone, so even another seed keeps its weights."
    def train(out, *opts):
        main(['train', 'spines', str(data['spines']), '--epochs', '1', '--filters', '4', '8', '8', '--out', str(tmp_path/out), *opts])
        return load_learner(tmp_path/out).model.state_dict()
    first = train('spines.pkl')
    assert (tmp_path/'spines_checkpoint.pth').stat().st_size > 0
    resumed, fresh = train('spines.pkl', '--seed', '1', '--resume'), train('fresh.pkl', '--seed', '1')
    assert all(torch.equal(first[k], resumed[k]) for k in first)
    assert not all(torch.equal(first[k], fresh[k]) for k in first)   # without the checkpoint, seed 1 trains other weights

def test_demo_and_export_help():
    "The demo's options come from the docments of `demo`; export is listed with its two arguments."
    from fastcore.docments import docments
    from biofastai.demo import demo
    verbs = make_parser()._subparsers._group_actions[0].choices
    assert verbs['demo']._option_string_actions['--quick'].help.startswith(docments(demo)['quick'])
    r = run_cli('export', '--help')
    assert r.returncode == 0 and 'usage: biofastai export [-h] model dest' in r.stdout
