"""The README's examples, run as written against the shipped model folder `hub_card`.

Every fenced ```python block runs in a fresh subprocess (this interpreter), with a temporary
folder as its working directory holding what the examples read: `hub_card` (a link to the
repository's), `sketch.png` and `photo.jpg` (a demo example and a gallery photo of its class) and
`photos/` (four demo gallery photos). Every ```sh block runs the same way under bash (`-e`,
`pipefail`), with this interpreter's `bin/` first on PATH, unless the line just before its fence
is `<!-- not run by tests/test_readme.py: REASON -->` (installs, long runs, servers); of such a
block, every `zse-sbir COMMAND` must still be a real command (`zse-sbir COMMAND --help` exits 0).
The blocks are read from README.md and never changed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
TIMEOUT = 300  # seconds per block
SKIP_MARK = re.compile(r"^<!-- not run by tests/test_readme\.py: (?P<reason>\S.*?) -->$")
FENCE = re.compile(r"^```(?P<lang>[\w+-]*)\s*$")
SHELL_LANGS = {"sh", "bash", "shell"}
SETUP_COMMANDS = ('pip install torch==2.13.0 -e ".[demo]" && zse-sbir demo',
                  'pip install torch==2.13.0 -e ".[dev]" && python -m pytest -q')


@dataclass(frozen=True)
class Block:
    lang: str
    code: str
    line: int  # 1-based line of the opening fence
    skip_reason: str | None  # from the marker on the line before the fence

    @property
    def id(self) -> str:
        return f"{self.lang}-line{self.line}"


def readme_blocks(text: str) -> list[Block]:
    """The fenced blocks of `text`, in order, each with the not-run reason marked before it."""
    lines = text.splitlines()
    blocks, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        j = i + 1
        while j < len(lines) and lines[j].rstrip() != "```":
            j += 1
        if j == len(lines):
            raise ValueError(f"README.md line {i + 1}: the fence is never closed")
        mark = SKIP_MARK.match(lines[i - 1].strip()) if i else None
        blocks.append(Block(m["lang"], "\n".join(lines[i + 1:j]) + "\n", i + 1, mark["reason"] if mark else None))
        i = j + 1
    return blocks


BLOCKS = readme_blocks(README.read_text(encoding="utf-8"))
PYTHON = [b for b in BLOCKS if b.lang == "python"]
SHELL = [b for b in BLOCKS if b.lang in SHELL_LANGS]
SHELL_RUN = [b for b in SHELL if b.skip_reason is None]
SHELL_NOT_RUN = [b for b in SHELL if b.skip_reason is not None]
BIN = Path(sys.executable).parent


def _zse_sbir() -> list[str]:
    """The `zse-sbir` console script of this interpreter (or the same entry point through it)."""
    script = BIN / "zse-sbir"
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from zse_hf.cli import main; sys.exit(main())"]


def _env() -> dict:
    env = dict(os.environ)
    env["PATH"] = str(BIN) + os.pathsep + env.get("PATH", "")
    env["HF_HUB_OFFLINE"] = "1"  # the examples use local folders; nothing may come from the Hub
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    """A working directory with the files the README's examples read."""
    (tmp_path / "hub_card").symlink_to(ROOT / "hub_card", target_is_directory=True)
    gallery, examples = ROOT / "demo" / "gallery", ROOT / "demo" / "examples"
    shutil.copyfile(examples / "cow__quickdraw-068.png", tmp_path / "sketch.png")
    shutil.copyfile(gallery / "cow__cow.jpg", tmp_path / "photo.jpg")
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("cow__cow.jpg", "airplane__747.jpg", "giraffe__giraffe.jpg", "scissors__scissors_small_open.jpg"):
        shutil.copyfile(gallery / name, photos / name)
    return tmp_path


def _run(cmd: list[str], cwd: Path, what: str) -> subprocess.CompletedProcess:
    try:
        done = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=TIMEOUT)
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"{what} did not finish in {TIMEOUT} s:\n{(err.stderr or '')[-3000:]}")
    assert done.returncode == 0, (
        f"{what} exited {done.returncode}\n--- stdout\n{done.stdout[-3000:]}\n--- stderr\n{done.stderr[-3000:]}")
    return done


def test_readme_has_examples_and_the_setup_commands():
    """The parser found the examples, every block names its language, the two set-up commands
    (which `.ci/run` and the Space rely on) are there verbatim, and only shell blocks are skipped."""
    assert PYTHON and SHELL_RUN and SHELL_NOT_RUN
    unnamed = [b.line for b in BLOCKS if b.lang not in SHELL_LANGS | {"python"}]
    assert not unnamed, f"README.md fences without a python/sh language at lines {unnamed}"
    skipped_python = [b.line for b in PYTHON if b.skip_reason]
    assert not skipped_python, f"python blocks must run as written; marked not run at lines {skipped_python}"
    for command in SETUP_COMMANDS:
        assert any(command in b.code.splitlines() for b in SHELL_NOT_RUN), command


def test_readme_stays_short():
    """The README is the front page: at most 300 lines; details live in docs/ and demo/README.md."""
    assert len(README.read_text(encoding="utf-8").splitlines()) <= 300


def test_ci_runs_the_readme_test_command_in_a_fresh_virtualenv():
    """`.ci/run` makes a new virtualenv each run, activates it, then runs the README's test command
    verbatim in it, as a newcomer's machine would (an environment left from earlier runs could hide
    what today's packages do)."""
    lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()]
    code = [line for line in lines if line and not line.startswith("#")]
    venv = next(i for i, line in enumerate(code) if line.startswith("python3 -m venv ") and "mktemp" not in line)
    activate = next(i for i, line in enumerate(code) if line.startswith("source ") and "/bin/activate" in line)
    test_command = code.index(SETUP_COMMANDS[1])
    assert venv < activate < test_command
    assert any("mktemp -d" in line for line in code[:venv]), "the virtualenv must live in a new folder every run"


@pytest.mark.parametrize("block", PYTHON, ids=[b.id for b in PYTHON])
def test_python_example_runs_as_written(block: Block, workspace: Path):
    script = workspace / f"readme_example_line{block.line}.py"
    script.write_text(block.code, encoding="utf-8")
    _run([sys.executable, script.name], workspace, f"README.md python block at line {block.line}")


@pytest.mark.parametrize("block", SHELL_RUN, ids=[b.id for b in SHELL_RUN])
def test_shell_example_runs_as_written(block: Block, workspace: Path):
    if shutil.which("bash") is None:
        pytest.skip("bash is not installed")
    if not (BIN / "zse-sbir").is_file() and "zse-sbir" in block.code:
        pytest.skip(f"no zse-sbir console script beside {sys.executable} (install the package)")
    _run(["bash", "-e", "-o", "pipefail", "-c", block.code], workspace, f"README.md sh block at line {block.line}")


def _commands(code: str) -> list[str]:
    return sorted(set(re.findall(r"(?<![\w-])zse-sbir\s+([a-z][a-z-]*)", code)))


@pytest.mark.parametrize("block", SHELL_NOT_RUN, ids=[b.id for b in SHELL_NOT_RUN])
def test_commands_of_examples_not_run_exist(block: Block, tmp_path: Path):
    """A block that is too slow to run still names only real `zse-sbir` commands."""
    for command in _commands(block.code):
        _run([*_zse_sbir(), command, "--help"], tmp_path, f"`zse-sbir {command} --help` (README.md line {block.line})")


def test_block_parser():
    text = ("intro\n<!-- not run by tests/test_readme.py: installs -->\n```sh\npip install x\n```\n"
            "```python\nprint(1)\n```\n")
    assert readme_blocks(text) == [Block("sh", "pip install x\n", 3, "installs"),
                                   Block("python", "print(1)\n", 6, None)]
    assert _commands("zse-sbir eval --model m && zse-sbir  search i s\nnot-zse-sbir x") == ["eval", "search"]
