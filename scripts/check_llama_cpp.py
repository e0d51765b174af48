"""Exit 1 when the installed llama-cpp-python was built with llama.cpp's AMX kernels.

Those kernels crash (SIGSEGV in ggml_backend_amx_mul_mat) on the first matrix multiply of a quantised model
on machines that advertise AMX, as some virtual machines of this project's kind do; `-march=native` turns them
on wherever the CPU has AMX. `make setup` builds llama-cpp-python without them and runs this check, so a wheel
built elsewhere (pip's wheel cache) with AMX is rebuilt instead of taken.
"""

from __future__ import annotations

import sys

import llama_cpp

info = llama_cpp.llama_print_system_info().decode(errors="replace")
if "AMX_INT8 = 1" in info or "AMX_TILE = 1" in info:
    print("llama-cpp-python was built with AMX kernels, which crash on this kind of machine; rebuilding",
          file=sys.stderr)
    sys.exit(1)
print(f"llama-cpp-python {llama_cpp.__version__}: built without AMX kernels")
