"""Extract the shell commands that README.md and docs/*.md show in code blocks and check that each one would start.

Why: README commands rot silently (configs/distill.yaml was shown long before it existed). For every command this
checks, without running anything heavy, that the script / module / console script exists, that its flags pass its own
argument parser (the real parser, stopped right after parsing), that every config file it names exists and loads as a
run config with the given overrides, and that every path into the repository's own folders exists. A command whose
program is in no registry below is an error, so a new kind of README command gets a conscious check. A line that
the shell could not parse (an unclosed quote) is an error too. Beside the commands, every relative Markdown link of
those files must point at a file that exists (and at a heading of it, for `file.md#anchor`), and every repository path
named in backticks (`adakd_ds/engine/recipe.py`) must exist, so a moved file cannot leave the docs behind.
"""

from __future__ import annotations

import argparse
import configparser
import contextlib
import enum
import importlib
import importlib.util
import io
import re
import runpy
import shlex
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.doc_links import check_links, check_prose_paths, line_name

REPO = Path(__file__).resolve().parents[1]
SHELL_LANGS = ("bash", "sh", "shell", "console")
SEPARATORS = ("&&", "||", ";", "|")
PLACEHOLDER = "..."  # `--model ...`: a value the reader fills in
RUNTIME_DIRS = ("runs", "quickstart_out", "experiment_out")  # made by the commands themselves


class Program(str, enum.Enum):
    """How a command's first word is checked."""

    PYTHON = "python"  # python X.py ... | python -m module ...
    LAUNCHER = "launcher"  # deepspeed / torchrun: their own flags, then a python script
    CONSOLE = "console"  # a console script of setup.cfg
    SHELL = "shell"  # bash X.sh ... or ./X.sh
    SBATCH = "sbatch"  # sbatch [its flags] SCRIPT [trainer overrides]
    EXTERNAL = "external"  # a third-party tool whose flags are not ours to check


EXTERNAL_TOOLS = frozenset({
    "pip", "pytest", "tensorboard", "scancel", "scontrol", "squeue", "salloc", "srun", "cd", "export", "git", "cat",
    "ls", "head", "tail", "mkdir", "cp", "echo", "nvidia-smi", "huggingface-cli", "hf",
})  # fmt: skip
LAUNCHERS = frozenset({"deepspeed", "torchrun"})
# Wrappers in front of the real command: name -> its options that take a value, and how many positionals it eats.
WRAPPERS: dict[str, tuple[frozenset[str], int]] = {
    "time": (frozenset(), 0),
    "/usr/bin/time": (frozenset({"-f", "-o", "--format", "--output"}), 0),
    "nice": (frozenset({"-n", "--adjustment"}), 0),
    "timeout": (frozenset({"-s", "--signal", "-k", "--kill-after"}), 1),
    "env": (frozenset({"-u", "--unset"}), 0),
    "adakd-launch": (frozenset(), 0),  # our supervisor: the launcher command behind it is what gets checked
}
REDIRECT = re.compile(r"^(\d?>>?|<|&>)(.*)$")  # `> file`, `2>/dev/null`, `>>log`, `2>&1`


@dataclass
class Command:
    """One command as the README shows it (continuations joined, comments and shell prompts dropped)."""

    line: int  # README line of the command's first line
    text: str
    env: dict[str, str] = field(default_factory=dict)
    argv: list[str] = field(default_factory=list)
    error: str | None = None  # the shell could not parse the line


class ParsedOK(BaseException):  # noqa: N818 - a signal, not an error
    """Raised right after an argument parser accepted its arguments, so that nothing behind it runs (a BaseException,
    like SystemExit, so that an entry point's own `except Exception` cannot swallow it)."""


def console_scripts() -> dict[str, str]:
    """name -> 'module:function' from setup.cfg."""
    cp = configparser.ConfigParser()
    cp.read(REPO / "setup.cfg")
    raw = cp.get("options.entry_points", "console_scripts", fallback="")
    pairs = (line.split("=", 1) for line in raw.strip().splitlines() if "=" in line)
    return {k.strip(): v.strip() for k, v in pairs}


def _blocks(text: str) -> Iterator[tuple[int, list[str]]]:
    """(first line number, lines) of each fenced shell code block."""
    lines, i = text.splitlines(), 0
    while i < len(lines):
        m = re.match(r"^\s*```\s*(\w*)", lines[i])
        if not m:
            i += 1
            continue
        start, i = i + 1, i + 1
        while i < len(lines) and not lines[i].strip().startswith("```"):
            i += 1
        if m.group(1).lower() in SHELL_LANGS:
            yield start + 1, lines[start:i]
        i += 1


def _unbracket(tokens: list[str]) -> list[str]:
    """`[--greedy]` -> `--greedy`; an optional group holding `...` (a pattern, not a flag) is dropped."""
    out: list[str] = []
    group: list[str] | None = None
    for tok in tokens:
        if group is None and tok.startswith("[") and not tok.startswith("[["):
            group = []
            tok = tok[1:]
        if group is None:
            out.append(tok)
            continue
        closing = tok.endswith("]")
        group.append(tok[:-1] if closing else tok)
        if closing:
            if not any(PLACEHOLDER in t for t in group):
                out.extend(t for t in group if t)
            group = None
    return out + (group or [])


def extract_commands(text: str) -> list[Command]:
    """Every command of every fenced bash/sh block of a markdown text."""
    commands = []
    for first, lines in _blocks(text):
        joined: list[tuple[int, str]] = []
        for n, raw in enumerate(lines, first):
            line = re.sub(r"^\s*\$\s+", "", raw)
            if joined and joined[-1][1].endswith("\\"):
                joined[-1] = (joined[-1][0], joined[-1][1][:-1] + " " + line.strip())
            else:
                joined.append((n, line.strip()))
        for n, line in joined:
            try:
                tokens = shlex.split(line, comments=True)
            except ValueError as exc:
                commands.append(Command(n, line, error=f"the shell cannot parse it: {exc}"))
                continue
            current: list[str] = []
            for tok in [*tokens, ";"]:
                if tok not in SEPARATORS:
                    current.append(tok)
                    continue
                argv, env = _unwrap(_without_redirects(current))
                if argv:
                    commands.append(Command(n, line, env, _unbracket(argv)))
                current = []
    return commands


def _without_redirects(tokens: list[str]) -> list[str]:
    out, skip = [], False
    for tok in tokens:
        m = REDIRECT.match(tok)
        if skip or m:
            skip = bool(m) and not m.group(2)  # a bare `>`: the next word is its file
            continue
        out.append(tok)
    return out


def _unwrap(tokens: list[str]) -> tuple[list[str], dict[str, str]]:
    """(the real command, its VAR=value assignments) past any env assignments and WRAPPERS in front of it."""
    env: dict[str, str] = {}
    rest = list(tokens)
    while rest:
        if re.match(r"^[A-Za-z_]\w*=", rest[0]):
            k, v = rest.pop(0).split("=", 1)
            env[k] = v
        elif rest[0] in WRAPPERS:
            valued, positionals = WRAPPERS[rest.pop(0)]
            while rest and rest[0].startswith("-"):
                flag = rest.pop(0)
                if flag in valued and rest:
                    rest.pop(0)
            del rest[:positionals]
        else:
            break
    return rest, env


def classify(word: str) -> Program | None:
    if word in ("python", "python3") or word.endswith("/python"):
        return Program.PYTHON
    if word in LAUNCHERS:
        return Program.LAUNCHER
    if word in console_scripts():
        return Program.CONSOLE
    if word in ("bash", "sh") or word.endswith(".sh"):
        return Program.SHELL
    if word == "sbatch":
        return Program.SBATCH
    if word in EXTERNAL_TOOLS:
        return Program.EXTERNAL
    return None


@contextlib.contextmanager
def _stop_after_parsing() -> Iterator[io.StringIO]:
    """Every argparse parser, and the trainer's config loading, stops with ParsedOK once its arguments are read."""
    from adakd_ds.engine import recipe
    from adakd_ds.engine.guard import preflight

    orig_parse, orig_known = argparse.ArgumentParser.parse_args, argparse.ArgumentParser.parse_known_args
    depth = [0]

    def parse_args(self, args=None, namespace=None):  # noqa: ANN001, ANN202 - argparse's own signature
        depth[0] += 1
        try:
            orig_parse(self, args, namespace)
        finally:
            depth[0] -= 1
        raise ParsedOK(self.prog)

    def parse_known_args(self, args=None, namespace=None):  # noqa: ANN001, ANN202
        result = orig_known(self, args, namespace)
        if depth[0] == 0:  # called directly: unknown flags are allowed by design
            raise ParsedOK(self.prog)
        return result

    class _Recipe:  # the trainer's config was loaded and validated: that is the trainer's "parse"
        def __init__(self, cfg) -> None:  # noqa: ANN001
            raise ParsedOK("adakd-distill")

    def _preflight(cfg):  # noqa: ANN001, ANN202  (the README's model and data paths are examples, not files here)
        raise ParsedOK("adakd-distill")

    err, saved_argv, saved_recipe, saved_preflight = io.StringIO(), sys.argv, recipe.DistillRecipe, preflight.preflight
    saved_cache_preflight = preflight.preflight_cache
    preflight.preflight = preflight.preflight_cache = _preflight
    argparse.ArgumentParser.parse_args = parse_args  # type: ignore[method-assign]
    argparse.ArgumentParser.parse_known_args = parse_known_args  # type: ignore[method-assign]
    recipe.DistillRecipe = _Recipe  # type: ignore[misc, assignment]
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            yield err
    finally:
        sys.argv = saved_argv
        argparse.ArgumentParser.parse_args, argparse.ArgumentParser.parse_known_args = orig_parse, orig_known
        recipe.DistillRecipe = saved_recipe  # type: ignore[misc]
        preflight.preflight = saved_preflight
        preflight.preflight_cache = saved_cache_preflight


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def probe(run: Callable[[], object], argv0: str, args: list[str]) -> str | None:
    """None when `run` (an entry point reading sys.argv) accepts `args`; else the last line its parser printed."""
    with _stop_after_parsing() as err:
        sys.argv = [argv0, *args]
        try:
            rc = run()
        except ParsedOK:
            return None
        except SystemExit as exc:
            if exc.code in (0, None):
                return None  # --help
            return f"exit {exc.code}: {_last_line(err.getvalue()) or exc.code}"
    if isinstance(rc, int) and rc != 0:
        return f"exit {rc}: {_last_line(err.getvalue())}"
    return "finished without reaching an argument parser (nothing was checked)"


def _python_target(args: list[str]) -> tuple[Callable[[], object] | None, list[str], str | None]:
    """(runner, remaining args, problem) for `python X.py ...` / `python -m mod ...` (args without `python`)."""
    if not args:
        return None, [], "python with no script"
    if args[0] == "-m":
        mod = args[1]
        if importlib.util.find_spec(mod) is None:
            return None, [], f"no module {mod}"
        if mod in ("torch.distributed.run", "deepspeed.launcher.runner"):
            return None, [], "use the torchrun / deepspeed form in the README"
        return (lambda: runpy.run_module(mod, run_name="__main__", alter_sys=False)), args[2:], None
    script = REPO / args[0]
    if not script.is_file():
        return None, [], f"script {args[0]} does not exist"
    return (lambda: runpy.run_path(str(script), run_name="__main__")), args[1:], None


def _launcher_split(name: str, args: list[str]) -> tuple[list[str], list[str]]:
    """(launcher's own args, script + its args): the script is the first word ending in .py."""
    for i, a in enumerate(args):
        if a.endswith(".py"):
            return args[:i], args[i:]
    return args, []


def _check_launcher(name: str, args: list[str]) -> list[str]:
    own, rest = _launcher_split(name, args)
    if not rest:
        return [f"{name}: no python script"]
    if name == "torchrun":
        from torch.distributed.run import main as entry
    else:
        from deepspeed.launcher.runner import main as entry
    problems = [f"{name} flags: {p}" for p in [probe(lambda: entry(sys.argv[1:]), name, [*own, rest[0]])] if p]
    script_args = rest[1:] + (["--local_rank=0"] if name == "deepspeed" else [])  # deepspeed adds it per rank
    return problems + _check_python([rest[0], *script_args])


def _check_python(args: list[str]) -> list[str]:
    run, rest, problem = _python_target(args)
    if problem:
        return [problem]
    result = probe(run, args[0], rest)
    return [f"{' '.join(args[:2])}: {result}"] if result else []


def _check_console(name: str, args: list[str]) -> list[str]:
    module, func = console_scripts()[name].split(":")
    entry = getattr(importlib.import_module(module), func)
    result = probe(entry, name, args)
    return [f"{name}: {result}"] if result else []


def _without_functions(body: str) -> str:
    """A shell script without its function bodies, whose "$@" are the function's arguments, not the script's."""
    body = re.sub(r"^\s*\w+\(\)\s*\{[^\n]*\}\s*$", "", body, flags=re.M)
    return re.sub(r"^\s*\w+\(\)\s*\{\s*$.*?^\}\s*$", "", body, flags=re.M | re.S)


def _check_shell(args: list[str]) -> list[str]:
    words = args[1:] if args[0] in ("bash", "sh") else args
    script = REPO / words[0]
    if not script.is_file():
        return [f"script {words[0]} does not exist"]
    if subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode != 0:
        return [f"{words[0]}: bash -n reports a syntax error"]
    if len(words) == 1:
        return []
    body = _without_functions(script.read_text())
    if not re.search(r'"\$@"|\$\*|\$\{?[1-9]', body):
        return [f"{words[0]} takes no arguments, but the README passes {words[1:]}"]
    forwarded = re.search(r"python3?\s+(\S+\.py)\s+\"\$@\"", body)  # passed on to a python script: check there
    return _check_python([forwarded.group(1), *words[1:]]) if forwarded else []


def _check_sbatch(cmd: Command) -> list[str]:
    scripts = [i for i, a in enumerate(cmd.argv) if (REPO / a).is_file() or a.endswith(".sbatch")]
    if not scripts:
        return ["sbatch: no batch script"]
    i = scripts[0]
    if not (REPO / cmd.argv[i]).is_file():
        return [f"batch script {cmd.argv[i]} does not exist"]
    return _check_run_config(cmd.env.get("ADAKD_CONFIG"), cmd.argv[i + 1 :])  # the template passes them on


def _check_run_config(path: str | None, overrides: list[str]) -> list[str]:
    from adakd_ds.config.load import ConfigError, load_config

    if path is None or PLACEHOLDER in path:
        return []
    try:
        load_config(str(REPO / path), overrides).validate()
    except (ConfigError, ValueError) as exc:
        return [f"run config {path}: {exc}"]
    return []


def _check_paths(cmd: Command) -> list[str]:
    """Config files named by flags or env vars, and every path into the repository's own folders, must exist."""
    problems = []
    own_dirs = {p.name for p in REPO.iterdir() if p.is_dir() and not p.name.startswith(".")} - set(RUNTIME_DIRS)
    for i, tok in enumerate(cmd.argv):
        value = tok.split("=", 1)[1] if tok.startswith("--") and "=" in tok else tok
        names_config = i > 0 and cmd.argv[i - 1].startswith("--") and cmd.argv[i - 1].endswith("config")
        if names_config and PLACEHOLDER not in value and not (REPO / value).exists():
            problems.append(f"{cmd.argv[i - 1]} {value}: no such file")
        elif "/" in value and value.split("/")[0] in own_dirs and not (REPO / value).exists():
            problems.append(f"{value}: no such file in the repository")
    for key, value in cmd.env.items():
        if key.endswith("CONFIG") and not (REPO / value).exists():
            problems.append(f"{key}={value}: no such file")
    return problems


def _trainer_overrides(cmd: Command) -> list[str]:
    """`--config C ... -- --a.b v` (adakd-submit's form): C with those overrides must load and validate."""
    if "--config" not in cmd.argv or "--" not in cmd.argv:
        return []
    config = cmd.argv[cmd.argv.index("--config") + 1]
    return _check_run_config(config, cmd.argv[cmd.argv.index("--") + 1 :])


def check_command(cmd: Command) -> list[str]:
    """Problems with one command (empty when it would start)."""
    if cmd.error:
        return [cmd.error]
    kind = classify(cmd.argv[0])
    if kind is None:
        return [f"unknown program {cmd.argv[0]!r}: add it to a registry in tests/readme_commands.py"]
    problems = _check_paths(cmd)
    if problems or kind is Program.EXTERNAL:
        return problems
    if kind is Program.PYTHON:
        problems += _check_python(cmd.argv[1:])
    elif kind is Program.LAUNCHER:
        problems += _check_launcher(cmd.argv[0], cmd.argv[1:])
    elif kind is Program.CONSOLE:
        problems += _check_console(cmd.argv[0], cmd.argv[1:])
    elif kind is Program.SHELL:
        problems += _check_shell(cmd.argv)
    elif kind is Program.SBATCH:
        problems += _check_sbatch(cmd)
    return problems + _trainer_overrides(cmd)


def doc_files() -> list[Path]:
    """README.md and every docs/*.md: the files whose commands, links and paths are checked."""
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def check_markdown(text: str, name: str = "README.md") -> list[str]:
    """`NAME:LINE: command: problem` for every problem of every command in a markdown text."""
    out = []
    for cmd in extract_commands(text):
        shown = shlex.join(cmd.argv) if cmd.argv else cmd.text
        out += [f"{name}:{cmd.line}: {shown}: {p}" for p in check_command(cmd)]
    return out


def check_doc_file(path: Path) -> list[str]:
    """Commands, links and backticked paths of one markdown file."""
    text = path.read_text()
    return check_markdown(text, line_name(path)) + check_links(text, path) + check_prose_paths(text, path)
