#!/usr/bin/env python
"""Training img/s through samkit.train.train_epoch (the one training loop: on-device batches,
SAM with BN freeze) for MLP-1024 and PreActResNet18 widths 8/16, SGD and SAM, one timed epoch
after a warm-up epoch; then the time to restart a run from its checkpoint. Prints; CPU-sized.
Run: SAMKIT_DATA=data python benchmarks/trainer_throughput.py"""
import os, time, tempfile
import torch
from samkit import train
from samkit.train import TrainConfig
os.environ.setdefault("SAMKIT_DATA", "data")
print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
for model, width, n in [("mlp", 1024, 8192), ("preact_resnet18", 8, 1024), ("preact_resnet18", 16, 512)]:
    line = []
    for opt in ("sgd", "sam"):
        cfg = TrainConfig(model=model, width=width, optimizer=opt, n_train=n, n_test=100, epochs=3,
                          batch_size=128, device="cpu")
        data, m, o, sched, loss_fn = train.build(cfg)
        train.train_epoch(cfg, m, o, loss_fn, data, 0)  # warm-up epoch
        t = time.perf_counter(); train.train_epoch(cfg, m, o, loss_fn, data, 1); dt = time.perf_counter() - t
        line.append(f"{opt} {n / dt:7.0f} img/s")
    print(f"{model}-{width}: " + ", ".join(line), flush=True)
# resume: a run interrupted after 3 of 4 epochs, restarted from its checkpoint
cfg = TrainConfig(model="preact_resnet18", width=16, optimizer="sam", n_train=256, n_test=100, epochs=4, device="cpu")
ck = os.path.join(tempfile.mkdtemp(), "r.ckpt")
train.run(TrainConfig(**{**cfg.__dict__, "epochs": 4}), checkpoint=ck)  # writes the epoch-4 checkpoint
t = time.perf_counter(); train.run(cfg, checkpoint=ck); dt = time.perf_counter() - t
print(f"resume of a finished PreActResNet18-16 SAM checkpoint (load + rebuild + final metrics): {dt:.2f} s")
