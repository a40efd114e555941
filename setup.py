"""`pip install .` installs the ROS-free engine, the `ovseg` command and the bundled models.

Inside a ROS 2 workspace the package is built by colcon (CMakeLists.txt), which also generates the
messages and installs models/ to share/ovseg_ros; the ROS nodes need rclpy from a ROS install or
the ROS 2 PyPI wheels. A wheel ships models/ as the package data `ovseg_ros/models/`, where
clip_model.package_roots() finds it.
"""

from pathlib import Path

from setuptools import find_packages, setup

requirements = [
    line.strip()
    for line in (Path(__file__).parent / "requirements.txt").read_text().splitlines()
    if line.strip() and not line.startswith("#")
]

setup(
    name="ovseg_ros",
    version="0.1.0",
    description="Open-vocabulary semantic segmentation (Xu et al., ECCV 2022) for ROS 2",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=[*find_packages(include=["ovseg_ros", "ovseg_ros.*"]), "ovseg_ros.models"],
    package_dir={"ovseg_ros.models": "models"},
    package_data={
        "ovseg_ros.engine": ["model_configs/*.json", "class_lists/*.txt"],
        "ovseg_ros.models": ["*.safetensors"],
    },
    install_requires=requirements,
    extras_require={
        # `ovseg eval toy:photo` cuts its textures from the photographs in scikit-image's wheel.
        "eval": ["scikit-image>=0.22"],
        # The "sam" and "sam2" proposal generators. sam2 1.1.0 on PyPI is Meta's
        # facebookresearch/sam2 code packaged by a third party, as an sdist: set SAM2_BUILD_CUDA=0
        # to skip its optional CUDA extension, which these generators do not use.
        "sam": ["segment-anything==1.0", "sam2==1.1.0"],
    },
    entry_points={
        "console_scripts": [
            "ovseg=ovseg_ros.cli:main",
            "ovseg_segmenter=ovseg_ros.ros.runner:segmenter_main",
            "ovseg_frame_publisher=ovseg_ros.ros.runner:frame_publisher_main",
        ]
    },
)
