"""Install the YOLOv3 compression tool: ``pip install -e .[dev]`` (``make test`` does this in .venv)."""

from setuptools import find_packages, setup

setup(
    name="yolo3-compress",
    version="0.1.0",
    description="Compress YOLOv3 detectors for edge devices: Darknet I/O, evaluation, pruning, clustering, int8 TFLite",
    python_requires=">=3.10,<3.13",
    packages=find_packages(include=["yolo3", "yolo3.*", "compression", "compression.*", "yolo3_cli", "yolo3_cli.*"]),
    install_requires=[
        "tensorflow==2.21.0",
        "tf-keras==2.21.0",
        "tensorflow-model-optimization==0.8.1",
        "ai-edge-litert==2.3.0",
        "numpy>=1.26,<2.5",
        "scikit-learn>=1.5,<2",
        "opencv-python-headless>=4.8,<5",
        "pillow>=10,<14",
        "defusedxml==0.7.1",
        "pycocotools>=2.0.8,<3",
        "tqdm>=4.66,<5",
        "matplotlib>=3.8,<4",
        "h5py>=3.10,<4",
        "tensorboard>=2.20,<2.22",
    ],
    extras_require={"dev": ["pytest>=8,<10", "pytest-xdist>=3.5,<4", "ruff>=0.6"]},
    entry_points={"console_scripts": ["yolo3=yolo3_cli.main:entry"]},
)
