"""Package metadata agrees across package.xml, setup.py and the Python package; ruff passes."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import xml.etree.ElementTree as ET

from conftest import REPO_ROOT

import ovseg_ros


def _setup_kwargs() -> dict[str, object]:
    tree = ast.parse((REPO_ROOT / "setup.py").read_text())
    call = next(
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "setup"
    )
    return {kw.arg: kw.value.value for kw in call.keywords if isinstance(kw.value, ast.Constant)}


def test_name_and_version_agree():
    package = ET.parse(REPO_ROOT / "package.xml").getroot()
    setup_kwargs = _setup_kwargs()
    assert package.get("format") == "3"
    assert package.findtext("name") == setup_kwargs["name"] == "ovseg_ros"
    assert package.findtext("version") == setup_kwargs["version"] == ovseg_ros.__version__
    assert package.findtext("license") == setup_kwargs["license"]


def test_package_xml_has_valid_maintainer_and_dependencies():
    package = ET.parse(REPO_ROOT / "package.xml").getroot()
    maintainer = package.find("maintainer")
    assert maintainer is not None and maintainer.text.strip()
    local, _, domain = maintainer.get("email", "").partition("@")
    assert local and "." in domain
    depends = {e.text for e in package if e.tag.endswith("depend")}
    for needed in (
        "rclpy",
        "sensor_msgs",
        "std_msgs",
        "rosidl_default_generators",
        "rosidl_default_runtime",
        "python3-numpy",
        "python3-opencv",
        "python3-torch",
    ):
        assert needed in depends, needed


def test_ruff_lint_and_format_pass():
    for command in (["ruff", "check", "."], ["ruff", "format", "--check", "."]):
        run = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True)
        assert run.returncode == 0, run.stdout + run.stderr


def test_build_installs_nodes_launch_config_and_models():
    share = REPO_ROOT / ".build" / "install" / "ovseg_ros" / "share" / "ovseg_ros"
    lib = REPO_ROOT / ".build" / "install" / "ovseg_ros" / "lib" / "ovseg_ros"
    for path in (
        share / "launch" / "segmenter.launch.py",
        share / "config" / "segmenter.yaml",
        share / "config" / "ovseg.rviz",
        share / "models" / "ovseg-tiny-clip.safetensors",
        share / "models" / "ovseg-toy-maskformer.safetensors",
        lib / "ovseg_segmenter",
        lib / "ovseg_frame_publisher",
    ):
        assert path.is_file(), path
    for program in (lib / "ovseg_segmenter", lib / "ovseg_frame_publisher"):
        assert program.stat().st_mode & 0o111, program


def test_openmp_threads_wait_passively_unless_the_user_chose():
    """Spinning OpenMP threads would starve the node's DDS threads on small machines."""
    program = (
        "import os, ovseg_ros, torch\n"
        "torch.ones(64, 64) @ torch.ones(64, 64)\n"
        "print(os.environ['OMP_WAIT_POLICY'])"
    )
    for chosen, expected in ((None, "PASSIVE"), ("ACTIVE", "ACTIVE")):
        env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
        if chosen is not None:
            env["OMP_WAIT_POLICY"] = chosen
        run = subprocess.run(
            [sys.executable, "-c", program], env=env, capture_output=True, text=True, check=True
        )
        assert run.stdout.strip() == expected
