"""`biofastai demo --quick` end to end, through the installed script: every model beats its baseline in the report's table,
the report holds every figure, and a browser shows them all."""
import re, shutil, subprocess, sys
from pathlib import Path
import numpy as np, pandas as pd, pytest
from matplotlib.image import imread
from biofastai.demo import DEMOS, FIGURES

FIGS = [*FIGURES, 'training']
CHROMIUM = shutil.which('chromium') or shutil.which('chromium-browser')

@pytest.fixture(scope='module')
def report(tmp_path_factory):
    "The folder a quick demo wrote, and what it printed."
    d = tmp_path_factory.mktemp('demo')
    exe = shutil.which('biofastai', path=str(Path(sys.executable).parent)) or 'biofastai'
    r = subprocess.run([exe, 'demo', '--quick', '--out', str(d/'report')], capture_output=True, text=True, timeout=1800, cwd=d)
    assert r.returncode == 0, r.stderr[-3000:]
    assert [p.name for p in d.iterdir()] == ['report']   # nothing written outside --out (checkpoints included)
    return d/'report', r.stdout

def _md_table(md:str) -> pd.DataFrame:
    "The first Markdown table of `md`."
    rows = [[c.strip() for c in l.strip().strip('|').split('|')] for l in md.splitlines() if l.startswith('|')]
    return pd.DataFrame(rows[2:], columns=rows[0])

def test_every_model_beats_its_baseline(report):
    dest, log = report
    table = _md_table((dest/'report.md').read_text())
    assert list(table.workflow) == list(DEMOS)
    print(table.to_string())
    for r in table.itertuples(index=False):
        model, base = float(r.model), float(r[5])   # the table's own numbers
        assert (model > base if DEMOS[r.workflow][2] else model < base) and r[6] == 'yes', r
    res = pd.read_csv(dest/'results.csv')
    np.testing.assert_allclose(res.model, table.model.astype(float), atol=5e-4)
    assert 'All 5 models beat their baselines.' in (dest/'report.md').read_text()
    # progress for a log file: three lines per workflow (data, training, score), no redrawn bars
    assert '\r' not in log
    for wf in DEMOS: assert sum(l.startswith(f'{wf}: ') for l in log.splitlines()) == 3, log
    assert all((dest/'models'/f'{wf}.pkl').stat().st_size > 0 for wf in DEMOS)

def test_report_holds_every_figure(report):
    dest, _ = report
    md = (dest/'report.md').read_text()
    for k in FIGS:
        assert f'](figures/{k}.png)' in md and (dest/'figures'/f'{k}.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n', k
    page = (dest/'report.html').read_text()
    assert page.count('<img ') == page.count('src="data:image/png;base64,') == len(FIGS)
    assert not re.search(r'''(href|src)\s*=\s*(?!["']?data:)''', page) and 'http' not in page   # self-contained: loads nothing, links nowhere

def chromium(*args, profile:Path) -> subprocess.CompletedProcess:
    "Headless Chromium, offline, with a fresh profile."
    return subprocess.run([CHROMIUM, '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
                           '--disable-component-update', '--disable-sync', f'--user-data-dir={profile}', '--virtual-time-budget=10000', *args],
                          capture_output=True, text=True, timeout=180)

@pytest.mark.skipif(CHROMIUM is None, reason='no Chromium to render the report (Debian: apt-get install chromium, as .ci/run does)')
def test_browser_shows_every_figure(report, tmp_path):
    "The page's own script counts the images the browser decoded; the screenshot is not blank."
    url = (report[0]/'report.html').as_uri()
    r = chromium('--dump-dom', url, profile=tmp_path/'profile')
    shown = re.search(r'data-figures-shown="(\d+)"', r.stdout)
    assert shown and int(shown.group(1)) == len(FIGS), (r.stdout[:500], r.stderr[-2000:])
    chromium(f'--screenshot={tmp_path/"shot.png"}', '--window-size=1200,4000', url, profile=tmp_path/'profile')
    shot = imread(tmp_path/'shot.png')[..., :3]
    assert shot.shape[:2] == (4000, 1200) and shot.std() > 0.1 and (shot.mean(-1) < 0.9).mean() > 0.05   # figures, not a white page
