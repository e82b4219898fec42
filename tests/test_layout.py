"""The layout the README maps: the scripts a user runs at the root, the machinery in semcse/, no import circle,
and every file and function short enough to read. `python tests/test_layout.py` prints the import graph."""
from __future__ import annotations

import ast
import glob
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = {"main.py", "settings.py", "load_data.py", "generate_train_summaries.py", "generate_search_queries.py",
           "train_embedding_model.py", "semantic_benchmark.py", "serve_llm.py"}
ROOT_MODULES_THE_PACKAGE_MAY_IMPORT = {"settings", "load_data"}
HARNESS = {"semcse.benchmark", "semcse.benchmark_results"}  # the benchmark's science imports none of them
MAX_FILE_LINES, MAX_FUNCTION_LINES = 400, 80


def project_files() -> dict[str, str]:
    """{module name: path} of the project's own Python files: the root, semcse/, bench/ and data/ (not tests)."""
    out = {}
    for folder in ("", "semcse", "bench", "data"):
        for path in sorted(glob.glob(os.path.join(ROOT, folder, "*.py"))):
            stem = os.path.splitext(os.path.basename(path))[0]
            name = stem if not folder else folder if stem == "__init__" else f"{folder}.{stem}"
            out[name] = path
    return out


def imports_of(name: str, path: str, modules: set[str]) -> set[str]:
    """The project modules `path` imports, anywhere in it (a lazy import inside a function counts too). A
    script in bench/ or data/ also finds its siblings (`import common`: Python puts a script's folder first)."""
    folder = name.rpartition(".")[0] if "." in name and name != "semcse" else ""

    def resolve(dotted: str) -> str | None:
        for candidate in ([f"{folder}.{dotted}"] if folder and folder != "semcse" else []) + [dotted]:
            if candidate in modules:
                return candidate
        return None

    found = set()
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read(), path)):
        if isinstance(node, ast.Import):
            found.update(resolve(a.name) for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            submodules = {resolve(f"{node.module}.{a.name}") for a in node.names} - {None}  # from semcse import model
            found.update(submodules or {resolve(node.module)})
    return {m for m in found if m and m != name}


def import_graph() -> dict[str, set[str]]:
    files = project_files()
    return {name: imports_of(name, path, set(files)) for name, path in files.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                return path[path.index(n):] + [n]
            if n not in state and (cycle := visit(n)):
                return cycle
        path.pop()
        state[m] = 2
        return None

    return next((c for m in sorted(graph) if m not in state and (c := visit(m))), None)


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for n in graph[todo.pop()] - seen:
            seen.add(n)
            todo.append(n)
    return seen


def test_the_root_holds_the_scripts_a_user_runs_and_nothing_else_that_is_python():
    assert {os.path.basename(p) for p in glob.glob(os.path.join(ROOT, "*.py"))} == SCRIPTS


def test_no_import_circle_anywhere():
    graph = import_graph()
    assert {"main", "semcse.model", "semcse.benchmark_tasks", "bench.reproduce", "data.build_llm_summaries"} \
        <= set(graph)
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_package_imports_no_script_and_the_science_nothing_of_its_harness():
    graph = import_graph()
    for name, deps in graph.items():
        if name.startswith("semcse"):
            scripts = {d for d in deps if "." not in d and d != "semcse"} - ROOT_MODULES_THE_PACKAGE_MAY_IMPORT
            assert not scripts, f"{name} imports the root script(s) {sorted(scripts)}"
    assert not reachable(graph, "semcse.benchmark_tasks") & HARNESS
    for low in ROOT_MODULES_THE_PACKAGE_MAY_IMPORT:  # settings and load_data: only what never imports them back
        assert low not in reachable(graph, low)
    assert graph["semcse"] == set()  # semcse/__init__.py: a docstring, no imports


def test_no_file_over_400_lines_and_no_function_over_80():
    too_long = []
    for path in project_files().values():
        text = open(path, encoding="utf-8").read()
        if len(text.splitlines()) > MAX_FILE_LINES:
            too_long.append(f"{os.path.relpath(path, ROOT)}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text, path)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    too_long.append(f"{os.path.relpath(path, ROOT)}:{node.lineno} {node.name}(): {lines} lines")
    assert not too_long, too_long


if __name__ == "__main__":
    graph = import_graph()
    for name in sorted(graph):
        print(f"{name:32} -> {', '.join(sorted(graph[name])) or '-'}")
    cycle = find_cycle(graph)
    print(f"\n{len(graph)} modules, {sum(map(len, graph.values()))} imports; "
          f"{'circle: ' + ' -> '.join(cycle) if cycle else 'no import circle'}")
    sys.exit(1 if cycle else 0)
