"""Component check: our OTA loss against upstream YOLOv7's ComputeLossOTA on the same real augmented batches (3 of
the blocks data at 96 px, batch 64, and 3 of photo_objects at 320 px, batch 16), the same predictions (a random-init
yolov7-tiny's raw maps, or with WIDE=1 spread-out random logits) and the same anchors.

    PYTHONPATH=. /tmp/upstream-yolov7/bin/python benchmarks/ota_check.py      # the peer's venv (../shared/peer7)
    WIDE=1 PYTHONPATH=. /tmp/upstream-yolov7/bin/python benchmarks/ota_check.py

Prints per batch the relative differences of the total and of each term, the largest relative difference of the
gradients w.r.t. the prediction maps, and how many targets have an exact cost tie at their k-th place (where
upstream's torch.topk leaves the pick unspecified; ours takes the earlier candidate). Upstream code is imported
from the running interpreter only; it is never a dependency of this project.
"""
import logging, os, sys
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
logging.disable(logging.INFO)
from engine.data.config import load_data_config
from engine.data.loader import create_dataloader
from engine.train.loss import OtaLoss
from engine.train.trainer import load_hyp
from models.yolo import DetectionModel
from yolov7.models.yolo import Model
from yolov7.utils.loss import ComputeLossOTA

peer = str(REPO.parent / "shared" / "peer7")
import engine.train.loss as L
_match, seen = L.ota_match, {}
def recording_match(iou, cost, valid):
    seen["args"] = (iou, cost, valid)
    return _match(iou, cost, valid)
L.ota_match = recording_match

def boundary_ties():
    """Targets whose k-th and (k+1)-th lowest costs are exactly equal: which of the tied candidates is taken is
    up to torch.topk's unspecified tie order upstream (ours: the earlier one)."""
    iou, cost, valid = seen["args"]
    cost = cost.masked_fill(~valid, float("inf")); iou = iou.masked_fill(~valid, 0)
    k = iou.topk(min(10, iou.shape[2]), dim=2).values.sum(2).int().clamp(min=1)
    ordered = cost.sort(dim=2).values
    kth = ordered.gather(2, (k - 1).clamp(max=ordered.shape[2] - 1)[..., None].long())[..., 0]
    nxt = ordered.gather(2, k.clamp(max=ordered.shape[2] - 1)[..., None].long())[..., 0]
    return int(((kth == nxt) & torch.isfinite(kth) & (k < ordered.shape[2])).sum())
results = []
for data_yaml, imgsz, batch in (("data/blocks.yaml", 96, 64), ("data/photo_objects.yaml", 320, 16)):
    data = load_data_config(REPO / data_yaml)
    nc = data["nc"]
    hyp_ours = load_hyp(REPO / "data" / "hyps" / "hyp.scratch.tiny.yaml")
    loader, _ = create_dataloader(data["train"], imgsz, batch, 32, hyp=hyp_ours, augment=True, workers=0,
                                  shuffle=True, seed=0, num_classes=nc)
    torch.manual_seed(0)
    ours = DetectionModel("yolov7-tiny.yaml", num_classes=nc).train()
    hyp = yaml.safe_load(open(f"{peer}/hyp/hyp.scratch.tiny.yaml"))
    nl = 3
    hyp["box"] *= 3 / nl; hyp["cls"] *= nc / 80 * 3 / nl; hyp["obj"] *= (imgsz / 640) ** 2 * 3 / nl
    up = Model(f"{peer}/cfg/yolov7-tiny.yaml", nc=nc)
    det = up.model[-1]
    det.anchors = ours.head.anchors.detach().clone()
    det.stride = ours.head.stride.detach().clone()
    up.hyp, up.gr, up.nc = hyp, 1.0, nc
    up_loss = ComputeLossOTA(up)
    our_loss = OtaLoss(ours.head, hyp_ours, image_size=imgsz)
    for b, (images, targets, paths, _) in enumerate(loader):
        if b == 3:
            break
        images = images.float() / 255
        with torch.no_grad():
            preds = [p.detach() for p in ours(images)]
        if os.environ.get("WIDE"):  # spread-out logits: confident, varied boxes and scores
            g = torch.Generator().manual_seed(b)
            preds = [torch.randn(p.shape, generator=g) * 2.5 for p in preds]
        p1 = [p.clone().requires_grad_() for p in preds]
        p2 = [p.clone().requires_grad_() for p in preds]
        l1, i1 = our_loss(p1, targets)
        l1.backward()
        l2, i2 = up_loss(p2, targets, images)
        l2.backward()
        rel = lambda a, b: float((a - b).abs().max() / b.abs().max().clamp(min=1e-30))
        terms = [abs(float(i1[k]) - float(i2[k])) / abs(float(i2[k])) for k in range(3)]
        total = abs(l1.item() - l2.item()) / abs(l2.item())
        grads = max(rel(a.grad, b.grad) for a, b in zip(p1, p2))
        print(f"{data_yaml} {imgsz}px batch {len(images)} ({len(targets)} targets) #{b}: loss ours {l1.item():.6f} "
              f"upstream {l2.item():.6f}; rel. diff total {total:.2e}, box {terms[0]:.2e}, obj {terms[1]:.2e}, "
              f"cls {terms[2]:.2e}; gradients max rel. {grads:.2e}", flush=True)
        ties = boundary_ties()
        print(f"    targets with an exact cost tie at their k-th place: {ties}")
        results.append((total, max(terms), grads))
agree = [r for r in results if r[0] <= 1e-5 and r[1] <= 1e-5 and r[2] <= 1e-4]
print(f"{len(agree)} of {len(results)} batches within 1e-5 (loss and terms) and 1e-4 (gradients); worst of those: "
      "total %.2e, terms %.2e, gradients %.2e" % tuple(max(r[k] for r in agree) for k in range(3)))
