"""Extension packaging checks that need no Slicer: CMake lists, extension metadata, UI file.

A script or resource missing from the module's CMakeLists.txt is silently missing from the
installed extension, which works from the source tree and fails for every user: the classic
extension bug, caught here.
"""

import ast
import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODULE = ROOT / "VertebraeLabeling"
SCHEMA = ROOT.parent / "shared" / "schemas" / "slicer-extension-catalog-entry-schema-v1.0.2.json"
REQUIRED_EXTENSION_VARS = ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS",
                           "EXTENSION_DESCRIPTION", "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS",
                           "EXTENSION_DEPENDS")


def _cmake_set(text: str, var: str) -> str:
    """Value of ``set(VAR ...)`` in a CMake file (comments removed, multi-line)."""
    text = re.sub(r"#[^\n]*", "", text)
    match = re.search(r"\bset\(\s*" + re.escape(var) + r"\b(.*?)\)", text, re.S)
    assert match, f"set({var} ...) not found"
    return match.group(1).strip()


def _module_list(var: str):
    text = (MODULE / "CMakeLists.txt").read_text()
    items = _cmake_set(text, var).split()
    return {item.replace("${MODULE_NAME}", "VertebraeLabeling") for item in items}


def _module_files(patterns, skip_dirs=("Testing", "__pycache__")):
    out = set()
    for pattern in patterns:
        for path in MODULE.rglob(pattern):
            rel = path.relative_to(MODULE)
            if path.is_file() and not any(part in skip_dirs for part in rel.parts):
                out.add(rel.as_posix())
    return out


def test_every_python_file_is_listed():
    listed = _module_list("MODULE_PYTHON_SCRIPTS") | _module_list("MODULE_PYTHON_RESOURCES")
    # The module folder's own __init__.py only serves the pip package (console script); it is
    # deliberately not installed into Slicer, whose module factory would take it for a module.
    missing = sorted(_module_files(["*.py"]) - listed - {"__init__.py"})
    assert not missing, f"add to VertebraeLabeling/CMakeLists.txt: {missing}"


def test_every_resource_is_listed():
    resources = {p for p in _module_files(["*"]) if p.startswith("Resources/")}
    missing = sorted(resources - _module_list("MODULE_PYTHON_RESOURCES"))
    assert not missing, f"add to MODULE_PYTHON_RESOURCES: {missing}"


def test_every_listed_file_exists():
    listed = _module_list("MODULE_PYTHON_SCRIPTS") | _module_list("MODULE_PYTHON_RESOURCES")
    absent = sorted(p for p in listed if not (MODULE / p).is_file())
    assert not absent, f"listed in CMakeLists.txt but absent: {absent}"


def test_module_cmake_builds_and_tests_the_module():
    text = (MODULE / "CMakeLists.txt").read_text()
    assert re.search(r"set\(MODULE_NAME VertebraeLabeling\)", text)
    assert "slicerMacroBuildScriptedModule(" in text
    assert "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in text
    # Files the module reads at run time that live outside its folder must be installed.
    assert "Testing/Data/ts_example_ct.nii.gz" in text and "Resources/Models" in text
    assert (ROOT / "Testing" / "Data" / "ts_example_ct.nii.gz").is_file()
    assert (MODULE / "Testing" / "CMakeLists.txt").is_file()


def test_top_level_cmake_has_extension_metadata():
    text = (ROOT / "CMakeLists.txt").read_text()
    for var in REQUIRED_EXTENSION_VARS:
        assert _cmake_set(text, var).strip('"'), f"{var} is empty"
    assert "PyTorch" in _cmake_set(text, "EXTENSION_DEPENDS")
    assert re.search(r"project\(VertebraeLabeling\)", text)
    assert "find_package(Slicer REQUIRED)" in text
    assert "add_subdirectory(VertebraeLabeling)" in text
    assert "Slicer_EXTENSION_GENERATE_CONFIG" in text and "Slicer_EXTENSION_CPACK" in text


def test_extension_icon_exists_and_is_png():
    for icon in (ROOT / "Resources" / "Icons" / "VertebraeLabeling.png",
                 MODULE / "Resources" / "Icons" / "VertebraeLabeling.png"):
        assert icon.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", icon


def test_extension_catalog_entry_validates():
    jsonschema = pytest.importorskip("jsonschema")
    if not SCHEMA.is_file():
        pytest.skip(f"schema not found: {SCHEMA}")
    entry = json.loads((ROOT / "VertebraeLabeling.json").read_text())
    jsonschema.validate(entry, json.loads(SCHEMA.read_text()))
    assert entry["$schema"].endswith("slicer-extension-catalog-entry-schema-v1.0.2.json#")
    # The catalog must build the PyTorch extension first, as CMake's EXTENSION_DEPENDS says.
    depends = _cmake_set((ROOT / "CMakeLists.txt").read_text(), "EXTENSION_DEPENDS").strip('"').split()
    assert sorted(entry.get("build_dependencies", [])) == sorted(depends)
    assert entry["category"] == _cmake_set((ROOT / "CMakeLists.txt").read_text(), "EXTENSION_CATEGORY").strip('"')


def test_ui_widgets_match_the_code_and_parameter_node():
    ui = ET.parse(MODULE / "Resources" / "UI" / "VertebraeLabeling.ui").getroot()
    names = {w.get("name") for w in ui.iter("widget")}
    bound = {p.find("string").text for p in ui.iter("property") if p.get("name") == "SlicerParameterName"}
    source = (MODULE / "VertebraeLabeling.py").read_text()
    used = set(re.findall(r"self\.ui\.(\w+)", source))
    assert not used - names, f"widgets used in code but absent from the .ui: {sorted(used - names)}"
    # Every parameter bound in the .ui must be a field of the parameter node class.
    tree = ast.parse(source)
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "VertebraeLabelingParameterNode")
    fields = {n.target.id for n in cls.body if isinstance(n, ast.AnnAssign)}
    assert bound <= fields, f"unknown parameters in .ui: {sorted(bound - fields)}"
    assert {"inputVolume", "outputMarkups", "device", "confidenceThreshold", "blockStride"} <= bound


def test_module_source_is_python39_compatible():
    # Slicer 5.8 ships Python 3.9: no match statements or PEP 604 unions evaluated at runtime.
    for path in [MODULE / "VertebraeLabeling.py", MODULE / "Resources" / "Scripts" / "vertebrae_labeling_worker.py"]:
        tree = ast.parse(path.read_text(), feature_version=(3, 9))
        assert not any(type(n).__name__ == "Match" for n in ast.walk(tree)), path


def test_ui_starts_at_the_shared_defaults():
    """The panel's sliders open at the values the library and CLI use (``defaults.py``), not at a copy."""
    from VertebraeLabeling.VertebraeLabelingLib.defaults import DEFAULT_STRIDE, LOW_CONFIDENCE

    ui = ET.parse(MODULE / "Resources" / "UI" / "VertebraeLabeling.ui").getroot()
    values = {}
    for widget in ui.iter("widget"):
        props = {p.get("name"): p for p in widget.findall("property")}
        if "SlicerParameterName" in props and "value" in props:
            values[props["SlicerParameterName"].find("string").text] = float(props["value"][0].text)
    assert values["confidenceThreshold"] == pytest.approx(LOW_CONFIDENCE)
    if "blockStride" in values:
        assert values["blockStride"] == DEFAULT_STRIDE
