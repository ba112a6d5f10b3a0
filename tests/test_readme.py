"""The README's quick commands run as written, top to bottom, in a fresh folder (issue 15):
every ```bash block after a `<!-- readme-test: run -->` marker, line by line (a trailing
backslash joins lines), except the install and the test suite itself (this is part of it).

    python tests/test_readme.py          # the same, outside pytest, printing each command
"""
import os
import re
import shutil
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MARK = "<!-- readme-test: run -->"
SKIP = ("pip install", "python tests/run_all.py")  # done already / this very suite


def commands(readme=os.path.join(ROOT, "README.md")):
    """The commands of every marked block, in order."""
    text = open(readme, encoding="utf-8").read()
    out = []
    for block in re.findall(re.escape(MARK) + r"\s*```bash\n(.*?)```", text, re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        out += [ln.strip() for ln in joined.splitlines()
                if ln.strip() and not ln.lstrip().startswith("#")]
    return out


def workspace():
    """A fresh folder holding what the commands read from the repository."""
    d = tempfile.mkdtemp(prefix="hpcml-readme-")
    for name in ("examples", "slurm"):
        shutil.copytree(os.path.join(ROOT, name), os.path.join(d, name))
    return d


def test_readme_commands_run_as_written(tmp_path):
    import procs
    cmds = commands()
    assert len(cmds) >= 10 and any("hpcml.predict" in c for c in cmds), cmds
    d = workspace()
    try:
        for cmd in cmds:
            if cmd.startswith(SKIP):
                continue
            r = procs.run(["bash", "-c", cmd], limit=240, cwd=d)
            assert r.returncode == 0, f"{cmd}\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
            assert "Traceback" not in r.stderr and "Warning" not in r.stderr, (cmd, r.stderr)
    finally:
        shutil.rmtree(d, ignore_errors=True)


def main():
    import subprocess
    d = workspace()
    print(f"# in {d}")
    for cmd in commands():
        if cmd.startswith(SKIP):
            print(f"# skipped: {cmd}")
            continue
        t = time.perf_counter()
        r = subprocess.run(["bash", "-c", cmd], cwd=d)
        print(f"# {time.perf_counter() - t:.1f} s, exit {r.returncode}: {cmd}", flush=True)
        if r.returncode:
            return 1
    shutil.rmtree(d, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
