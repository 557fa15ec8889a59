"""stembeam: separate music catalogs into stems with Apache Beam.

``pip install .`` gives the ``stembeam`` command with TensorFlow for CPUs (tensorflow-cpu on
x86-64, tensorflow elsewhere); ``.[test]`` adds what the tests and bench/ use, ``.[postgresql]``
a PostgreSQL driver for --results. GPU worker images (deploy/Dockerfile) install
tensorflow[and-cuda] and then this package with ``--no-deps``. Ranges match requirements.txt.
"""

import setuptools

# The repository's top-level folders install as one namespace: stembeam.model,
# stembeam.pipeline, stembeam.transforms (no generic top-level module names in site-packages).
FOLDERS = ("model", "pipeline", "transforms")
PACKAGES = [
    f"stembeam.{name}"
    for name in setuptools.find_packages(
        include=[pattern for folder in FOLDERS for pattern in (folder, f"{folder}.*")]
    )
]

setuptools.setup(
    name="stembeam",
    version="0.1.0",
    description="Music source separation (Spleeter U-Net) for whole catalogs on Apache Beam",
    python_requires=">=3.11",
    packages=PACKAGES,
    package_dir={f"stembeam.{folder}": folder for folder in FOLDERS},
    # the report's page templates, stylesheet and table script, read at run time
    package_data={"stembeam.pipeline.report": ["templates/*"]},
    install_requires=[
        "apache-beam[gcp]>=2.77,<3",
        "tensorflow-cpu>=2.21,<2.22; platform_machine == 'x86_64' or platform_machine == 'AMD64'",
        "tensorflow>=2.21,<2.22; platform_machine != 'x86_64' and platform_machine != 'AMD64'",
        "keras>=3.15,<4",
        "numpy>=2",
        "scipy>=1.13",
        "soundfile>=0.13",
        "soxr>=0.5",
        "av>=14",
        "norbert>=0.2.1",
        "SQLAlchemy>=2.0",
        "matplotlib>=3.8",
        "Jinja2>=3.1",
        "mido>=1.3",
        "stempeg>=0.2.6",  # the demo catalog's MUSDB18 excerpt ships in its wheel
    ],
    extras_require={
        "postgresql": ["psycopg2-binary>=2.9"],
        "test": [
            "museval>=0.4.1",
            "musdb>=0.4.3",
            "psycopg2-binary>=2.9",
            "psycopg[binary]>=3.3",
            "boto3>=1.40",
            "pytest",
        ],
    },
    entry_points={"console_scripts": ["stembeam=stembeam.pipeline.cli:main"]},
)
