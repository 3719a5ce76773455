"The README's commands are the ones CI runs."
from pathlib import Path
import re

ROOT = Path(__file__).parents[1]

def readme_commands():
    "The shell commands in the README's fenced `sh` blocks."
    return re.findall(r"```sh\n(.+?)\n```", (ROOT/'README.md').read_text())

def test_ci_runs_the_readme_test_command():
    main_job, tests = readme_commands()[:2]
    ci = (ROOT/'.ci'/'run').read_text()
    steps = tests.split(' && ')
    assert steps[-1] == 'python -m pytest tests'
    assert ' && '.join(steps[2:-1]) in ci, "the install step in .ci/run differs from the README's"
    assert re.search(r"^python -m pytest tests$", ci, re.M), ".ci/run must run the README's test command"
    job = main_job.split(' && ')
    install = job[:next(i for i,s in enumerate(job) if s.startswith('biofastai '))]
    assert steps[:len(install)] == install, "both README commands should install biofastai the same way"
