#!/usr/bin/env bash
# Builds simlm-index and simlm-search with the CUDA encoder on a machine WITHOUT a GPU, for Hopper
# (H100/H200, compute capability 9.0) by default. Output: target/cuda/release/{simlm-index,simlm-search}.
#
# How (see ../shared/notes/cuda-build.md): candle 0.11 compiles its kernels with nvcc at build time and
# cudarc 0.19 accepts CUDA 11.4..13.4, so a CUDA 13.0 toolkit, the version of the GPU machines' driver,
# comes from PyPI (pinned: the unpinned 13.5 front end writes PTX that the 13.0 ptxas rejects). The final
# link needs the driver library libcuda, which no package ships: a stub that defines every cu* symbol
# the binary references is linked instead; at run time the real driver's libcuda.so.1 is loaded.
#
# Run time needs, on the GPU machine: the driver (libcuda.so.1) and libcudart/libcublas/libcublasLt/
# libcurand/libnvrtc of CUDA 13 on LD_LIBRARY_PATH (a PyTorch installation carries them: see
# scripts/gpu_bench.py, which sets that up).
#   CUDA_COMPUTE_CAP=90 scripts/build-cuda.sh
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
cap="${CUDA_COMPUTE_CAP:-90}"
venv="$root/target/cuda-toolkit/venv"
home="$root/target/cuda-toolkit/home"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
  nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-cuda-cccl==13.0.85 \
  nvidia-cuda-runtime==13.0.96 nvidia-cuda-nvrtc==13.0.88 "nvidia-cublas<13.1" "nvidia-curand<10.4.1"
cu="$("$venv/bin/python" -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13"))')"

# A CUDA_HOME the build scripts understand: bin/nvcc, include, nvvm, lib64 with unversioned links.
rm -rf "$home" && mkdir -p "$home/lib64"
ln -s "$cu/bin" "$home/bin"
ln -s "$cu/include" "$home/include"
ln -s "$cu/nvvm" "$home/nvvm"
for f in "$cu"/lib/*.so.*; do
  ln -sf "$f" "$home/lib64/$(basename "$f")"
  base="$(basename "$f" | sed 's/\.so\..*/.so/')"
  [ -e "$home/lib64/$base" ] || ln -s "$f" "$home/lib64/$base"
done
export CUDA_HOME="$home" CUDA_PATH="$home" CUDA_COMPUTE_CAP="$cap"
export PATH="$home/bin:$PATH" LIBRARY_PATH="$home/lib64${LIBRARY_PATH:+:$LIBRARY_PATH}"
export LD_LIBRARY_PATH="$home/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export CARGO_TARGET_DIR="$root/target/cuda"
nvcc --version | tail -n 2

# First pass: compiles everything; the link may fail for want of libcuda.
stub() {
  local rlib syms
  rlib="$(ls -t "$CARGO_TARGET_DIR"/release/deps/libcudarc-*.rlib | head -n 1)"
  syms="$(nm -u "$rlib" 2>/dev/null | awk '{print $NF}' | grep -E '^cu[A-Z]' | sort -u)"
  {
    echo "/* Link-time stand-in for the CUDA driver library; never loaded at run time. */"
    for s in $syms; do echo "int $s(void) { return 999; }"; done
  } > "$home/cuda_stub.c"
  gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$home/lib64/libcuda.so" "$home/cuda_stub.c"
  echo "libcuda stub: $(echo "$syms" | wc -w) driver symbols"
}
if ! cargo build --release --locked -p indexer -p searcher --features cuda; then
  stub
  cargo build --release --locked -p indexer -p searcher --features cuda
fi
ls -la "$CARGO_TARGET_DIR/release/simlm-index" "$CARGO_TARGET_DIR/release/simlm-search"
