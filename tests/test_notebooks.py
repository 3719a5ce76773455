"Every notebook in nbs/ is one pytest case, run top to bottom except cells flagged with the project's `tst_flags`."
from pathlib import Path
import pytest
import nbdev.test
from nbdev.config import get_config

cfg = get_config(Path(__file__).parent)
NOTEBOOKS = sorted(p for p in Path(cfg.nbs_path).rglob('*.ipynb')
                   if not any(part.startswith(('_', '.')) for part in p.relative_to(cfg.nbs_path).parts))

def test_found_notebooks(): assert len(NOTEBOOKS) >= 1, f"no notebooks under {cfg.nbs_path}"

@pytest.mark.parametrize('nb', NOTEBOOKS, ids=lambda p: str(p.relative_to(cfg.nbs_path)))
def test_notebook(nb):
    ok, _ = nbdev.test.test_nb(nb, skip_flags=cfg.tst_flags, basepath=cfg.config_path)
    assert ok, f"{nb} failed: see the cell error above"
