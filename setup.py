"""Build script: declares the Cython twins of sse_fast's CPU-bound modules.

Every ``sse_fast/_*_c.pyx`` becomes the extension ``sse_fast._*_c``. A failed
compile is not fatal by default (the pure-Python twins are used instead), so
``pip install .`` works on a machine without a C compiler; set
``SSE_FAST_REQUIRE_EXTENSIONS=1`` to make it fatal, which CI does so that a
CI run can never pass on the pure twins by accident.
"""

import glob
import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

REQUIRE = os.environ.get("SSE_FAST_REQUIRE_EXTENSIONS", "") not in ("", "0")
SKIP = os.environ.get("SSE_FAST_NO_EXTENSIONS", "") not in ("", "0") and not REQUIRE

DIRECTIVES = {
    "language_level": "3",
    "boundscheck": False,
    "wraparound": False,
    "cdivision": True,
    "embedsignature": True,
}


def _extensions():
    exts = []
    for pyx in sorted(glob.glob(os.path.join("sse_fast", "_*_c.pyx"))):
        name = "sse_fast." + os.path.splitext(os.path.basename(pyx))[0]
        # optional=True lets setuptools carry on without a compiler
        exts.append(Extension(name, [pyx], optional=not REQUIRE, extra_compile_args=["-O2"]))
    return exts


class BuildExt(build_ext):
    """Cythonize at build time, so the sdist ships only ``.pyx`` sources."""

    def finalize_options(self):
        from Cython.Build import cythonize

        exts = self.distribution.ext_modules or []
        optional = {e.name: e.optional for e in exts}
        self.distribution.ext_modules = cythonize(exts, compiler_directives=DIRECTIVES, quiet=True)
        for e in self.distribution.ext_modules:
            # cythonize() drops Extension(optional=...): set it again
            e.optional = optional.get(e.name, not REQUIRE)
        super().finalize_options()

    def run(self):
        try:
            super().run()
        except Exception as exc:  # no compiler, missing headers
            if REQUIRE:
                raise
            sys.stderr.write(f"sse_fast: building the extensions failed ({exc}); using the pure-Python twins\n")


setup(
    ext_modules=[] if SKIP else _extensions(),
    cmdclass={"build_ext": BuildExt},
)
