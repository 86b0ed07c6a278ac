"""The layout's promises: imports point one way, every process starts the same way, and every driver and task
declares its settings in one typed dataclass."""
import ast
import dataclasses
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# A package may import those to its left, never those to its right.
LAYERS = ("drivers", "robotd", "learner", "actor", "tools")
PROCESSES = ("robotd.daemon", "actor", "learner")


def imported_modules(path: Path) -> list[str]:
    """Every absolute import in a file, those inside functions included."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append(node.module)
    return found


def test_imports_point_one_way_between_the_packages():
    wrong = []
    for rank, package in enumerate(LAYERS):
        for path in sorted((ROOT / package).rglob("*.py")):
            for module in imported_modules(path):
                top = module.split(".")[0]
                if top in LAYERS and LAYERS.index(top) > rank:
                    wrong.append(f"{path.relative_to(ROOT)} imports {module}")
    assert wrong == []


@pytest.mark.parametrize("package", PROCESSES)
def test_every_process_starts_python_m_package_then_main_then_run_in_its_process_file(package):
    main_file = ROOT / package.replace(".", "/") / "__main__.py"
    assert f"from {package}.process import main" in main_file.read_text(encoding="utf-8")
    process = importlib.import_module(f"{package}.process")
    assert callable(process.build_parser) and callable(process.main) and callable(process.run)
    assert process.build_parser().prog == f"robotd {package.split('.')[-1]}"


def test_reading_a_process_command_line_imports_neither_torch_nor_ray():
    code = ("import sys\n"
            "for package in ('robotd.daemon', 'actor', 'learner'):\n"
            "    __import__(package + '.process', fromlist=['build_parser']).build_parser().format_help()\n"
            "print(sorted(m for m in ('torch', 'ray', 'mujoco') if m in sys.modules))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def registered():
    import drivers  # noqa: F401  (registers every driver)
    from drivers import registry
    from robotd import tasks
    return ([(f"driver {name}", registry.driver_class(name)) for name in registry.names()
             if not registry.driver_class(name).__module__.startswith("tests.")]
            + [(f"task {name}", tasks.base._TASKS[name]) for name in tasks.names()])


def test_every_driver_and_task_declares_its_settings_as_a_typed_dataclass_with_help():
    unhelped = []
    for what, cls in registered():
        assert dataclasses.is_dataclass(cls.Args), what
        for field in dataclasses.fields(cls.Args):
            if field.init and not field.metadata.get("help"):
                unhelped.append(f"{what}: {field.name}")
    assert unhelped == []
