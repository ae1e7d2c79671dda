"""Python in the rescue tree: the interpreter, the standard library trimmed to the import closure of the agent
(``recovery_env``) and of the SIF renderer's packages (jinja2, markupsafe), all compiled by the host's Python 3.11
(whose bytecode magic must match the guest's) to sourceless, hash-based ``.pyc`` (reproducible)."""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import io
import json
import logging
import re
import sys
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection

from builder.media.packages import (
    DebMember,
    MemberKind,
    code_digest,
    compile_pyc_cached,
    read_control,
    write_atomic,
)
from builder.media.tree import (
    Group,
    MissingFileError,
    PackageFiles,
    TreeBuilder,
)
from recovery_env.errors import InputError, InternalError
from recovery_env.run import run

log = logging.getLogger("asr.rootfs")

IMPORT_SCAN_CACHE = "imports.json"  # in the package cache: what each stdlib module imports, by source digest


REPO_ROOT = Path(__file__).resolve().parents[2]


AGENT_SOURCE = REPO_ROOT / "recovery_env"


AGENT_PACKAGE = "recovery_env"


AGENT_DIR = "usr/lib/asr"  # PYTHONPATH in the guest


PYTHON = "usr/bin/python3.11"


PYTHON_LIB = "usr/lib/python3.11"


PYTHON_PACKAGES = ("python3.11-minimal", "libpython3.11-minimal", "libpython3.11-stdlib")


EXT_SUFFIX = ".cpython-311-x86_64-linux-gnu.so"


class PythonMismatchError(InputError):
    """The host's Python cannot compile bytecode for the guest's Python."""


#: Python modules the agent needs besides what ``recovery_env`` imports (found by reading its sources);
#: their import closure is added.  Extend freely: a name that does not exist in the guest stdlib is an error.
PYTHON_MODULES: tuple[str, ...] = (
    # interpreter start-up and ``-m``
    "site", "runpy", "encodings", "encodings.aliases", "encodings.utf_8", "encodings.ascii",
    "encodings.latin_1", "encodings.cp437", "encodings.idna",
    "encodings.utf_16_le",  # looked up by name (sif.py: GPT partition name length), invisible to import scanning
    "encodings.unicode_escape",  # looked up by name by jinja2's lexer (the offline capture renders ASR.SIF)
    # the agent's toolbox
    "os", "sys", "select", "termios", "tty", "fcntl", "struct", "json", "hashlib", "subprocess", "shlex",
    "dataclasses", "enum", "typing", "pathlib", "re", "time", "datetime", "logging", "textwrap", "io",
    "tarfile", "configparser", "errno", "signal", "stat", "shutil", "tempfile", "base64", "binascii", "zlib",
    "functools", "collections", "contextlib", "itertools", "argparse", "traceback", "glob", "fnmatch",
    "string", "copy", "locale", "uuid", "zipfile", "gzip", "lzma", "bz2", "platform",
)


#: Pure-Python packages copied from the host's environment (site-packages) into AGENT_DIR as .pyc: the offline
#: capture renders ASR.SIF/ASRPNP.SIF in the guest with the same jinja2 templates as `asr backup`.  Only ``.py``
#: files are shipped (markupsafe falls back to its pure-Python ``_native`` without the C speedups).
HOST_PYTHON_PACKAGES: tuple[str, ...] = ("jinja2", "markupsafe")


#: Templates shipped into AGENT_DIR/templates (recovery_env.templating looks beside its package directory).
SHIPPED_TEMPLATES: tuple[str, ...] = ("asr.sif.j2", "asrpnp.sif.j2", "rehearsal-check.sh.j2",
                                      "rehearsal-check.service.j2", "rehearsal-check.conf.j2")


#: Never shipped, even when something imports it lazily (GUI, tests, dev tools, TLS without libssl, ...).
PYTHON_EXCLUDED: tuple[str, ...] = (
    # GUI, tests, development and packaging tools
    "tkinter", "_tkinter", "turtle", "turtledemo", "idlelib", "test", "unittest", "doctest", "lib2to3",
    "distutils", "ensurepip", "venv", "pydoc", "pydoc_data", "pdb", "bdb", "cmd", "code", "codeop", "cProfile",
    "profile", "pstats", "trace", "timeit", "_pyio", "pickletools", "tabnanny", "py_compile", "compileall",
    "_ctypes_test", "_testcapi", "_testinternalcapi", "_testbuffer", "_testclinic", "_testimportmultiple",
    "_testmultiphase", "_xxtestfuzz", "xxlimited", "xxlimited_35", "_xxsubinterpreters",
    # need libraries the rescue system does not ship (libssl, libffi, libsqlite3, ncurses, readline, ...)
    "ssl", "_ssl", "_hashlib", "ctypes", "_ctypes", "sqlite3", "_sqlite3", "curses", "_curses",
    "_curses_panel", "dbm", "_dbm", "readline", "nis", "_crypt", "crypt", "_uuid",
    # network, mail, web, XML, async: not part of a restore from local media
    "http", "urllib.request", "urllib.response", "urllib.error", "urllib.robotparser", "xmlrpc",
    "email", "mailbox", "smtplib", "ftplib", "imaplib", "poplib", "nntplib",
    "webbrowser", "wsgiref", "socketserver", "asyncio", "_asyncio", "asynchat", "asyncore", "multiprocessing",
    "_multiprocessing", "_posixshmem", "concurrent", "xml", "pyexpat", "plistlib", "mimetypes",
    # multimedia, big optional codecs, time zones, decimal arithmetic
    "audioop", "ossaudiodev", "_codecs_cn", "_codecs_hk", "_codecs_iso2022", "_codecs_jp", "_codecs_kr",
    "_codecs_tw", "_multibytecodec", "zoneinfo", "_zoneinfo", "decimal", "_decimal", "_pydecimal", "fractions",
    "statistics", "importlib.metadata",
    # platform fallbacks that never run on Linux
    "_aix_support", "_osx_support", "_bootsubprocess", "nturl2path", "ntpath", "_winapi", "winreg", "msvcrt",
)


#: Modules that are compiled into the interpreter without a PyInit_ export of their own.
PYTHON_CORE_BUILTINS: tuple[str, ...] = (
    "sys", "builtins", "marshal", "_warnings", "_imp", "_io", "_frozen_importlib", "_frozen_importlib_external",
    "_thread", "_weakref", "posix",
)


@dataclass(frozen=True)
class PythonStdlib:
    sources: Mapping[str, tuple[str, bytes]]  # module → (path in tree, source bytes)
    extensions: Mapping[str, tuple[str, DebMember]]  # module → (path in tree, member)
    builtins: frozenset[str]


def read_python_stdlib(files: PackageFiles) -> PythonStdlib:
    sources: dict[str, tuple[str, bytes]] = {}
    extensions: dict[str, tuple[str, DebMember]] = {}
    root = PYTHON_LIB + "/"
    for package in PYTHON_PACKAGES[1:]:
        for path, member in files.members(package).items():
            if not path.startswith(root) or member.kind is not MemberKind.FILE:
                continue
            rel = path[len(root) :]
            if rel.startswith(("site-packages/", "dist-packages/")):
                continue
            if rel.startswith("lib-dynload/") and rel.endswith(EXT_SUFFIX):
                extensions[rel[len("lib-dynload/") : -len(EXT_SUFFIX)]] = (path, member)
            elif rel.endswith(".py"):
                dotted = rel[:-3].replace("/", ".").removesuffix(".__init__")
                sources[dotted] = (path, member.data)
    interp = files.find(PYTHON_PACKAGES[0], PYTHON)
    elf = ELFFile(io.BytesIO(interp.data))
    dynsym = elf.get_section_by_name(".dynsym")
    if not isinstance(dynsym, SymbolTableSection):
        raise MissingFileError(f"{PYTHON} of {PYTHON_PACKAGES[0]} has no dynamic symbol table")
    exported = {s.name[len("PyInit_") :] for s in dynsym.iter_symbols() if s.name.startswith("PyInit_")}
    return PythonStdlib(sources, extensions, frozenset(exported) | frozenset(PYTHON_CORE_BUILTINS))


def find_imports(source: bytes, module: str, is_package: bool, where: str) -> tuple[set[str], set[str]]:
    """What the import statements of ``source`` load, at any depth (lazy imports included).

    Returns (certain, possible): ``import a.b`` and ``from a.b import c`` certainly load ``a`` and ``a.b``;
    ``c`` is possibly the submodule ``a.b.c`` (or just a name defined in ``a.b``).
    """
    try:
        tree = ast.parse(source, filename=where)
    except SyntaxError as exc:
        raise InternalError(f"{where}: cannot parse: {exc}") from None
    package = module if is_package else module.rpartition(".")[0]
    certain: set[str] = set()
    possible: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            certain.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                origin = f"{base}.{node.module}" if node.module else base
            else:
                origin = node.module or ""
            certain.add(origin)
            possible.update(f"{origin}.{alias.name}" for alias in node.names if alias.name != "*")
    return _with_parents(certain), possible


def find_toplevel_imports(source: bytes, module: str, is_package: bool, where: str) -> set[str]:
    """Modules imported unconditionally when ``source`` is imported: statements directly in the module body
    (not in functions, ``try`` or ``if``)."""
    body = ast.parse(source, filename=where).body
    top = ast.Module(body=[n for n in body if isinstance(n, ast.Import | ast.ImportFrom)], type_ignores=[])
    certain, _ = find_imports(ast.unparse(top).encode(), module, is_package, where)
    return certain


#: What the import statements of one module load: (certain, possible, top-level) as find_imports and
#: find_toplevel_imports say.
ImportFacts = tuple[frozenset[str], frozenset[str], frozenset[str]]


ImportScanner = Callable[[bytes, str, bool, str], ImportFacts]


def scan_imports(source: bytes, module: str, is_package: bool, where: str) -> ImportFacts:
    certain, possible = find_imports(source, module, is_package, where)
    return frozenset(certain), frozenset(possible), frozenset(find_toplevel_imports(source, module, is_package, where))


class ImportScanCache:
    """scan_imports with its results kept in one JSON file of the package cache, by the digest of each source:
    parsing ~480 stdlib modules with ast costs ~2 s of every cold build.  The file names the code of the
    scanners it was made with; a different scanner (an edit of this module) starts it afresh."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.version = hashlib.sha256(b"".join(code_digest(f) for f in (
            scan_imports, find_imports, find_toplevel_imports, _with_parents))).hexdigest()  # fmt: skip
        self.entries: dict[str, list[list[str]]] = {}
        self.changed = False
        if path is not None:
            try:
                data = json.loads(path.read_text())
                if data.get("version") == self.version and isinstance(data.get("entries"), dict):
                    self.entries = data["entries"]
            except (OSError, ValueError):
                pass

    def scan(self, source: bytes, module: str, is_package: bool, where: str) -> ImportFacts:
        key = f"{hashlib.sha256(source).hexdigest()}:{module}:{int(is_package)}"
        hit = self.entries.get(key)
        if isinstance(hit, list) and len(hit) == 3:
            return frozenset(hit[0]), frozenset(hit[1]), frozenset(hit[2])
        facts = scan_imports(source, module, is_package, where)
        self.entries[key] = [sorted(part) for part in facts]
        self.changed = True
        return facts

    def save(self) -> None:
        if self.path is None or not self.changed:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            data = {"version": self.version, "entries": self.entries}
            write_atomic(self.path, json.dumps(data, sort_keys=True).encode())
        except OSError as exc:
            log.debug("no import-scan cache in %s: %s", self.path, exc)


def _with_parents(names: Iterable[str]) -> set[str]:
    expanded: set[str] = set()
    for name in names:
        parts = name.split(".")
        expanded.update(".".join(parts[: i + 1]) for i in range(len(parts)))
    return expanded


def _excluded(name: str) -> bool:
    return any(name == x or name.startswith(x + ".") for x in PYTHON_EXCLUDED)


def plan_python_modules(stdlib: PythonStdlib, roots: Iterable[str], agent_imports: Iterable[str],
                        scan: ImportScanner = scan_imports) -> list[str]:  # fmt: skip
    """The stdlib modules to ship: the import closure of ``roots`` and the agent's imports, minus exclusions.
    ``scan`` tells what a module imports (scan_imports, or ImportScanCache.scan: the same answers, cached).

    A root (or an agent import) that is neither in the stdlib, an extension nor built in → MissingFileError.
    Names reached only through other modules' imports may be absent (platform-specific fallbacks).
    """
    required = list(dict.fromkeys([*roots, *agent_imports]))
    for name in required:
        if _excluded(name):
            raise InternalError(f"python module {name} is both required and excluded")
        if name not in stdlib.sources and name not in stdlib.extensions and name not in stdlib.builtins:
            raise MissingFileError(f"python module {name!r} is not in the guest's Python 3.11 stdlib")
    shipped: set[str] = set()
    todo = list(required)
    excluded_needs: list[str] = []
    while todo:
        name = todo.pop()
        if name in shipped or _excluded(name):
            continue
        if name in stdlib.sources:
            shipped.add(name)
            path, source = stdlib.sources[name]
            is_package = path.endswith("/__init__.py")
            certain, possible, toplevel = scan(source, name, is_package, path)
            todo.extend(certain | possible)
            excluded_needs.extend(f"{name} imports {n}" for n in toplevel if _excluded(n))
        elif name in stdlib.extensions:
            shipped.add(name)
    if excluded_needs:
        raise InternalError(
            "PYTHON_EXCLUDED removes modules that shipped modules import unconditionally: "
            + "; ".join(sorted(excluded_needs))
        )
    return sorted(shipped)


def local_packages() -> frozenset[str]:
    """Top-level packages shipped as Python code of their own (not from the guest's stdlib)."""
    return frozenset({AGENT_PACKAGE, *HOST_PYTHON_PACKAGES})


def find_agent_imports(sources: Mapping[str, bytes]) -> list[str]:
    """Stdlib modules the agent imports (the shipped packages excluded); ``sources``: module → source bytes."""
    local = local_packages()
    found: set[str] = set()
    for module, source in sources.items():
        certain, _ = find_imports(source, module, is_agent_package(module), f"{module}.py")
        for name in certain:
            if name.split(".")[0] not in local and name != "__future__":
                found.add(name)
    found.add("__future__")
    return sorted(found)


def find_library_imports(sources: Mapping[str, tuple[str, bytes]], stdlib: PythonStdlib) -> list[str]:
    """Stdlib modules the shipped host packages need.  ``sources``: module → (path, source).

    Their imports at the top of a module must exist in the guest's stdlib and not be excluded (MissingFileError,
    InternalError); imports inside functions or ``try`` (asyncio for async templates, the C speedups, ...) are
    shipped when the stdlib has them and they are not excluded, and left out otherwise."""
    local = local_packages()
    known = set(stdlib.sources) | set(stdlib.extensions) | set(stdlib.builtins)
    found: set[str] = set()
    for module, (path, source) in sources.items():
        is_package = path.endswith("/__init__.py")
        certain, _ = find_imports(source, module, is_package, path)
        for name in find_toplevel_imports(source, module, is_package, path):
            if name.split(".")[0] in local or name == "__future__":
                continue
            if _excluded(name):
                raise InternalError(f"{path} imports {name}, which PYTHON_EXCLUDED removes from the rescue system")
            if name not in known:
                raise MissingFileError(f"{path} imports {name}, which is not in the guest's Python 3.11 stdlib")
        found.update(n for n in certain if n.split(".")[0] not in local and n in known and not _excluded(n))
    return sorted(found)


def read_host_sources() -> dict[str, tuple[str, bytes]]:
    """The host packages (jinja2 and markupsafe for the SIF renderer): module → (path in the tree, source)."""
    out: dict[str, tuple[str, bytes]] = {}
    for package in HOST_PYTHON_PACKAGES:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise MissingFileError(f"python package {package} is not installed in the build's environment")
        base = Path(next(iter(spec.submodule_search_locations)))
        for f in sorted(base.rglob("*.py")):
            rel = f.relative_to(base.parent).as_posix()
            out[rel[:-3].replace("/", ".").removesuffix(".__init__")] = (f"{AGENT_DIR}/{rel}", f.read_bytes())
    return out


def add_templates(tree: TreeBuilder) -> None:
    for name in SHIPPED_TEMPLATES:
        tree.add_file(f"{AGENT_DIR}/templates/{name}", (REPO_ROOT / "templates" / name).read_bytes(), 0o644,
                      Group.AGENT)


def read_agent_sources(agent_main: bytes | None = None) -> dict[str, bytes]:
    """recovery_env's modules, subpackages included (module name → source); ``agent_main`` replaces
    ``recovery_env.__main__``."""
    sources = {}
    for path in sorted(AGENT_SOURCE.rglob("*.py")):
        parts = (AGENT_PACKAGE, *path.relative_to(AGENT_SOURCE).with_suffix("").parts)
        sources[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path.read_bytes()
    if agent_main is not None:
        sources[f"{AGENT_PACKAGE}.__main__"] = agent_main
    return sources


def is_agent_package(module: str) -> bool:
    """Whether a module of recovery_env is a package (a directory with ``__init__.py``)."""
    rel = module.split(".")[1:]
    return (AGENT_SOURCE.joinpath(*rel) / "__init__.py").is_file()


def check_python_compatible(files: PackageFiles) -> str:
    """The guest's Python version; PythonMismatchError unless the host's compiles bytecode for it.

    Bytecode magic numbers only change between feature releases (and their pre-releases), so a final host
    release with the guest's major.minor writes .pyc files the guest loads.
    """
    version = read_control(files.pkgs.deb(PYTHON_PACKAGES[0]))["Version"]
    match = re.match(r"(\d+)\.(\d+)\.", version)
    if match is None:
        raise PythonMismatchError(f"cannot read the guest Python version from {version!r}")
    guest = (int(match[1]), int(match[2]))
    if sys.version_info[:2] != guest or sys.version_info.releaselevel != "final":
        raise PythonMismatchError(
            f"the host's Python {sys.version.split()[0]} cannot compile bytecode for the guest's Python {version}"
            f" (magic {importlib.util.MAGIC_NUMBER.hex()}); run the build with Python {guest[0]}.{guest[1]}"
        )
    return version


def compile_pyc(sources: Mapping[str, bytes]) -> dict[str, bytes]:
    """Compile ``{path in tree ending in .py: source}`` to ``{path ending in .pyc: bytecode}``.

    Runs ``compileall`` in a child Python with PYTHONHASHSEED=0 so that the bytecode is reproducible (set
    and frozenset constants are ordered by hash); hash-based unchecked .pyc files carry no timestamps.

    The standard library and the SIF renderer (jinja2, markupsafe) are compiled as ``python -OO`` would: no
    docstrings, no asserts (nothing shipped reads ``__doc__`` or relies on an assert): 15 % fewer .pyc bytes.
    The agent's package keeps both: a dataclass without a docstring gets one made with inspect.signature when it
    is created, which costs the agent's ~70 frozen dataclasses 45 % more import time (valgrind instruction counts),
    and those imports run while the F2 prompt waits.  (A sourceless .pyc loads whatever the interpreter's -O.)
    """
    agent_dir = f"{AGENT_DIR}/{AGENT_PACKAGE}/"
    levels: dict[int, dict[str, bytes]] = {}
    for path, source in sources.items():
        levels.setdefault(0 if path.startswith(agent_dir) else 2, {})[path] = source
    out = {}
    for level, chosen in sorted(levels.items()):
        with tempfile.TemporaryDirectory(prefix="asr-pyc-") as tmp:
            root = Path(tmp)
            for path, source in chosen.items():
                dest = root / path
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(source)
            run(
                [
                    sys.executable, "-m", "compileall", "-q", "-b", "-j", "1", "-s", str(root), "-p", "/",
                    "-o", str(level), "--invalidation-mode", "unchecked-hash", str(root),
                ],
                env={"PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1", "SOURCE_DATE_EPOCH": "0"},
            )
            for path in chosen:
                pyc = root / (path + "c")
                if not pyc.is_file():
                    raise InternalError(f"compileall wrote no {path}c")
                out[path + "c"] = pyc.read_bytes()
    return out


def add_python(tree: TreeBuilder, files: PackageFiles, agent_main: bytes | None) -> list[str]:
    """The interpreter, the stdlib closure as .pyc, its extensions, the agent as .pyc, and the SIF renderer
    (jinja2, markupsafe, recovery_env.model.sif_render and its templates) for the offline capture."""
    check_python_compatible(files)
    files.copy(tree, PYTHON_PACKAGES[0], PYTHON, Group.PYTHON)
    stdlib = read_python_stdlib(files)
    agent_sources = read_agent_sources(agent_main)
    host_sources = read_host_sources()
    needed = [*find_agent_imports(agent_sources), *find_library_imports(host_sources, stdlib)]
    scans = ImportScanCache(files.pkgs.cache / IMPORT_SCAN_CACHE)
    shipped = plan_python_modules(stdlib, PYTHON_MODULES, list(dict.fromkeys(needed)), scans.scan)
    scans.save()
    to_compile: dict[str, bytes] = {}
    groups: dict[str, Group] = {}
    for name in shipped:
        if name in stdlib.sources:
            path, source = stdlib.sources[name]
            to_compile[path] = source
            groups[path + "c"] = Group.PYTHON
        else:
            path, member = stdlib.extensions[name]
            tree.add_file(path, member.data, 0o644, Group.PYTHON)
    for module, source in agent_sources.items():
        rel = module.replace(".", "/") + ("/__init__.py" if is_agent_package(module) else ".py")
        path = f"{AGENT_DIR}/{rel}"
        to_compile[path] = source
        groups[path + "c"] = Group.AGENT
    for path, source in host_sources.values():
        to_compile[path] = source
        groups[path + "c"] = Group.AGENT
    add_templates(tree)
    for path, pyc in sorted(compile_pyc_cached(to_compile, files.pkgs.cache, compile_pyc).items()):
        tree.add_file(path, pyc, 0o644, groups[path])
    tree.add_dir(f"{PYTHON_LIB}/lib-dynload", group=Group.PYTHON)
    return shipped
