#!/usr/bin/env bash
# Export the recorded commit of an official repository from its git directory (a clone's .git, or a bare
# mirror) into a scratch folder OUTSIDE dfqbench and apply the CPU / current-torch patches the golden scripts
# need (tests/golden/README.md). For example:
#   git clone https://github.com/xushoukai/GDFQ /tmp/clones/GDFQ
#   prepare_official.sh gdfq  /tmp/clones/GDFQ/.git      /tmp/golden/GDFQ
#   prepare_official.sh zeroq /tmp/clones/ZeroQ/.git     /tmp/golden/ZeroQ     # amirgholami/ZeroQ
#   prepare_official.sh zaq   /tmp/clones/ZAQ-code/.git  /tmp/golden/ZAQ       # FLHonker/ZAQ-code
set -euo pipefail
kind=$1; mirror=$2; out=$3
declare -A COMMIT=([gdfq]=a93210e7309527cdd0ac2763d2a6928a8a767838
                   [zeroq]=9715739b8731a44d064901b50260aeebbe9a10bc
                   [zaq]=e7e9f55791e36c6784d58c356d3ced76a7583369)
commit=${COMMIT[$kind]:?"unknown kind $kind: expected gdfq, zeroq or zaq"}
rm -rf "$out" && mkdir -p "$out"
git --git-dir="$mirror" archive "$commit" | tar -x -C "$out"
if [ "$kind" = gdfq ]; then
  # CPU: drop every .cuda() call in the trainer, and the GPU-count assert / .cuda() of utils.data_parallel.
  sed -i 's/\.cuda()//g' "$out/trainer.py" "$out/utils/model_transform.py"
  sed -i 's/^\(\s*\)assert torch.cuda.device_count() >= gpu0 + ngpus\(.*\)$/\1pass  # CPU\2/' "$out/utils/model_transform.py"
  # One iteration instead of the hard-coded 200 per epoch (Trainer.train). The files have CRLF endings.
  sed -i 's/^\(\s*\)iters = 200\(\r\?\)$/\1iters = 1\2/' "$out/trainer.py"
  # Current torch: the training-accuracy meter views a non-contiguous slice; reshape instead (utils/compute.py).
  sed -i 's/correct\[:k\]\.view(-1)/correct[:k].reshape(-1)/' "$out/utils/compute.py"
  grep -q 'correct\[:k\].reshape(-1)' "$out/utils/compute.py"
  grep -q 'iters = 1.\?$' "$out/trainer.py" && grep -q 'pass  # CPU' "$out/utils/model_transform.py"
fi
echo "$kind $commit -> $out"
