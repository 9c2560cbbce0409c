"""The commands of a Markdown manual: its fenced code blocks, lines joined where they end in a backslash, and the
python commands in them (read by tests/test_readme.py, which checks them, and bench/readme_commands.py, which
runs them)."""
from __future__ import annotations

import re
import shlex

PYTHON = re.compile(r"(?:.*/)?python3?(?:\.\d+)?")
FENCE = re.compile(r"^\s*(```|~~~)")


def code_blocks(text: str) -> list[list[tuple[int, str]]]:
    """Each fenced code block as (line number, line) pairs, continuation lines joined onto the line they continue."""
    blocks: list[list[tuple[int, str]]] = []
    inside, pending = False, None
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            inside = not inside
            if inside:
                blocks.append([])
            continue
        if not inside:
            continue
        if pending:
            number, line = pending[0], pending[1] + " " + line.strip()
            pending = None
        if line.rstrip().endswith("\\"):
            pending = (number, line.rstrip()[:-1])
            continue
        blocks[-1].append((number, line))
    return blocks


def prose_and_code(text: str) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
    """(line number, line) of the text outside fenced code blocks, and of the text inside them."""
    prose, code, inside = [], [], False
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            inside = not inside
            continue
        (code if inside else prose).append((number, line))
    return prose, code


def commands(text: str, inline: bool = False) -> list[tuple[int, str]]:
    """(line number, command line) of every line of the code blocks, continuation lines joined; with `inline`
    also the code spans of the prose that start with a python command."""
    out = [pair for block in code_blocks(text) for pair in block]
    if inline:
        for number, line in prose_and_code(text)[0]:
            out += [(number, span) for span in re.findall(r"`([^`]+)`", line)
                    if re.match(r"(?:\S*/)?python3? ", span) and ": error:" not in span]  # not an error message
    return out


def tokens(line: str) -> list[str]:
    try:
        lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
        lexer.whitespace_split = True
        lexer.commenters = "#"
        return list(lexer)
    except ValueError:  # an unbalanced quote in a placeholder: words will do
        return line.split("#", 1)[0].split()


def invocations(line: str) -> list[tuple[str, list[str]]]:
    """(target, its arguments) of every python command in a shell line: target is a module (`-m X`, also under
    torchrun), `launch.py` or a script path; TRAIN_ARGS="..." counts as launch.py's arguments."""
    found = []
    words = tokens(line)
    for i, word in enumerate(words):
        if word.startswith("TRAIN_ARGS="):
            found.append(("launch.py", tokens(word.split("=", 1)[1])))
        if not (PYTHON.fullmatch(word) or word == "torchrun"):
            continue
        rest = words[i + 1:]
        end = next((j for j, w in enumerate(rest) if w in (";", "&&", "||", "|", "&")), len(rest))
        rest = rest[:end]
        if "-m" in rest and rest.index("-m") + 1 < len(rest):
            k = rest.index("-m")
            found.append((rest[k + 1], rest[k + 2:]))
        elif word != "torchrun" and rest and rest[0].endswith(".py"):
            found.append((rest[0], rest[1:]))
        elif word == "torchrun":
            script = next((w for w in rest if w.endswith(".py")), None)
            if script:
                found.append((script, rest[rest.index(script) + 1:]))
    return found
