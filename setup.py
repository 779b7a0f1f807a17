"""Builds the Cython extensions of core/; without a compiler the pure-Python twins serve."""

import os
import sys

from setuptools import setup
from setuptools.command.build_ext import build_ext

EXTENSIONS = ["core._heap_c", "core._dispatch_c"]


class OptionalBuildExt(build_ext):
    """A failed compile must not fail the install: core/ falls back to its Python twins."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 - any compiler failure means "no extension"
            print(f"dsched: Cython extensions not built ({exc}); using pure Python", file=sys.stderr)

    def build_extension(self, ext) -> None:  # type: ignore[no-untyped-def]
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001
            print(f"dsched: extension {ext.name} not built ({exc})", file=sys.stderr)


def extensions() -> list:  # type: ignore[type-arg]
    if os.environ.get("DSCHED_NO_EXTENSIONS"):
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        print("dsched: Cython missing; using pure Python", file=sys.stderr)
        return []
    sources = []
    for name in EXTENSIONS:
        path = name.replace(".", "/") + ".pyx"
        if os.path.exists(path):
            sources.append(path)
    return cythonize(
        sources,
        language_level=3,
        compiler_directives={"boundscheck": False, "wraparound": False, "cdivision": True},
    )


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
