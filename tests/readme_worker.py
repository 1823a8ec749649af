"""A fresh Python that runs README blocks in one namespace, for tests/test_readme.py.

The blocks run here, not in pytest's process, so they see what a reader's interpreter sees:
only the modules the blocks import themselves (pytest's process has imported most of sdegen by
the time they run, so `sdegen.training` would resolve there even when `import sdegen` does not
provide it), torch's default dtype and thread settings, no conftest.

Protocol: one JSON line per block on stdin, {"code": ..., "line": first README line, "path":
README path}; one JSON line back on the original stdout, {"ok": true} or {"ok": false, "error":
traceback from the README's frame on}. The blocks' own output goes to stderr.
"""

from __future__ import annotations

import ast
import json
import os
import sys
import traceback


def _readme_traceback(e: BaseException, path: str) -> str:
    te = traceback.TracebackException.from_exception(e)
    frames = list(te.stack)
    first = next((i for i, f in enumerate(frames) if f.filename == path), 0)
    te.stack = traceback.StackSummary.from_list(frames[first:])
    return "".join(te.format())


def main() -> None:
    requests, reply = os.fdopen(os.dup(0)), os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # print() and C-level output of the blocks: to stderr
    sys.stdout = sys.stderr
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)  # a block reading stdin reads nothing, not the next request
    sys.stdin = open(os.devnull)
    namespace: dict = {"__name__": "__main__"}
    for request in requests:
        block = json.loads(request)
        path, line = block["path"], block["line"]
        try:
            # compiled with the README's line numbers: tracebacks show the README's own lines
            tree = ast.parse(block["code"], filename=path)
            code = compile(ast.increment_lineno(tree, line - 1), path, "exec")
            exec(code, namespace)
            answer = {"ok": True}
        except SyntaxError as e:
            where = line + (e.lineno or 1) - 1
            text = (e.text or "").rstrip() or block["code"].splitlines()[(e.lineno or 1) - 1]
            error = f'  File "{path}", line {where}\n    {text.strip()}\nSyntaxError: {e.msg}\n'
            answer = {"ok": False, "error": error}
        except BaseException as e:  # SystemExit too: the block must not end the session
            answer = {"ok": False, "error": _readme_traceback(e, path)}
        sys.stderr.flush()
        reply.write(json.dumps(answer) + "\n")
        reply.flush()


if __name__ == "__main__":
    main()
