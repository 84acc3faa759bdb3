"""The docs say what the code does (issue 23, section 4): every Python example in
README.md and docs/ runs — the transport plug-in example is installed and clones for
real — and every frame type, exit code and command-line option the docs name exists,
with the number the docs give it; every option the CLI has is documented.

Negative controls (each tried once, then undone): the plug-in example's old
``from transports import …`` fails the first two tests ("No module named
'transports'"); LATER's row taken out of protocol.md's table fails the frame test;
``--stop-on-hangup`` taken out of the docs fails the option test, and so does a
``--no-such-option`` added to README.md.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from p2pclone.cli.parser import build_parser
from p2pclone.errors import ExitCode
from p2pclone.protocol import FrameType
from tests.conftest import MiB, random_file

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _blocks(language: str) -> list[tuple[str, int, str]]:
    """(file, line, text) of every fenced block in ``language``."""
    found = []
    for path in DOCS:
        text = path.read_text(encoding="utf-8")
        for m in re.finditer(rf"^```{language}\n(.*?)^```", text, re.M | re.S):
            found.append((path.name, text[: m.start()].count("\n") + 1, m.group(1)))
    return found


@pytest.mark.parametrize(("name", "line", "code"), _blocks("python"),
                         ids=lambda v: str(v) if isinstance(v, (str, int)) else "")  # fmt: skip
def test_every_python_example_runs(name: str, line: int, code: str, tmp_path: Path) -> None:
    """Each ```python block, in a fresh interpreter from outside the checkout, with
    p2pclone as installed (no PYTHONPATH: the checkout's top-level ``transports/``
    folder must not answer for ``p2pclone.transports``)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=60, cwd=tmp_path, env=env)  # fmt: skip
    assert r.returncode == 0, f"{name}:{line}: {r.stderr[-2000:]}"


def test_the_plugin_example_installs_and_clones(tmp_path: Path) -> None:
    """docs/transports.md's unix:// example, as a distribution would install it (its
    module and its entry point): `unix://` is a known scheme, a clone goes through it
    byte-identical, and an option it does not honour (--wait) is refused."""
    module = next(c for _n, _l, c in _blocks("python") if "class UnixTransport" in c)
    toml = next(c for _n, _l, c in _blocks("toml") if "p2pclone_unix:UnixTransport" in c)
    site = tmp_path / "site"
    site.mkdir()
    (site / "p2pclone_unix.py").write_text(module)
    dist = site / "p2pclone_unix-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: p2pclone-unix\nVersion: 1.0\n")
    entry = re.search(r'^unix = "([^"]+)"$', toml, re.M)
    assert entry is not None
    (dist / "entry_points.txt").write_text(f"[p2pclone.transports]\nunix = {entry.group(1)}\n")
    # p2pclone as installed, the plug-in beside it (not the checkout: its top-level
    # transports/ folder would answer for a wrong import)
    env = {**os.environ, "PYTHONPATH": str(site), "P2PCLONE_CODE": "2-unix-socket"}
    source, target, sock = tmp_path / "s.img", tmp_path / "t.img", tmp_path / "clone.sock"
    data = random_file(source, 3 * MiB)
    cli = [sys.executable, "-m", "p2pclone"]
    rx = subprocess.Popen([*cli, "receive", str(target), f"unix://{sock}", "--yes"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                          cwd=tmp_path)  # fmt: skip
    try:
        assert rx.stdout is not None and "Listening on unix://" in rx.stdout.readline()
        tx = subprocess.run([*cli, "send", str(source), f"unix://{sock}", "--exact"],
                            capture_output=True, text=True, timeout=60, env=env,
                            cwd=tmp_path)  # fmt: skip
        _out, rx_err = rx.communicate(timeout=60)
    finally:
        rx.kill()
    assert tx.returncode == 0 and rx.returncode == 0, tx.stderr + rx_err
    assert target.read_bytes() == data
    refused = subprocess.run([*cli, "send", str(source), f"unix://{sock}", "--wait", "3"],
                             capture_output=True, text=True, timeout=60, env=env,
                             cwd=tmp_path)  # fmt: skip
    assert refused.returncode == 2 and "--wait does not apply to" in refused.stderr
    assert "unix://" in refused.stderr


def test_every_frame_type_in_the_protocol_table_exists_with_its_number() -> None:
    """protocol.md §5's table names each frame with its type number: the same as
    FrameType, and every FrameType is in it (LOST and LATER were missing)."""
    text = (ROOT / "docs" / "protocol.md").read_text(encoding="utf-8")
    table = text[text.index("## 5. Messages") : text.index("### HELLO")]
    rows = {
        m.group(2): int(m.group(1)) for m in re.finditer(r"^\| (\d+) \| ([A-Z]+) ", table, re.M)
    }
    assert rows == {t.name: int(t) for t in FrameType}
    for heading in re.findall(r"^### ([A-Z]+) —", text, re.M):  # the sections name frames
        assert heading in FrameType.__members__, heading


def test_every_exit_code_in_the_docs_exists() -> None:
    """errors.md's table of exit codes is ExitCode's, and README's list says the same."""
    text = (ROOT / "docs" / "errors.md").read_text(encoding="utf-8")
    table = text[text.index("## Exit codes") : text.index("## Output format")]
    codes = {int(m.group(1)) for m in re.finditer(r"^\| (\d+) \|", table, re.M)}
    assert codes == {int(c) for c in ExitCode}
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    said = re.search(r"Exit codes: (.*?)\(see", readme, re.S)
    assert said is not None
    assert {int(n) for n in re.findall(r"(\d+) [a-z]", said.group(1))} == codes


#: options of other programs that the docs quote (not p2pclone's, nor the benchmarks')
FOREIGN = {
    "--setro",  # blockdev
    "--setrw",  # blockdev
    "--info",  # ntfsresize (the shrink estimate)
    "--disk-id",  # sfdisk (an MBR's signature)
    "--new-serial",  # ntfslabel
    "--regenerate-all",  # dracut
}


def _cli_options() -> set[str]:
    parser = build_parser()
    found = {"--help", "--version"}
    for sub in parser._subparsers._group_actions[0].choices.values():  # type: ignore[union-attr]
        for action in sub._actions:
            found.update(o for o in action.option_strings if o.startswith("--"))
    return found


def _bench_options() -> set[str]:
    found: set[str] = set()
    for script in sorted((ROOT / "bench").glob("*.py")):
        text = script.read_text(encoding="utf-8")
        found.update(re.findall(r"add_argument\(\s*\"(--[a-z][a-z0-9-]*)\"", text))
    return found


def test_every_option_the_docs_name_exists_and_every_option_is_documented() -> None:
    """A `--option` in README.md or docs/ is one of p2pclone's (or a benchmark's, or a
    quoted foreign tool's); and every option of p2pclone's is written somewhere."""
    named: dict[str, str] = {}
    for path in DOCS:
        # Fences with no language are diagrams ("DATA --send END--> …"), not commands.
        text = re.sub(r"^```\n.*?^```", "", path.read_text(encoding="utf-8"), flags=re.M | re.S)
        for m in re.finditer(r"(?<![\w-])(--[a-z][a-z0-9-]+)", text):
            named.setdefault(m.group(1), path.name)
    ours = _cli_options()
    unknown = {o: f for o, f in named.items() if o not in ours | _bench_options() | FOREIGN}
    assert not unknown, f"options the docs name that nothing has: {unknown}"
    undocumented = ours - set(named) - {"--version"}
    assert not undocumented, f"options no doc mentions: {sorted(undocumented)}"


def test_the_help_of_each_command_names_its_options() -> None:
    """`p2pclone COMMAND --help` lists every option (argparse does; a check that the
    parser builds and prints for each command)."""
    for command in ("receive", "send", "clone", "image", "disks", "peers", "demo"):
        r = subprocess.run([sys.executable, "-m", "p2pclone", command, "--help"],
                           capture_output=True, text=True, timeout=30, cwd=ROOT)  # fmt: skip
        assert r.returncode == 0 and "usage: p2pclone " + command in r.stdout, r.stderr
        assert textwrap.dedent(r.stdout).count("--") >= 1
