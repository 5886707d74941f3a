"""Only the C part lives here; everything else is declared in setup.cfg.

fs_crm.freeswitch._eslindex speeds up event parsing. It is optional: where it cannot be compiled (no C
compiler or Python headers), the install still succeeds and fs_crm.freeswitch.eslparse uses its pure-Python
parser, which gives the same results, only slower.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("fs_crm.freeswitch._eslindex", ["fs_crm/freeswitch/_eslindex.c"], optional=True,
                             extra_compile_args=["-O2"])])
