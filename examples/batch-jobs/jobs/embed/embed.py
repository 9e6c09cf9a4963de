"""A stand-in for an embedding backfill: reports where it runs and writes a result file."""

import argparse
import json
import os
import socket
from pathlib import Path

parser = argparse.ArgumentParser()
parser.add_argument("--out", required=True)
args = parser.parse_args()
out = Path(args.out)
out.mkdir(parents=True, exist_ok=True)
report = {
    "host": socket.gethostname(),
    "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
    "batch_size": int(os.environ.get("BATCH_SIZE", "32")),
}
(out / "report.json").write_text(json.dumps(report))
print(json.dumps(report))
