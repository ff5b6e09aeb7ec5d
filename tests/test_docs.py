"""The docs (README.md, projects/FIBER/README.md, docs/*.md, MODEL_ZOO.md and the configs' header comments) name only
repository paths and config keys that exist, every command's script accepts the flags the docs give it, the quick
commands run, and every `models/...` file a config expects is made by a command in docs/OFFICIAL_CHECKPOINTS.md.

A code block right after a `<!-- docs-test: run -->` line is run command by command (exit 0 expected), as is every
documented command that ends in `--help`.
"""
from __future__ import annotations

import ast
import itertools
import json
import os
import re
import shlex
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import pytest
from detectron2.config import CfgNode, get_cfg

from fiber_d2.config import add_fiber_config

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = [
    path
    for path in [ROOT / "README.md", ROOT / "projects/FIBER/README.md", *sorted((ROOT / "docs").glob("*.md"))]
    + [ROOT / "MODEL_ZOO.md"]
    if path.is_file()
]
CONFIG_FILES = sorted((ROOT / "configs").rglob("*.yaml")) + sorted((ROOT / "projects").rglob("*.yaml"))
RUN_MARK = "<!-- docs-test: run -->"
# First path components of the repository's own files; `models/`, `output/` and `datasets/` are the user's.
REPO_DIRS = ("configs", "docs", "fiber_d2", "projects", "tests", "tools")
# A repository path: starts at a word boundary (not inside a URL or another repository's path); "{a,b}" expands.
REPO_PATH = re.compile(r"(?<![\w/.:-])(?:%s)/(?:[\w.\-/*+]|\{[^}\s]*\})*" % "|".join(REPO_DIRS))
BARE_FILE = re.compile(r"^[\w.+-]+\.(?:py|yaml|md)$")
CONFIG_KEY = re.compile(
    r"(?<![\w.])(?:MODEL|INPUT|SOLVER|TEST|DATASETS|DATALOADER|COARSE_STAGE)(?:\.(?:[A-Z0-9_]+|\*|\{[A-Z0-9_,]+\}))+"
)
CODE_SPAN = re.compile(r"`([^`\n]+)`")
COMMAND_START = re.compile(r"^(?:\.venv/bin/)?python3? ")


def doc_id(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def expand_braces(text: str) -> list[str]:
    """"a{,+,g}b" -> ["ab", "a+b", "agb"]."""
    match = re.search(r"\{([^{}]*)\}", text)
    if not match:
        return [text]
    return [
        expanded
        for option in match.group(1).split(",")
        for expanded in expand_braces(text[: match.start()] + option + text[match.end() :])
    ]


def code_lines(text: str) -> list[tuple[str, bool]]:
    """(line, marked) for each line of code: fenced blocks and lines indented by 4+ spaces; `marked` when the block
    follows a RUN_MARK line."""
    lines, fenced, marked = [], False, False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            marked = marked and fenced
        elif fenced or line.startswith("    "):
            lines.append((line.strip(), marked))
        elif line.strip():
            marked = line.strip() == RUN_MARK
    return lines


def commands(text: str) -> list[tuple[str, bool]]:
    """(command, marked): code lines and code spans that start with `python`, continuation lines joined."""
    found, pending, pending_marked = [], "", False
    for line, marked in code_lines(text):
        if pending:
            line, marked = pending + " " + line, pending_marked
        elif not COMMAND_START.match(line):
            continue
        if line.endswith("\\"):
            pending, pending_marked = line[:-1].rstrip(), marked
            continue
        pending = ""
        found.append((line, marked))
    found += [(span, False) for span in CODE_SPAN.findall(text) if COMMAND_START.match(span)]
    return found


def split_command(command: str) -> list[str]:
    return shlex.split(command, comments=True)


def script_of(words: list[str]) -> str | None:
    """The repository script a `python SCRIPT ...` command runs (None for `python -c`)."""
    return words[1] if len(words) > 1 and words[1].endswith(".py") else None


def flags_of(words: list[str]) -> set[str]:
    """--long-flags of a command, placeholders' brackets and alternatives removed."""
    flags = set()
    for word in words[2:]:
        for part in re.split(r"[|=]", word.strip("[]()")):
            part = part.strip("[]()")
            if re.fullmatch(r"--[a-z][a-z0-9-]*", part):
                flags.add(part)
    return flags


def all_commands() -> list[tuple[str, str, bool]]:
    return [(doc_id(path), command, marked) for path in DOC_FILES for command, marked in commands(path.read_text())]


def help_argv(words: list[str]) -> tuple[str, ...]:
    """`SCRIPT [SUBCOMMAND] --help` for a documented `python SCRIPT ...` command (the subcommand if it names one)."""
    argv = [words[1]]
    if len(words) > 2 and re.fullmatch(r"[a-z][a-z0-9_-]*", words[2]) and not words[2].endswith(".py"):
        argv.append(words[2])
    return tuple(argv + ["--help"])


# Runs each argv of stdin's JSON list as `python ARGV...` would (a script through runpy as __main__, with its folder
# first on sys.path; `-c CODE`), all in one interpreter so that torch and Detectron2 are imported once; prints
# [exit code, stdout, stderr] per argv as JSON.
DRIVER = """
import contextlib, io, json, os, runpy, sys, traceback
results = []
for argv in json.load(sys.stdin):
    out, err, code = io.StringIO(), io.StringIO(), 0
    saved_argv, saved_path = sys.argv, list(sys.path)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            if argv[0] == "-c":
                sys.argv = ["-c", *argv[2:]]
                exec(compile(argv[1], "<string>", "exec"), {"__name__": "__main__"})
            else:
                sys.argv = list(argv)
                sys.path.insert(0, os.path.dirname(os.path.abspath(argv[0])))
                runpy.run_path(argv[0], run_name="__main__")
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else int(stop.code is not None)
        err.write("" if stop.code is None or isinstance(stop.code, int) else str(stop.code))
    except BaseException:
        code = 1
        err.write(traceback.format_exc())
    finally:
        sys.argv, sys.path[:] = saved_argv, saved_path
    results.append([code, out.getvalue(), err.getvalue()])
sys.__stdout__.write(json.dumps(results))
"""


@lru_cache(maxsize=None)
def command_results() -> dict[tuple[str, ...], tuple[int, str, str]]:
    """Every marked or `--help` command, and the `--help` of every script (and subcommand) the docs give flags to:
    argv (without `python`) -> (exit code, stdout, stderr)."""
    to_run = set()
    for _, command, marked in all_commands():
        words = split_command(command)
        if marked or words[-1] == "--help":
            to_run.add(tuple(words[1:]))
        if script_of(words) and flags_of(words):
            to_run.add(help_argv(words))
    argvs = sorted(to_run, key=lambda argv: argv[0] != "-c")  # `python -c "import fiber_d2"` first, on its own
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    done = subprocess.run(
        [sys.executable, "-c", DRIVER], input=json.dumps(argvs), cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return {argv: tuple(result) for argv, result in zip(argvs, json.loads(done.stdout))}


def repo_basenames() -> set[str]:
    names = {path.name for path in ROOT.iterdir() if path.is_file()}
    for directory in REPO_DIRS:
        names |= {path.name for path in (ROOT / directory).rglob("*") if path.is_file()}
    return names


def merged_config(path: Path) -> CfgNode:
    cfg = get_cfg()
    add_fiber_config(cfg)
    cfg.merge_from_file(str(path))
    return cfg


def header(path: Path) -> str:
    """The comment lines at the top of a config."""
    return "\n".join(itertools.takewhile(lambda line: line.startswith("#"), path.read_text().splitlines()))


DOCUMENTS = [(doc_id(path), path.read_text()) for path in DOC_FILES] + [
    (doc_id(path), header(path)) for path in CONFIG_FILES
]


def test_the_docs_are_found():
    names = [name for name, _ in DOCUMENTS]
    assert {"projects/FIBER/README.md", "docs/OFFICIAL_CHECKPOINTS.md", "docs/EXPERIMENTS.md"} <= set(names)
    assert "configs/fiber_b/coco_zeroshot.yaml" in names


@pytest.mark.parametrize("name,text", DOCUMENTS, ids=[name for name, _ in DOCUMENTS])
def test_every_repository_path_named_exists(name, text):
    missing = []
    for match in REPO_PATH.finditer(text):
        token = match.group(0).rstrip(".,:;")
        for path in expand_braces(token):
            if "*" in path:
                if not list(ROOT.glob(path)):
                    missing.append(path)
            elif not (ROOT / path).exists():
                missing.append(path)
    basenames = repo_basenames()
    for span in CODE_SPAN.findall(text):
        for word in re.split(r"[\s,()]+", span):
            word = word.rstrip(".:;")
            if BARE_FILE.match(word) and word not in basenames:
                missing.append(word)
    assert not missing, f"{name} names paths that do not exist: {sorted(set(missing))}"


def test_no_doc_cites_a_file_outside_the_repository():
    notes_name = "FIBER" + "_NOTES"
    tracked = subprocess.run(["git", "grep", "-l", notes_name], cwd=ROOT, capture_output=True, text=True).stdout.split()
    assert [path for path in tracked if path != "tests/test_docs.py"] == []


@pytest.mark.parametrize("name,text", DOCUMENTS, ids=[name for name, _ in DOCUMENTS])
def test_every_config_key_named_exists(name, text):
    cfg = get_cfg()
    add_fiber_config(cfg)
    unknown = []
    for match in CONFIG_KEY.finditer(text):
        for key in expand_braces(match.group(0)):
            node = cfg
            for part in key.split("."):
                if part == "*" and isinstance(node, CfgNode):
                    break
                if not isinstance(node, CfgNode) or part not in node:
                    unknown.append(key)
                    break
                node = node[part]
    assert not unknown, f"{name} names config keys that do not exist: {sorted(set(unknown))}"


def test_commands_are_found():
    found = all_commands()
    scripts = {script_of(split_command(command)) for _, command, _ in found}
    assert {"projects/FIBER/train_net.py", "tools/convert_fiber_checkpoint.py", "tools/infer.py"} <= scripts
    assert any(marked for _, _, marked in found)
    assert ("projects/FIBER/README.md", 'python -c "import fiber_d2"', True) in found


@pytest.mark.slow
def test_quick_commands_run_and_scripts_take_the_documented_flags():
    results = command_results()
    failures = []
    for name, command, marked in all_commands():
        words = split_command(command)
        if marked or words[-1] == "--help":
            code, _, stderr = results[tuple(words[1:])]
            if code != 0:
                failures.append(f"{name}: `{command}` exited {code}: {stderr.strip()[-300:]}")
        script = script_of(words)
        if script and flags_of(words):
            help_text = results[help_argv(words)][1]
            unknown = [
                flag
                for flag in sorted(flags_of(words))
                if not re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", help_text)
            ]
            if unknown:
                failures.append(f"{name}: `{command}`: {script} does not take {unknown}")
    assert not failures, "\n".join(failures)


def save_pretrained_targets(command: str) -> list[str]:
    """The directories a documented `python -c "...save_pretrained('DIR')"` command writes, after checking that the
    code compiles and that what it imports from transformers exists."""
    code = split_command(command)[2]
    tree = ast.parse(code)
    import transformers

    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "transformers":
            for alias in node.names:
                assert hasattr(transformers, alias.name), f"transformers has no {alias.name}: {command}"
    return [
        node.args[0].value
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "save_pretrained"
    ]


def test_every_models_file_a_config_expects_is_made_by_a_documented_command():
    made = set()
    for command, _ in commands((ROOT / "docs/OFFICIAL_CHECKPOINTS.md").read_text()):
        words = split_command(command)
        if script_of(words) == "tools/convert_fiber_checkpoint.py" and len(words) > 3:
            made.add(words[3])
        elif words[1] == "-c":
            made.update(save_pretrained_targets(command))
    expected = {}
    for path in CONFIG_FILES:
        cfg = merged_config(path)
        for key in ("MODEL.WEIGHTS", "MODEL.FIBER.TOKENIZER", "MODEL.FIBER.TEXT.WEIGHTS", "MODEL.FIBER.SWIN.WEIGHTS"):
            value = cfg
            for part in key.split("."):
                value = value[part]
            if value.startswith("models/"):
                expected.setdefault(value, []).append(f"{doc_id(path)} {key}")
    assert {"models/roberta-base", "models/fiber_coarse_then_fine.pth", "models/fiber_pretrain.pth"} <= set(expected)
    not_made = {value: where for value, where in expected.items() if value not in made}
    assert not not_made, f"no command in docs/OFFICIAL_CHECKPOINTS.md makes: {not_made}"
    named = {
        token.rstrip(".,:;")
        for name, text in DOCUMENTS
        for token in re.findall(r"(?<![\w/.-])models/[\w.+-]+", text)
    }
    assert named - made == set(), f"the docs name models/ files that no documented command makes: {named - made}"


def makefile_configs() -> dict[str, set[str]]:
    """make target -> the configs its recipe runs (variables expanded)."""
    text = (ROOT / "Makefile").read_text()
    variables = dict(re.findall(r"^(\w+)\s*:?=\s*(.*)$", text, flags=re.M))
    targets, current = {}, None
    for line in text.splitlines():
        target = re.match(r"^([\w-]+):", line)
        if target:
            current = target.group(1)
            targets[current] = set()
        elif line.startswith("\t") and current:
            expanded = re.sub(r"\$\((\w+)\)", lambda m: variables.get(m.group(1), ""), line)
            targets[current] |= set(re.findall(r"configs/[\w/.+-]+\.yaml", expanded))
    return targets


def test_config_headers_name_the_make_target_that_runs_them():
    """A config's first header line names the make target(s) that run it, and only those."""
    runs = makefile_configs()
    assert runs["demo-train"] == {"configs/fiber_shapes/fiber_tiny_demo.yaml"}
    assert "configs/fiber_shapes/zoo/grounding.yaml" in runs["zoo"]
    wrong = []
    for path in CONFIG_FILES:
        first_line = path.read_text().splitlines()[0]
        named = set(re.findall(r"`make ([\w-]+)`", first_line))
        running = {target for target, configs in runs.items() if doc_id(path) in configs}
        if named != running:
            wrong.append(f"{doc_id(path)}: header names {sorted(named)}, run by {sorted(running)}")
    assert not wrong, "\n".join(wrong)
