"""The demo corpus: docstrings of Python's standard library (real text, no download).

Each public function, class and method of a fixed list of modules gives one row: its
qualified name as the title, its docstring as the body. Undocumented functions and classes are
kept with a NULL body, so the demo shows how rows without text are counted.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass

MODULES = (
    "abc",
    "argparse",
    "array",
    "ast",
    "asyncio",
    "base64",
    "bisect",
    "bz2",
    "calendar",
    "cmath",
    "codecs",
    "collections",
    "colorsys",
    "concurrent.futures",
    "configparser",
    "contextlib",
    "copy",
    "csv",
    "dataclasses",
    "datetime",
    "decimal",
    "difflib",
    "email",
    "enum",
    "filecmp",
    "fnmatch",
    "fractions",
    "functools",
    "getopt",
    "gettext",
    "glob",
    "gzip",
    "hashlib",
    "heapq",
    "hmac",
    "html",
    "http.client",
    "http.server",
    "imaplib",
    "inspect",
    "io",
    "ipaddress",
    "itertools",
    "json",
    "logging",
    "lzma",
    "mailbox",
    "math",
    "mimetypes",
    "operator",
    "os",
    "os.path",
    "pathlib",
    "pickle",
    "pkgutil",
    "platform",
    "plistlib",
    "poplib",
    "pprint",
    "queue",
    "random",
    "re",
    "sched",
    "secrets",
    "selectors",
    "shelve",
    "shlex",
    "shutil",
    "signal",
    "smtplib",
    "socket",
    "sqlite3",
    "ssl",
    "statistics",
    "string",
    "struct",
    "subprocess",
    "tarfile",
    "tempfile",
    "textwrap",
    "threading",
    "time",
    "timeit",
    "tokenize",
    "traceback",
    "types",
    "typing",
    "unittest",
    "urllib.parse",
    "urllib.request",
    "uuid",
    "warnings",
    "wave",
    "weakref",
    "xml.dom.minidom",
    "xml.etree.ElementTree",
    "zipfile",
    "zlib",
)


@dataclass(frozen=True)
class Document:
    title: str
    body: str | None


def _members(obj: object) -> list[tuple[str, object]]:
    try:
        return inspect.getmembers(obj)
    except Exception:  # some modules raise on attribute access; skip them
        return []


def stdlib_documents(limit: int | None = None) -> list[Document]:
    """Documents in a stable order (sorted by title), deduplicated by title."""
    docs: dict[str, str | None] = {}
    for module_name in MODULES:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        docs.setdefault(module_name, inspect.getdoc(module))
        for name, member in _members(module):
            if name.startswith("_"):
                continue
            if not (
                inspect.isfunction(member) or inspect.isclass(member) or inspect.isbuiltin(member)
            ):
                continue
            if getattr(member, "__module__", module_name) not in (module_name, None):
                continue  # re-exported from elsewhere: documented under its home module
            title = f"{module_name}.{name}"
            docs.setdefault(title, inspect.getdoc(member) if member.__doc__ else None)
            if inspect.isclass(member):
                for meth_name, meth in _members(member):
                    if meth_name.startswith("_") or not callable(meth):
                        continue
                    if meth_name not in member.__dict__ or not meth.__doc__:
                        continue  # inherited, or undocumented
                    docs.setdefault(f"{title}.{meth_name}", inspect.getdoc(meth))
    ordered = [Document(t, b) for t, b in sorted(docs.items())]
    return ordered[:limit] if limit else ordered
