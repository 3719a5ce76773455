"Write README.md from nbs/index.ipynb (nbdev-readme needs quarto, which needs the network): markdown cells as they are, code cells as python blocks."
import json
from pathlib import Path

root = Path(__file__).parents[1]
cells = json.loads((root/'nbs'/'index.ipynb').read_text())['cells']
parts = []
for c in cells:
    src = ''.join(c['source']).strip()
    if not src or src.startswith('#|'): continue
    parts.append(src if c['cell_type'] == 'markdown' else f"```python\n{src}\n```")
(root/'README.md').write_text('<!-- Written by .ci/readme.py from nbs/index.ipynb: edit the notebook, not this file. -->\n\n' + '\n\n'.join(parts) + '\n')
