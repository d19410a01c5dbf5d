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
SCHEMA = ROOT / "Testing" / "Data" / "schemas" / "slicer-extension-catalog-entry-schema-v1.0.2.json"
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
    text = (MODULE / "CMakeLists.txt").read_text(encoding="utf-8")
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
    text = (MODULE / "CMakeLists.txt").read_text(encoding="utf-8")
    assert re.search(r"set\(MODULE_NAME VertebraeLabeling\)", text)
    assert "slicerMacroBuildScriptedModule(" in text
    assert "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in text
    # Files the module reads at run time that live outside its folder must be installed.
    assert "Testing/Data/ts_example_ct.nii.gz" in text and "Resources/Models" in text
    # ... and the sample CT's notice and licence go with it.
    assert "../NOTICE" in text and "../LICENSE" in text
    assert (ROOT / "Testing" / "Data" / "ts_example_ct.nii.gz").is_file()
    assert (MODULE / "Testing" / "CMakeLists.txt").is_file()


def test_top_level_cmake_has_extension_metadata():
    text = (ROOT / "CMakeLists.txt").read_text(encoding="utf-8")
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
    entry = json.loads((ROOT / "VertebraeLabeling.json").read_text(encoding="utf-8"))
    jsonschema.validate(entry, json.loads(SCHEMA.read_text(encoding="utf-8")))
    assert entry["$schema"].endswith("slicer-extension-catalog-entry-schema-v1.0.2.json#")
    # The catalog must build the PyTorch extension first, as CMake's EXTENSION_DEPENDS says.
    depends = _cmake_set((ROOT / "CMakeLists.txt").read_text(encoding="utf-8"), "EXTENSION_DEPENDS").strip('"').split()
    assert sorted(entry.get("build_dependencies", [])) == sorted(depends)
    assert entry["category"] == _cmake_set((ROOT / "CMakeLists.txt").read_text(encoding="utf-8"), "EXTENSION_CATEGORY").strip('"')


def test_ui_widgets_match_the_code_and_parameter_node():
    ui = ET.parse(MODULE / "Resources" / "UI" / "VertebraeLabeling.ui").getroot()
    names = {w.get("name") for w in ui.iter("widget")}
    bound = {p.find("string").text for p in ui.iter("property") if p.get("name") == "SlicerParameterName"}
    source = (MODULE / "VertebraeLabeling.py").read_text(encoding="utf-8")
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
        tree = ast.parse(path.read_text(encoding="utf-8"), feature_version=(3, 9))
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


# ---------------------------------------------------------------------------------------------
# The Extensions Index's checks (scripts/check_description_files.py in Slicer/ExtensionsIndex),
# applied offline to our files: what a submission of VertebraeLabeling.json would be refused for.
# ---------------------------------------------------------------------------------------------

# Some of the Index's ACCEPTED_EXTENSION_CATEGORIES (the whole list is in its script): the ones that could
# describe this extension. A category outside them fails here even where the Index would take it.
INDEX_CATEGORIES = {"Analysis", "Informatics", "Quantification", "Segmentation", "Utilities"}
# The names the Index's check_license_file looks for at the repository root.
INDEX_LICENSE_NAMES = ("LICENSE", "LICENCE", "License.txt", "license.txt", "LICENSE.txt", "COPYING", "COPYING.txt")
# The Index clones the whole repository and refuses one over 100 MB; our working tree's tracked files must
# leave room for the history (see the size test).
TRACKED_FILES_LIMIT_MB = 80.0


def _catalog() -> dict:
    return json.loads((ROOT / "VertebraeLabeling.json").read_text(encoding="utf-8"))


def _cmake_url_list(var: str) -> list:
    """A URL variable of the top-level CMakeLists.txt, parsed the way the Index's script parses it
    (one double-quoted string right after the name)."""
    text = (ROOT / "CMakeLists.txt").read_text(encoding="utf-8")
    match = re.search(r"set\s*\(" + var + r'\s*"([^"]+)"\s*\)', text)
    assert match, f"{var} is not set to one quoted string (the Index's parser would not find it)"
    return match.group(1).split()


def _github_repo() -> tuple:
    """(owner, name) of the catalog's scm_url."""
    match = re.fullmatch(r"https://github\.com/([^/]+)/([^/]+?)(?:\.git)?", _catalog()["scm_url"])
    assert match, "scm_url is not a https://github.com/OWNER/NAME(.git) URL"
    return match.group(1), match.group(2)


def _tracked_files():
    import shutil
    import subprocess

    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    return [name for name in out.decode("utf-8").split("\0") if name]


def test_catalog_category_is_one_the_extensions_index_accepts():
    assert _catalog()["category"] in INDEX_CATEGORIES
    assert _cmake_set((ROOT / "CMakeLists.txt").read_text(encoding="utf-8"), "EXTENSION_CATEGORY").strip('"') in INDEX_CATEGORIES


def test_licence_at_the_root_and_the_sample_cts_notice():
    present = [name for name in INDEX_LICENSE_NAMES if (ROOT / name).is_file()]
    assert present, "no licence file at the repository root"
    licence = (ROOT / present[0]).read_text(encoding="utf-8")
    assert "Apache License" in licence and "Version 2.0" in licence
    assert re.search(r'license\s*=\s*\{\s*text\s*=\s*"Apache-2.0"', (ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    # The bundled sample CT is TotalSegmentator's (Apache-2.0): its notice travels with it.
    notice = (ROOT / "NOTICE").read_text(encoding="utf-8")
    assert "ts_example_ct.nii.gz" in notice and "TotalSegmentator" in notice and "Apache License" in notice
    assert (ROOT / "Testing" / "Data" / "ts_example_ct.nii.gz").is_file()


def test_project_name_and_repository_name_as_the_index_wants():
    project = re.search(r"project\s*\(\s*([^\s)]+)", (ROOT / "CMakeLists.txt").read_text(encoding="utf-8"), re.IGNORECASE)
    assert project and project.group(1) == "VertebraeLabeling" == Path("VertebraeLabeling.json").stem
    assert "slicer" in _github_repo()[1].lower()
    assert _catalog()["scm_url"].startswith("https://")


def test_every_url_of_the_catalog_entry_and_cmake_maps_to_a_file_here():
    """Icon, screenshots and homepage point into this repository, at the catalog's revision, to files
    that are committed (a file that exists only here would be a broken link for the Index)."""
    owner, name = _github_repo()
    revision = _catalog()["scm_revision"]
    tracked = set(_tracked_files())
    raw = f"https://raw.githubusercontent.com/{owner}/{name}/{revision}/"
    images = _cmake_url_list("EXTENSION_ICONURL") + _cmake_url_list("EXTENSION_SCREENSHOTURLS")
    assert len(images) >= 2, "an icon and at least one screenshot"
    for url in images:
        assert url.startswith(raw), f"{url} is not a file of {owner}/{name} at {revision}"
        path = url[len(raw):]
        assert path in tracked, f"{url}: {path} is not a committed file"
        data = (ROOT / path).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
        assert len(data) < 1_000_000, f"{path} is {len(data) / 1e6:.1f} MB"
    homepage = _cmake_url_list("EXTENSION_HOMEPAGE")
    assert len(homepage) == 1
    match = re.fullmatch(rf"https://github\.com/{owner}/{name}(?:#readme|/blob/{revision}/(.+))", homepage[0])
    assert match, f"EXTENSION_HOMEPAGE {homepage[0]} is not this repository's page"
    assert (match.group(1) or "README.md") in tracked


def test_repository_size_leaves_room_under_the_index_limit():
    """The committed files of today's tree, against 80 MB (the Index refuses a clone over 100 MB, history
    included). Run with -s to see the size."""
    sizes = {name: (ROOT / name).stat().st_size for name in _tracked_files() if (ROOT / name).is_file()}
    total_mb = sum(sizes.values()) / 1e6
    largest = sorted(sizes.items(), key=lambda item: -item[1])[:3]
    print(f"tracked files: {total_mb:.1f} MB; largest: "
          + ", ".join(f"{name} {size / 1e6:.1f} MB" for name, size in largest))
    assert total_mb < TRACKED_FILES_LIMIT_MB
