"""Import boundaries the project keeps: nothing outside `tests/` imports `tests` (the benchmarks and training code
must run from an install without the suite), and the Hub's code files (what `training.export` copies) import only
each other, relatively, and public libraries (Hub custom code runs where only the Hub folder exists)."""

import ast
import os

import pytest

from training.export import CODE_FILES


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SKIPPED_FOLDERS = {"tests", ".git", ".ci", "build", "__pycache__", "node_modules"}
PROJECT_PACKAGES = {"tte", "training", "tte_eval", "tests", "benchmarks", "scripts", "space", "tte_cli"}


def python_files_outside_tests() -> list[str]:
    found = []
    for folder, subfolders, files in os.walk(ROOT):
        subfolders[:] = [name for name in subfolders if name not in SKIPPED_FOLDERS and not name.startswith(".")
                         and not name.endswith(".egg-info")]  # fmt: skip
        found += [os.path.relpath(os.path.join(folder, name), ROOT) for name in files if name.endswith(".py")]
    return sorted(found)


def imported_modules(path: str) -> list[tuple[str, int]]:
    """(module, level) of every import in the file: level 0 is absolute, 1 or more is relative."""
    with open(os.path.join(ROOT, path)) as handle:
        tree = ast.parse(handle.read())
    modules = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules += [(alias.name, 0) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            modules.append((node.module or "", node.level))
    return modules


def test_the_walk_sees_the_code_that_could_import_tests():
    files = python_files_outside_tests()
    assert {"modeling_tte.py", "training/tiny_models.py", "benchmarks/fsdp_check.py"} <= set(files)
    assert not [path for path in files if path.startswith("tests/")]


def test_nothing_outside_tests_imports_tests():
    offenders = {path: module for path in python_files_outside_tests() for module, level in imported_modules(path)
                 if level == 0 and module.split(".")[0] == "tests"}  # fmt: skip
    assert offenders == {}


def test_the_hub_files_checked_below_are_the_exported_code():
    assert {"modeling_tte.py", "processing_tte.py", "configuration_tte.py", "custom_st.py", "handler.py"} <= set(
        CODE_FILES)  # fmt: skip


@pytest.mark.parametrize("path", CODE_FILES)
def test_a_hub_file_imports_only_hub_files_relatively_and_public_libraries(path):
    absolute_project_imports = [module for module, level in imported_modules(path)
                                if level == 0 and module.split(".")[0] in PROJECT_PACKAGES]  # fmt: skip
    assert absolute_project_imports == []
    siblings = {name[: -len(".py")] for name in CODE_FILES}
    relative = [module for module, level in imported_modules(path) if level > 0]
    assert [module for module in relative if module.split(".")[0] not in siblings] == []
