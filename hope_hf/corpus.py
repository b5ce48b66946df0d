"""Offline text corpora from Python's own pure-Python standard library: its docstrings (English/technical prose,
`stdlib_docs_text`) and its code with docstrings and comments stripped (a second domain, `stdlib_code_text`).

Package-only module (not copied to the Hub). They need no download, so the demo, the tests and the benchmarks can
train a tokenizer and a model on real text anywhere Python runs.
"""

from __future__ import annotations

import ast
import contextlib
import importlib
import importlib.util
import inspect
import io
import json
import subprocess
import sys
import warnings

# Modules that are skipped even though they are pure Python: GUI toolkits, test suites, and modules whose import
# has side effects (prints, opens a browser, installs a readline completer) or rewires the import system.
_SKIP_PREFIXES = ("test", "idlelib", "tkinter", "turtle", "turtledemo")
_SKIP_MODULES = frozenset({"this", "antigravity", "rlcompleter", "distutils", "ensurepip", "pydoc_data"})


def _is_candidate(name: str) -> bool:
    if name.startswith("_") or name in _SKIP_MODULES:
        return False
    return not any(name == p or name.startswith(p + ".") for p in _SKIP_PREFIXES)


def _is_pure_python(name: str) -> bool:
    """True for modules implemented in Python source (including frozen ones), without importing them."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return False
    if spec is None or spec.origin is None:
        return False
    return spec.origin.endswith(".py") or spec.origin == "frozen"


def _safe_import(name: str):
    """Import a module quietly; None if it fails for any reason."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            return importlib.import_module(name)
        except (Exception, SystemExit):  # noqa: BLE001 - a module that cannot load here is skipped
            return None


def _owned_by(obj, module_name: str) -> bool:
    owner = getattr(obj, "__module__", None)
    return isinstance(owner, str) and (owner == module_name or owner.startswith(module_name + "."))


def module_docs(module) -> list[str]:
    """Docstrings of a module, then of its public classes (and their methods) and functions, by sorted name.

    Only members defined in the module (or its submodules) are read; missing docstrings are left out.
    """
    name = module.__name__
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. typing.io / typing.re warn when touched
        docs = [inspect.getdoc(module)]
        for attr in sorted(vars(module)):
            if attr.startswith("_"):
                continue
            obj = vars(module)[attr]
            if not (inspect.isclass(obj) or inspect.isfunction(obj)) or not _owned_by(obj, name):
                continue
            docs.append(inspect.getdoc(obj))
            if inspect.isclass(obj):
                for meth_name in sorted(vars(obj)):
                    meth = vars(obj)[meth_name]
                    if meth_name.startswith("_") or not inspect.isfunction(meth) or not _owned_by(meth, name):
                        continue
                    docs.append(inspect.getdoc(meth))
    return [d for d in docs if d]


def stdlib_module_names() -> list[str]:
    """Sorted names of the top-level pure-Python standard-library modules that `stdlib_docs_text` reads."""
    return [n for n in sorted(sys.stdlib_module_names) if _is_candidate(n) and _is_pure_python(n)]


def _collect_all() -> list[str]:
    """All distinct docstrings, in visiting order (runs in whatever interpreter calls it)."""
    seen: set[str] = set()
    out: list[str] = []
    for name in stdlib_module_names():
        module = _safe_import(name)
        if module is None:
            continue
        for doc in module_docs(module):
            doc = doc.strip()
            if doc and doc not in seen:
                seen.add(doc)
                out.append(doc)
    return out


def stdlib_docs_text(max_chars: int | None = None) -> list[str]:
    """Collect the docstrings of the pure-Python standard library as a list of documents.

    The modules are imported in a fresh, isolated interpreter (`python -I -S`, so no site-packages), which keeps
    the result independent of what the caller has imported or monkey-patched, and keeps the caller's process free
    of ~170 extra imports. Deterministic for a given Python installation: modules are visited in sorted order,
    members in sorted order, and each distinct docstring (after `inspect.getdoc` clean-up) appears once, at its
    first occurrence. Modules that fail to import are skipped. With `max_chars`, documents are returned until their
    total length reaches `max_chars` (the last one is truncated to fit).
    """
    proc = subprocess.run([sys.executable, "-I", "-S", __file__], check=False, capture_output=True, timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(f"collecting stdlib docstrings failed:\n{proc.stderr.decode(errors='replace')}")
    docs = json.loads(proc.stdout)
    if max_chars is None:
        return docs
    out: list[str] = []
    total = 0
    for doc in docs:
        if total + len(doc) >= max_chars:
            if max_chars > total:
                out.append(doc[: max_chars - total])
            break
        out.append(doc)
        total += len(doc)
    return out


def _strip_docstrings(tree: ast.AST) -> ast.AST:
    """Drop the docstring of the module and of every class and function (an empty body gets `pass`)."""
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
    return tree


def stdlib_code_text(max_chars: int | None = None) -> list[str]:
    """The source code of the same standard-library modules as `stdlib_docs_text`, one document per top-level
    function or class (module-level statements between them are grouped into one document), with docstrings and
    comments removed (`ast.unparse`), so it shares no text with the docstring corpus: a second domain (code).

    Reads the `.py` files without importing anything; frozen modules without a source file are skipped. Deterministic
    for a given Python installation (modules in sorted order, statements in file order). `max_chars` as in
    `stdlib_docs_text`."""
    out: list[str] = []
    total = 0
    for name in stdlib_module_names():
        spec = importlib.util.find_spec(name)
        if spec is None or not (spec.origin or "").endswith(".py"):
            continue
        try:
            with open(spec.origin, encoding="utf-8") as f:
                tree = _strip_docstrings(ast.parse(f.read()))
        except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
            continue
        loose: list[ast.stmt] = []
        for node in tree.body + [None]:
            is_def = isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
            if (is_def or node is None) and loose:
                docs = [ast.unparse(ast.Module(body=loose, type_ignores=[]))]
                loose = []
            else:
                docs = []
            if is_def:
                docs.append(ast.unparse(node))
            elif node is not None:
                loose.append(node)
            for doc in docs:
                if max_chars is not None and total + len(doc) >= max_chars:
                    if max_chars > total:
                        out.append(doc[: max_chars - total])
                    return out
                out.append(doc)
                total += len(doc)
    return out


__all__ = ["module_docs", "stdlib_code_text", "stdlib_docs_text", "stdlib_module_names"]


if __name__ == "__main__":  # the isolated worker used by stdlib_docs_text
    sys.stdout.write(json.dumps(_collect_all()))
