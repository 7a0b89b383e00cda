"""The one thing pyproject.toml cannot say without an experimental table: the C extension.

publisher/_scan.c reads the every-interval sample's numbers without a Python object per number (issue 16).
It is optional: where it cannot be compiled, the install goes on and the publisher samples through its Python
parsers alone, at a higher CPU cost.
"""

from setuptools import Extension, setup
from setuptools.command.build_py import build_py


class _BuildPy(build_py):
    """The package's root is the repository's (pyproject.toml's package-dir): this file is no module of it."""

    def find_package_modules(self, package: str, package_dir: str) -> list[tuple[str, str, str]]:
        return [m for m in super().find_package_modules(package, package_dir)
                if not (package == "shm_metrics" and m[1] == "setup")]


setup(cmdclass={"build_py": _BuildPy},
      ext_modules=[Extension("shm_metrics.publisher._scan", ["publisher/_scan.c"], optional=True,
                             extra_compile_args=["-O2", "-ffp-contract=off"])])
