"""The README's "Extending" examples, run as written: a post-processing step, a grouper, a loss and a
data set, each checked on a known case, then all four in one config that trains and is evaluated."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"

CHECKS = '''
import json, sys
from pathlib import Path
import numpy as np, torch
import extending
from embedseg.cli import main
from embedseg.data import SyntheticShapes
from embedseg.grouping import build_grouper

# The grouper and the step: two blobs, each largest in its own embedding channel, one pixel apart.
embedding = np.zeros((2, 8, 8), np.float32)
embedding[0, 1:4, 1:7], embedding[1, 5:7, 1:7] = 1.0, 1.0
semantic = np.stack([embedding.sum(0) == 0, embedding.sum(0) > 0]).astype(np.float32)
outputs = {"embedding": embedding, "semantic": semantic}
found = build_grouper("argmax", min_size=1, postprocess=["split_disconnected"])(outputs)
assert sorted(int(m.sum()) for m in found.masks) == [12, 18], found.masks.sum((1, 2))
assert len(build_grouper("argmax", min_size=1, postprocess=[{"name": "drop_low_score", "min_score": 0.5}])(outputs)) == 2
assert len(build_grouper("argmax", min_size=1, postprocess=[{"name": "drop_low_score", "min_score": 1.5}])(outputs)) == 0

# The loss: 0 for a perfect prediction, 1 - 2/3 for a uniform one over two classes and one pixel of each.
target = torch.tensor([[[0, 1]]])
perfect = torch.tensor([[[[50.0, -50.0]], [[-50.0, 50.0]]]])
assert extending.SemanticDice()(perfect, target)["loss"].item() < 1e-6
assert abs(extending.SemanticDice()(torch.zeros(1, 2, 1, 2), target)["loss"].item() - 0.5) < 1e-6

# The data set, from npz files of synthetic shapes, and all four in one run.
root = Path(sys.argv[1])
for split, n in (("train", 8), ("val", 2)):
    samples = [SyntheticShapes(split=split, num_images=n, size=64)[i] for i in range(n)]
    np.savez(root / f"{split}.npz", images=np.stack([s["image"] for s in samples]),
             instances=np.stack([s["instances"] for s in samples]))
assert len(extending.NpzDataset(str(root), "val")) == 2
(root / "run.yaml").write_text(f"""
data: {{dataset: {{name: npz, root: {root}}}, crop_size: 64}}
model: {{name: deeplab, backbone: resnet18, width: 0.125, output_stride: 8, embedding_dim: 4}}
loss:
  embedding: {{name: discriminative}}
  semantic: {{name: cross_entropy}}
  dice: {{name: dice, weight: 0.5}}
train: {{steps: 2, batch_size: 2, log_every: 1}}
grouping:
  argmax: {{min_size: 1, postprocess: [split_disconnected, {{name: drop_low_score, min_score: 0.1}}]}}
  meanshift: {{min_size: 1, postprocess: [{{name: drop_low_score, min_score: 0.1}}]}}
""")
assert main(["train", str(root / "run.yaml"), "--out", str(root / "run")]) == 0
metrics = json.loads((root / "run" / "metrics.json").read_text())
assert {"argmax", "meanshift"} <= set(metrics["val"]), metrics
log = [json.loads(line) for line in (root / "run" / "log.jsonl").read_text().splitlines()]
assert all("dice" in record for record in log)
print("extending: ok")
'''


def readme_examples() -> list[str]:
    section = README.read_text().split("## Extending", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)


def test_readme_has_the_four_examples():
    names = [re.search(r'register\("(\w+)"\)', block).group(1) for block in readme_examples()]
    assert names == ["drop_low_score", "argmax", "dice", "npz"]


def test_readme_examples_run_end_to_end(tmp_path):
    (tmp_path / "extending.py").write_text("\n\n".join(readme_examples()))
    (tmp_path / "checks.py").write_text(CHECKS)
    data = tmp_path / "data"
    data.mkdir()
    result = subprocess.run([sys.executable, str(tmp_path / "checks.py"), str(data)], check=False, cwd=tmp_path,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert "extending: ok" in result.stdout
