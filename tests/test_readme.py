"The README's commands are the ones CI runs, and its Python quick starts call the library as it is."
from pathlib import Path
import ast, inspect, re
import biofastai.all as bfa

ROOT = Path(__file__).parents[1]
README = (ROOT/'README.md').read_text()

def readme_blocks(lang):
    "The contents of the README's fenced blocks in `lang`."
    return re.findall(rf"```{lang}\n(.+?)\n```", README, re.S)

def test_ci_runs_the_readme_test_command():
    main_job, tests = readme_blocks('sh')[:2]
    ci = (ROOT/'.ci'/'run').read_text()
    steps = tests.split(' && ')
    assert steps[-1] == 'python -m pytest tests'
    assert ' && '.join(steps[2:-1]) in ci, "the install step in .ci/run differs from the README's"
    assert re.search(r"^python -m pytest tests$", ci, re.M), ".ci/run must run the README's test command"
    job = main_job.split(' && ')
    assert job[-1].startswith('biofastai demo'), "the README's first command runs the demo"
    install = next(s for s in job if s.startswith('pip install'))
    assert 'dev' not in install, "the first command installs the user's dependencies only"
    pin = re.search(r'torch==\S+ torchvision==\S+', install).group()
    assert pin in tests, "both README commands pin the same torch"

def _calls(tree):
    "Calls of names that `biofastai.all` exports, with their positional and keyword argument counts."
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and hasattr(bfa, node.func.id):
            yield node.func.id, len(node.args), [k.arg for k in node.keywords if k.arg]

def test_quick_starts_match_the_api():
    "Every biofastai function a quick start calls exists and accepts the arguments it is given."
    blocks = [b for b in readme_blocks('python') if 'biofastai' in b or '_train(' in b]
    calls = [c for b in blocks for c in _calls(ast.parse(b))]
    assert {n.split('_')[0] for n, *_ in calls if n.endswith('_train')} == {'cellseg', 'rescunet', 'spots', 'nextframe', 'spines'}
    for name, n_args, kws in calls:
        f = getattr(bfa, name)
        if not callable(f) or inspect.isclass(f): continue
        inspect.signature(f).bind(*range(n_args), **dict.fromkeys(kws))   # raises TypeError on a renamed or removed parameter
