"""Second GPU pass: batch 1, 2048 tokens; 340m only checkpointed (eager OOMs at 140 GB with batch 4); no profiler."""
import sys
import torch
from benchmarks.speed import run
if __name__ == "__main__":
    dev, out, presets, length = sys.argv[1], sys.argv[2], tuple(sys.argv[3].split(",")), int(sys.argv[4])
    skip = {("340m", length): ("eager Hope 340m at 4x2048 tokens ran out of the H200's 140 GB", True),
            ("tiny", length): ("dry run", True)}
    run(presets=presets, lengths=(length,), batch_size=1, device=dev, autocast_dtype=torch.bfloat16, name=sys.argv[5] if len(sys.argv) > 5 else "gpu_speed_b1",
        out=out, reference=False, compiled=len(sys.argv) > 5, aten_max_len=0, skip=skip, iters=3, budget_s=20.0)
