"""stembeam: separate music catalogs into stems with Apache Beam.

Also Dataflow's ``--setup_file``: workers install the three packages below. TensorFlow is not an
install requirement: requirements.txt (tensorflow-cpu) or the GPU worker image provide it.
"""
import setuptools

setuptools.setup(
    name="stembeam",
    version="0.1.0",
    description="Music source separation (Spleeter U-Net) for whole catalogs on Apache Beam",
    python_requires=">=3.11",
    packages=setuptools.find_packages(include=["pipeline", "pipeline.*", "transforms",
                                               "transforms.*", "model", "model.*"]),
    install_requires=[
        "apache-beam[gcp]>=2.77,<3",
        "numpy>=2",
        "soundfile>=0.13",
        "soxr>=0.5",
        "av>=14",
        "norbert>=0.2.1",
        "museval>=0.4.1",
        "SQLAlchemy>=2.0",
        "matplotlib>=3.8",
    ],
    entry_points={"console_scripts": ["stembeam=pipeline.cli:main"]},
)
