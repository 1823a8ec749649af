"""README.md is executed: every ```bash/```sh/```console block and every ```python block.

The blocks are parsed from README.md at test time, so the README cannot drift from the code.
Each block is one test, id `bash:L63` / `python:L88`: the README line of the block's first line of
code. Blocks run in README order in one xdist worker, sharing state as a reader's session would:

- Python blocks share one namespace (a later block may use names an earlier one defined) and
  run in the shell blocks' working folder (below; so Python can load a run a command trained),
  in one fresh Python started for them
  (tests/readme_worker.py), not in pytest's process: there most of sdegen is already imported
  and conftest has set float64 as torch's default dtype, so a block could pass that fails for a
  reader (`import sdegen` then `sdegen.training...` did).
- Shell blocks are split into commands (backslash continuations joined, comments after an
  unquoted `#` dropped, `&&` and `;` split, `> FILE` honoured; pipes and the rest of the shell
  are reported as unsupported) and run one after the other in ONE empty temporary
  folder shared by the whole README, so `sdegen sample --run runs/toy` finds the run that
  `sdegen train --run runs/toy` made. All commands of a block run; the test reports every
  failing one with its README line, exit code and the tails of stdout and stderr.

To keep the whole file under 3 minutes on 2 busy cores, long jobs get the documented fast flags
or small overrides from the REWRITES table below (appended: argparse keeps the last value of
an option and load_config applies `--set` overrides in order, see test_later_options_win).

A block is skipped only by an HTML comment on the line(s) right before its opening fence:

    <!-- readme-test: skip (why, e.g. needs a GPU) -->
"""

from __future__ import annotations

import json
import os
import re
import resource
import select
import shlex
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

# The README runs torchrun: in the "ddp" group with the DDP tests, so no two torchrun runs of
# the suite overlap (tests/_ddp.py).
pytestmark = pytest.mark.xdist_group("ddp")

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

SHELL_LANGS = {"bash", "sh", "shell", "console"}
PYTHON_LANGS = {"python", "py", "python3"}
COMMAND_TIMEOUT_S = 300

# ---- how README commands are run --------------------------------------------------------------
#
# Appended to `sdegen SUBCOMMAND ...`, after the README's own arguments, so they win.
REWRITES: dict[str, list[str]] = {
    # documented in the README: "runs the same pipeline on a few steps in about half a minute"
    "quickstart": ["--fast"],
    # a few steps on a small batch: the test checks the commands work, not the model's quality
    # (n_train sizes the toy data sets only; digits ignore it)
    # (latent_steps: a latent run's autoencoder stage; other runs record and ignore it)
    "train": (
        "--set steps=10 --set batch_size=64 --set n_train=2000 --set latent_steps=10 --quiet"
    ).split(),
    # --resume accepts --set steps only; 15 > the first part's 10, so it trains on
    "train --resume": "--set steps=15 --quiet".split(),
    "sample": "--n 8".split(),
    "likelihood": "--n 8".split(),
    "demo": "--n 500".split(),
}
# `sdegen bench NAME`: the smoke flags tests/test_benchmarks.py uses, and --out into the
# temporary folder (a benchmark's default --out is benchmarks/results/, tracked in git).
# A benchmark not listed here fails the test: a full run takes minutes.
BENCH_SMOKE: dict[str, list[str]] = {
    "solvers_mixture": (
        "--n 200 --nfe 5 --sdes vp --methods dpmpp_2m heun --seeds 1 --floor-sets 2 "
        "--out bench/solvers_mixture"
    ).split(),
    "schedules": (
        "--n 200 --nfe 5 --seeds 1 --sdes vp --methods heun --out bench/schedules"
    ).split(),
    "likelihood": (
        "--quick --toy moons --no-digits --families realnvp --out bench/likelihood"
    ).split(),
    "digits_classifier": "--steps 10 --out bench/digits_classifier.safetensors".split(),
    "vae": "--quick --out bench/vae".split(),
}
# A config file a command names (`--config my.yaml`) that the README does not show how to make
# is written before the command runs: this content, or an empty mapping (all defaults).
CONFIG_FILES: dict[str, str] = {
    # a fallback: the README makes my.yaml itself (`printf ... > my.yaml`) at the time of writing
    "my.yaml": "data: digits\n",
}
# torchrun runs as `python -m torch.distributed.run` (2 CPU processes, gloo, with the `train`
# rewrites above) on a static rendezvous at 127.0.0.1 and a port free just before: its default
# for one node (and --standalone's) is a c10d rendezvous on localhost:0, and such runs failed
# when they overlapped with the DDP tests' (tests/_ddp.py explains).
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1"]


def _torchrun() -> list[str]:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return [*TORCHRUN, "--master-addr", "127.0.0.1", "--master-port", str(port)]


def _port_taken(command: list[str], stderr: str | None) -> bool:
    """Whether a torchrun command failed because its master port was taken by then."""
    text = (stderr or "").lower()
    taken = "address already in use" in text or "eaddrinuse" in text
    return command[: len(TORCHRUN)] == TORCHRUN and "--master-port" in command and taken


# Plain utilities a README may use to make or show files (`printf '...' > my.yaml`): run as
# they are, in the shared folder.
UTILITIES = {"printf", "echo", "cat", "ls", "mkdir", "touch", "cp", "head", "tail"}
# Commands that are documented but not run here: CI runs them itself.
NOT_RUN = {
    "pip": "installs packages (CI installs the package itself; nothing is downloaded here)",
    "pytest": "runs the test suite (CI runs it; it includes this file)",
}

SKIP_MARKER = re.compile(r"<!--\s*readme-test:\s*skip\s*\((?P<reason>.+)\)\s*-->")
FENCE = re.compile(r"^ {0,3}(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`]*)$")


# ---- parsing README.md ------------------------------------------------------------------------


@dataclass
class Block:
    lang: str  # "bash" or "python" (the kind, not the exact tag)
    line: int  # README line of the first line of code (1-based)
    code: str
    tag: str  # the fence's info string as written
    skip: str | None = None  # reason given by a skip marker
    marker_error: str | None = None

    @property
    def id(self) -> str:
        return f"{self.lang}:L{self.line}"


def parse_blocks(text: str) -> list[Block]:
    """Every fenced block tagged as shell or Python, in README order."""
    lines = text.splitlines()
    blocks, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, tag = m["fence"], m["info"].strip()
        j = i + 1
        while j < len(lines):
            close = FENCE.match(lines[j])
            if close and close["fence"][0] == fence[0] and len(close["fence"]) >= len(fence):
                if not close["info"].strip():
                    break
            j += 1
        lang = tag.split()[0].lower() if tag else ""
        kind = "bash" if lang in SHELL_LANGS else "python" if lang in PYTHON_LANGS else None
        if kind is not None:
            block = Block(kind, i + 2, "\n".join(lines[i + 1 : j]), tag)
            k = i - 1
            while k >= 0 and not lines[k].strip():
                k -= 1
            if k >= 0 and "readme-test" in lines[k]:
                marker = SKIP_MARKER.search(lines[k])
                if marker:
                    block.skip = marker["reason"].strip()
                else:
                    block.marker_error = (
                        f"README.md:{k + 1}: malformed marker {lines[k].strip()!r}; write "
                        "<!-- readme-test: skip (reason) -->"
                    )
            blocks.append(block)
        i = j + 1
    return blocks


@dataclass
class Command:
    line: int  # README line where the command starts
    text: str  # as written (continuations joined, comment dropped; its part of an && chain)
    argv: list[str]
    error: str | None = None  # syntax this test does not run
    stdout_to: str | None = None  # `> FILE` (or `>> FILE`, then append is True)
    append: bool = False


def _strip_comment(line: str) -> str:
    """The line without its comment: a `#` starting a word, outside quotes (as in bash)."""
    quote, prev = None, " "
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"" and prev != "\\":
            quote = ch
        elif ch == "#" and prev.isspace():
            return line[:i].rstrip()
        prev = ch
    return line


def parse_commands(block: Block) -> list[Command]:
    """The commands of a shell block; ```console blocks: only the `$ ` lines are commands."""
    raw = block.code.splitlines()
    logical: list[tuple[int, str]] = []
    k = 0
    while k < len(raw):
        start, line = block.line + k, raw[k]
        if block.tag.split()[0].lower() == "console":
            if not line.lstrip().startswith("$ "):
                k += 1
                continue
            line = line.lstrip()[2:]
        while line.endswith("\\") and k + 1 < len(raw):
            k += 1
            line = line[:-1] + " " + raw[k].strip()
        k += 1
        line = _strip_comment(line).strip()
        if line:
            logical.append((start, line))
    commands = []
    for start, line in logical:
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split, lexer.commenters = True, ""
        try:
            tokens = list(lexer)
        except ValueError as e:  # unbalanced quotes
            commands.append(Command(start, line, [], f"cannot split: {e}"))
            continue
        chained = any(t in ("&&", ";") for t in tokens)
        part: list[str] = []
        for tok in [*tokens, "&&"]:
            if tok in ("&&", ";"):
                if part:
                    commands.append(_command(start, shlex.join(part) if chained else line, part))
                part = []
            else:
                part.append(tok)
    return commands


def _command(line: int, text: str, tokens: list[str]) -> Command:
    """A Command from its words; `> FILE` / `>> FILE` at the end is the one redirection run."""
    cmd = Command(line, text, tokens)
    if len(tokens) >= 2 and tokens[-2] in (">", ">>") and not _is_operator(tokens[-1]):
        cmd.argv, cmd.stdout_to, cmd.append = tokens[:-2], tokens[-1], tokens[-2] == ">>"
    bad = [t for t in cmd.argv if _is_operator(t)]
    if bad:
        cmd.error = f"shell syntax {bad[0]!r} is not supported here (only &&, ; and > FILE)"
    return cmd


def _is_operator(token: str) -> bool:
    return bool(token) and set(token) <= set("();<>|&")


BLOCKS = parse_blocks(README.read_text(encoding="utf-8"))


# ---- state shared by the blocks, in README order ----------------------------------------------


@dataclass
class ReadmeSession:
    python_dir: Path
    shell_dir: Path
    env: dict
    worker: subprocess.Popen | None = None  # the Python that runs the Python blocks
    worker_log: Path | None = None  # its stderr: the blocks' own output
    failed_python: list[str] = field(default_factory=list)

    def python_worker(self) -> subprocess.Popen:
        if self.worker is None:
            self.worker_log = self.python_dir.parent / "python-blocks.log"
            with self.worker_log.open("w") as log:
                self.worker = subprocess.Popen(
                    [sys.executable, str(Path(__file__).with_name("readme_worker.py"))],
                    cwd=self.python_dir,
                    env=self.env,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=log,
                    text=True,
                )
        return self.worker


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    base = tmp_path_factory.mktemp("readme")
    # one working folder for both, as a reader's: Python can load the run a command trained
    (base / "work").mkdir()
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "MPLBACKEND": "Agg",
        # the checkout under test, whatever `pip install -e` points to
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        # the digits classifier cache: inside the temporary folder, not ~/.cache
        "SDEGEN_CACHE": str(base / "cache"),
    }
    state = ReadmeSession(base / "work", base / "work", env)
    yield state
    if state.worker is not None:
        state.worker.stdin.close()
        try:
            state.worker.wait(timeout=10)
        except subprocess.TimeoutExpired:
            state.worker.kill()
            state.worker.wait()


# ---- turning a README command into what runs ----------------------------------------------------


def _config_file(args: list[str], cwd: Path) -> None:
    """Write the config a `train --config PATH` names, when the README has not made it."""
    for i, a in enumerate(args):
        path = args[i + 1] if a == "--config" and i + 1 < len(args) else None
        if a.startswith("--config="):
            path = a.split("=", 1)[1]
        if path and not (cwd / path).exists():
            empty = "{}\n" if not path.endswith(".toml") else ""
            (cwd / path).parent.mkdir(parents=True, exist_ok=True)
            (cwd / path).write_text(CONFIG_FILES.get(path, empty))


def _sdegen_args(args: list[str], cwd: Path) -> list[str] | str:
    """The sdegen arguments with the REWRITES applied, or why the command cannot run."""
    sub = next((a for a in args if not a.startswith("-")), None)
    if sub == "bench":
        rest = args[args.index("bench") + 1 :]
        name = rest[0] if rest else None
        if name in BENCH_SMOKE:
            return [*args, *BENCH_SMOKE[name]]
        if name and (ROOT / "benchmarks" / f"{name}.py").is_file():
            return (
                f"benchmark {name!r} has no smoke flags in BENCH_SMOKE (tests/test_readme.py); "
                "a full run takes minutes and writes into benchmarks/results/"
            )
        return args  # an unknown name: let sdegen report it
    if sub == "train":
        _config_file(args, cwd)
        return [*args, *REWRITES["train --resume" if "--resume" in args else "train"]]
    return [*args, *REWRITES.get(sub, [])]


def resolve(cmd: Command, cwd: Path) -> tuple[str, list[str] | str, dict]:
    """For a README command: ("run", argv, env), ("not run", reason, {}) or ("error", why, {}).
    `NAME=value` words in front of a command go into env."""
    if cmd.error:
        return "error", cmd.error, {}
    argv, env = list(cmd.argv), {}
    while argv and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", argv[0]):
        key, value = argv.pop(0).split("=", 1)
        env[key] = value
    if any("..." in a or "\u2026" in a for a in argv):
        return "error", "placeholder '...' in the command: the README must show a runnable one", {}
    if not argv:
        return "error", "empty command", {}
    prog = argv[0]
    python_m = prog in ("python", "python3") and len(argv) > 2 and argv[1] == "-m"
    module = argv[2] if python_m else None
    if prog in NOT_RUN or module in NOT_RUN:
        return "not run", NOT_RUN[module or prog], {}
    if prog == "sdegen" or module == "sdegen":
        args = _sdegen_args(argv[1:] if prog == "sdegen" else argv[3:], cwd)
        if isinstance(args, str):
            return "error", args, {}
        return "run", [sys.executable, "-m", "sdegen", *args], env
    if prog in UTILITIES:
        return "run", argv, env
    if prog == "torchrun":
        rest = argv[1:]
        i = rest.index("-m") if "-m" in rest else -1
        if i < 0 or rest[i + 1 : i + 2] != ["sdegen"]:
            return "error", "only `torchrun ... -m sdegen ...` is run by tests/test_readme.py", {}
        args = _sdegen_args(rest[i + 2 :], cwd)
        if isinstance(args, str):
            return "error", args, {}
        return "run", [*_torchrun(), *rest[: i + 2], *args], env
    return "error", f"tests/test_readme.py has no rule to run {prog!r}; add one", {}


def _tail(text: str, lines: int = 25) -> str:
    # tqdm redraws with \r: keep the last state of each line
    out = [seg.split("\r")[-1] for seg in text.splitlines()]
    out = [s for s in out if s.strip()]
    return "\n".join(out[-lines:]) or "(empty)"


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_command(cmd: Command, session: ReadmeSession) -> str | None:
    """Run one README command; None when it passed or is not run, else the failure report."""
    where = f"README.md:{cmd.line}: `{cmd.text}`"
    kind, what, extra_env = resolve(cmd, session.shell_dir)
    if kind == "not run":
        print(f"{where}\n  not run: {what}")
        return None
    if kind == "error":
        return f"{where}\n  cannot run: {what}"
    env = {**session.env, **extra_env}
    ran = f"{where}\n  ran: {shlex.join(what)}"
    stdout = subprocess.PIPE
    if cmd.stdout_to:
        ran += f" {'>>' if cmd.append else '>'} {shlex.quote(cmd.stdout_to)}"
        target = session.shell_dir / cmd.stdout_to
        stdout = target.open("a" if cmd.append else "w")
    start, cpu = time.perf_counter(), _children_cpu()
    try:
        proc = subprocess.run(
            what,
            cwd=session.shell_dir,
            env=env,
            stdout=stdout,
            stderr=subprocess.PIPE,
            text=True,
            timeout=COMMAND_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else e.stdout or ""
        err = e.stderr.decode() if isinstance(e.stderr, bytes) else e.stderr or ""
        return (
            f"{ran}\n  timed out after {COMMAND_TIMEOUT_S} s\n"
            f"--- stdout ---\n{_tail(out)}\n--- stderr ---\n{_tail(err)}"
        )
    finally:
        if cmd.stdout_to:
            stdout.close()
    seconds, cpu = time.perf_counter() - start, _children_cpu() - cpu
    print(f"{ran}\n  exit code {proc.returncode} in {seconds:.1f} s ({cpu:.1f} s CPU)")
    if proc.returncode != 0 and _port_taken(what, proc.stderr):
        # the port was free when picked and taken before torchrun bound it: pick another once
        print(f"  the rendezvous port was taken meanwhile; once more on a new port\n{proc.stderr}")
        i = what.index("--master-port")
        retry = [*what[: i + 1], _torchrun()[-1], *what[i + 2 :]]
        proc = subprocess.run(
            retry,
            cwd=session.shell_dir,
            env=env,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT_S,
        )
    if proc.returncode != 0:
        return (
            f"{ran}\n  exit code {proc.returncode} after {seconds:.1f} s\n"
            f"--- stdout ---\n{_tail(proc.stdout or '')}\n--- stderr ---\n{_tail(proc.stderr)}"
        )
    return None


# ---- the tests ----------------------------------------------------------------------------------


def test_readme_has_runnable_blocks():
    # guards the parser: a README without one executable block is more likely a parsing bug
    assert BLOCKS, "no ```bash/```sh/```console or ```python block found in README.md"


def test_readme_links_to_its_own_sections_resolve():
    """Every [text](#anchor) link names a heading, anchored as GitHub does (lower case, spaces
    to hyphens, punctuation other than hyphens dropped), so the contents cannot drift."""
    text = README.read_text()
    prose = re.sub(r"```.*?```", "", text, flags=re.S)  # a # in code is not a heading
    anchors = {
        re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
        for h in re.findall(r"^#{1,6} (.+)$", prose, flags=re.M)
    }
    links = re.findall(r"\]\(#([^)]+)\)", text)
    assert links, "the README has no links to its sections (its contents line)"
    missing = sorted(set(links) - anchors)
    assert not missing, f"README links to sections that do not exist: {missing}"


def test_later_options_win():
    """The REWRITES append options: this holds only while the last value of each one wins."""
    from sdegen.assembly import load_config
    from sdegen.cli import build_parser

    assert load_config(None, ["steps=5000", "lr=1e-4", "steps=20"]).steps == 20
    args = build_parser().parse_args(["sample", "--run", "r", "--n", "64", "--n", "8"])
    assert args.n == 8
    args = build_parser().parse_args(["likelihood", "--run", "r", "--n", "0", "--n", "8"])
    assert args.n == 8


def test_readme_blocks_in_order(session: ReadmeSession):
    # One test walks every block in order: later blocks use what earlier ones made (files, names
    # in the Python session), so the blocks must not be spread over xdist workers or separated
    # by another module's tests (which would tear the session down between them). A failing
    # block does not stop the walk; every failure is reported with its README line.
    failures, skipped = [], []
    for block in BLOCKS:
        if block.marker_error:
            failures.append(f"{block.id}: {block.marker_error}")
            continue
        if block.skip:
            skipped.append(f"README.md:{block.line}: {block.skip}")
            continue
        try:
            if block.lang == "python":
                _run_python(block, session)
            else:
                _run_shell(block, session)
        except pytest.fail.Exception as e:
            failures.append(f"{block.id}: {e}")
    if failures:
        pytest.fail("\n\n".join(failures), pytrace=False)


def _run_python(block: Block, session: ReadmeSession) -> None:
    """Run the block in the session's Python (tests/readme_worker.py), after the earlier ones."""
    worker = session.python_worker()
    log_start = session.worker_log.stat().st_size
    answer = None
    if worker.poll() is None:
        request = {"code": block.code, "line": block.line, "path": str(README)}
        worker.stdin.write(json.dumps(request) + "\n")
        worker.stdin.flush()
        ready, _, _ = select.select([worker.stdout], [], [], COMMAND_TIMEOUT_S)
        if not ready:
            worker.kill()
            worker.wait()
            answer = {"ok": False, "error": f"timed out after {COMMAND_TIMEOUT_S} s"}
        else:
            reply = worker.stdout.readline()
            answer = json.loads(reply) if reply else None
    if answer is None:
        answer = {"ok": False, "error": f"the Python session ended (exit code {worker.poll()})"}
    if answer["ok"]:
        return
    earlier = session.failed_python[:]
    session.failed_python.append(block.id)
    with session.worker_log.open() as f:
        f.seek(log_start)
        output = _tail(f.read())
    pytest.fail(
        f"the Python block at README.md:{block.line} failed:\n{answer['error']}"
        + (f"\n(earlier Python blocks failed too: {', '.join(earlier)})" if earlier else "")
        + (f"\n--- the block's output ---\n{output}" if output != "(empty)" else ""),
        pytrace=False,
    )


def _run_shell(block: Block, session: ReadmeSession) -> None:
    commands = parse_commands(block)
    assert commands, f"README.md:{block.line}: a shell block without commands"
    failures = [f for f in (run_command(c, session) for c in commands) if f]
    if failures:
        pytest.fail(
            f"{len(failures)} of {len(commands)} commands of the block at README.md:{block.line} "
            "failed:\n\n" + "\n\n".join(failures),
            pytrace=False,
        )
