"Write README.md from nbs/index.ipynb (nbdev-readme needs quarto, which needs the network): markdown cells as they are, code cells as python blocks."
import json
from pathlib import Path

root = Path(__file__).parents[1]
cells = json.loads((root/'nbs'/'index.ipynb').read_text())['cells']
parts = []
for c in cells:
    src = ''.join(c['source']).strip()
    if not src: continue
    if c['cell_type'] == 'markdown': parts.append(src); continue
    lines = src.splitlines()
    flags = ' '.join(l for l in lines if l.startswith('#|'))
    if 'hide' in flags or 'export' in flags: continue
    code = '\n'.join(l for l in lines if not l.startswith('#|')).strip()   # `#| eval: false` examples are shown, not run in tests
    parts.append(f"```python\n{code}\n```")
(root/'README.md').write_text('<!-- Written by .ci/readme.py from nbs/index.ipynb: edit the notebook, not this file. -->\n\n' + '\n\n'.join(parts) + '\n')
