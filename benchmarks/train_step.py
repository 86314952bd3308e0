"""Time one training step (forward + loss + backward + Adam step) of SIBNet against the baseline.

Configuration (issue "SIBNet losses ...", Performance): MONAI DenseNet121 (1 input channel, K=5
outputs) in train mode, a batch of 8 random images at 128x128 (``--size 64`` for the small
setting) with random multi-label targets, weighted BCE (pos_weight 3), Adam (lr 1e-3, betas
(0.93, 0.999)). Every configuration runs in a fresh subprocess (same seed, same batch), so its peak
resident memory is its own; each prints the median step time over ``--repeats`` steps after 2
warm-up steps (the first vectorised backward has a large one-time cost), the resident memory before
the first step, and the peak resident memory at the end (``getrusage(RUSAGE_SELF).ru_maxrss``).

Configurations:

- ``baseline``: ``SIBNetLoss(model, saliency=None)`` (weighted BCE only).
- ``gradcam@E``, ``deep_taylor@E``, ``lrp_epsilon@E``: ``SIBNetLoss(model, saliency=..., embed_size=E)``
  with its defaults otherwise (lambdas per method, L_CD on the maps, L_SC with radius 4 and Otsu);
  E = ``full`` (maps embedded at the input size), 64 or 32 pixels. A suffix ``:recompute=MODE`` or
  ``:contrast=clrp|sglrp`` sets that saliency option (e.g. ``deep_taylor@32:contrast=clrp``).
- ``floor``: the baseline step plus a plain forward and backward of B*K images at the input size
  through the same network (BatchNorm in eval semantics, input gradient required, as the maps
  need): the cost any step must pay that embeds B*K full-resolution maps.
- ``reference``: the published approach re-implemented here: Captum ``LayerGradCam`` per class in a
  Python loop without ``create_graph`` (train mode, so BatchNorm statistics move K extra times),
  bilinear upsampling, normalisation, per-map Otsu threshold and ``skimage.measure.label``
  (8-connectivity) on the detached maps, one map at a time; their cluster-masked spatial coherence:
  for each cluster except the last one, the map zeroed outside the cluster, and the sum over every
  pixel p and every q in the 9x9 window around p (zero padding) of (m_p - m_q)^2, so pairs across
  the cluster's boundary count (computed as 81 m^2 - 2 m (box * m) + box * m^2 with a 9x9 box
  convolution, all clusters of the batch in one call); L_CD from the embeddings of the maps at full
  resolution; lambdas (1.4, 1.0) applied.

Ratios are to the baseline of the same run (and the gradcam@full step to the floor). With
``--paired`` each configuration is also timed against the baseline in one process, in turn
(baseline, configuration, baseline per repeat): the median of those per-repeat ratios is far less
sensitive to the machine's slow and fast phases than the ratio of two medians taken minutes apart.
Comparing two versions of the code: run ``--configs baseline CONFIG --paired`` on each, alternately,
and compare the fastest steps.

Peak RSS under glibc's defaults includes what the heap keeps after large frees (glibc raises its
mmap threshold after freeing a large block, so later blocks of that size come from the heap, which
fragments and is rarely returned): it grows over the first steps. ``--live-memory`` adds, for each
configuration, a 3-step run whose allocator hands every freed block of 128 KiB or more back at once,
so its peak RSS is the peak of the tensors alive at one time (its step times are not comparable).

    OMP_NUM_THREADS=2 python benchmarks/train_step.py [--size 128] [--repeats 5] [--paired] [--live-memory]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import current_rss_mb, load_average, machine_header, median, peak_rss_mb, time_calls  # noqa: E402

from sibnet.losses import SIBNetLoss, class_distinctiveness, normalise_maps, weighted_bce  # noqa: E402
from sibnet.models import build_classifier  # noqa: E402
from sibnet.models.embedding import penultimate  # noqa: E402
from sibnet.saliency import eval_norm  # noqa: E402

METHODS = ("gradcam", "deep_taylor", "lrp_epsilon")
LAYER = "class_layers.relu"  # DenseNet121's last feature map, the input of its global pooling
REFERENCE_LAMBDAS = (1.4, 1.0)


def default_configs(size: int) -> list[str]:
    sizes = ["full"] + [str(e) for e in (64, 32) if e < size]
    return ["baseline", "floor"] + [f"{m}@{e}" for m in METHODS for e in sizes] + ["reference"]


# ---------------------------------------------------------------------------------------------
# the steps


def sibnet_step(model, opt, x, y, pos_weight, method, embed_size, saliency_options=None):
    loss_fn = SIBNetLoss(model, saliency=method, class_weight=pos_weight, embed_size=embed_size,
                         saliency_options=saliency_options)

    def step():
        opt.zero_grad(set_to_none=True)
        total, _ = loss_fn(x, y)
        total.backward()
        opt.step()

    return step


def floor_step(model, opt, x, y, pos_weight, k):
    stack = torch.rand(x.shape[0] * k, *x.shape[1:], generator=torch.Generator().manual_seed(1)).to(x.device)

    def step():
        opt.zero_grad(set_to_none=True)
        wce = weighted_bce(model(x), y, pos_weight)
        maps = stack.clone().requires_grad_(True)
        with eval_norm(model):
            z = penultimate(model, maps)
        (wce + z.mean()).backward()
        opt.step()

    return step


def otsu_labels(maps):
    """Per-map Otsu threshold and 8-connected labels, one map at a time (numpy, scikit-image)."""
    from skimage.filters import threshold_otsu
    from skimage.measure import label

    out = []
    for image in maps.detach().cpu().numpy():
        for m in image:
            try:
                threshold = threshold_otsu(m)
            except ValueError:  # (nearly) constant map: no 256-bin histogram, no component
                out.append((None, 0))
                continue
            out.append(label(m > threshold, connectivity=2, return_num=True))
    return out


def reference_coherence(maps, labelled, radius=4):
    """Their cluster-masked sum: every pixel of the masked map against its 9x9 window, boundaries included."""
    b, k, h, w = maps.shape
    flat = maps.reshape(b * k, h, w)
    masked = []
    for i, (lab, n) in enumerate(labelled):
        lab = torch.from_numpy(lab).to(flat.device)
        for c in range(1, n):  # their script skips the last component
            masked.append(flat[i] * (lab == c))
    if not masked:
        return maps.sum() * 0.0
    m = torch.stack(masked).unsqueeze(1)
    box = m.new_ones(1, 1, 2 * radius + 1, 2 * radius + 1)
    s1 = F.conv2d(m, box, padding=radius)
    s2 = F.conv2d(m * m, box, padding=radius)
    per_pixel = box.numel() * m * m - 2 * m * s1 + s2
    return per_pixel.sum() / (b * k)


def reference_step(model, opt, x, y, pos_weight, k):
    from captum.attr import LayerAttribution, LayerGradCam

    for m in model.modules():  # Captum's layer hooks need out-of-place ReLUs on DenseNet
        if hasattr(m, "inplace"):
            m.inplace = False
    gc = LayerGradCam(model, model.get_submodule(LAYER))
    lambda_cd, lambda_sc = REFERENCE_LAMBDAS

    def embed(stack):
        with eval_norm(model):
            return penultimate(model, stack.unsqueeze(1))

    def step():
        opt.zero_grad(set_to_none=True)
        wce = weighted_bce(model(x), y, pos_weight)
        maps = torch.cat([LayerAttribution.interpolate(gc.attribute(x, target=c, relu_attributions=True),
                                                       x.shape[2:], "bilinear") for c in range(k)], dim=1)
        maps = normalise_maps(maps)
        sc = reference_coherence(maps, otsu_labels(maps))
        cd = class_distinctiveness(maps, embed)
        (wce + lambda_cd * cd + lambda_sc * sc).backward()
        opt.step()

    return step


def build_step(config: str, args):
    """A fresh model (seed 0), batch and optimizer, and ``config``'s step on them."""
    torch.manual_seed(0)
    k = args.classes
    device = torch.device(args.device)
    model = build_classifier("densenet121", in_channels=1, num_classes=k).train().to(device)
    x = torch.randn(args.batch, 1, args.size, args.size).to(device)
    y = (torch.rand(args.batch, k) < 0.3).float().to(device)
    pos_weight = torch.full((k,), 3.0, device=device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.93, 0.999))
    if config == "baseline":
        step = sibnet_step(model, opt, x, y, pos_weight, None, None)
    elif config == "floor":
        step = floor_step(model, opt, x, y, pos_weight, k)
    elif config == "reference":
        step = reference_step(model, opt, x, y, pos_weight, k)
    else:
        name, _, option = config.partition(":")
        method, _, embed = name.partition("@")
        key, _, value = option.partition("=")
        if method not in METHODS or not (embed == "full" or embed.isdigit()) or \
                (option and key not in ("recompute", "contrast")):
            raise SystemExit(f"unknown configuration {config!r}; expected baseline, floor, reference or "
                             f"METHOD@full|PIXELS[:recompute=pointwise|all|none|:contrast=none|clrp|sglrp] "
                             f"with METHOD in {', '.join(METHODS)}")
        options = {key: value} if option and method != "gradcam" else None
        step = sibnet_step(model, opt, x, y, pos_weight, method, None if embed == "full" else int(embed), options)
    if device.type == "cuda":  # time whole steps: wait for the queued kernels
        run = step

        def step():
            run()
            torch.cuda.synchronize(device)

    return step


def worker(config: str, args) -> dict:
    """Build the model and batch, time ``config``'s step, report times and memory."""
    device = torch.device(args.device)
    step = build_step(config, args)
    if device.type == "cuda":  # memory = CUDA allocations
        before = torch.cuda.memory_allocated(device) / 2**20
        torch.cuda.reset_peak_memory_stats(device)
        times = time_calls(step, warmup=args.warmup, repeats=args.repeats)
        return {"config": config, "median_ms": median(times), "times_ms": times, "rss_before_mb": before,
                "peak_rss_mb": torch.cuda.max_memory_allocated(device) / 2**20}
    rss_before = current_rss_mb()
    times = time_calls(step, warmup=args.warmup, repeats=args.repeats)
    return {"config": config, "median_ms": median(times), "times_ms": times, "rss_before_mb": rss_before,
            "peak_rss_mb": peak_rss_mb()}


def paired_worker(config: str, args) -> dict:
    """``config``'s step and the reference's (``--reference``, default the baseline), on two identical
    models in one process, timed in turn.

    Each repeat times baseline, ``config``, baseline; its ratio is ``config`` over the mean of the
    two baseline steps around it, so a slow phase of the machine (other tenants, frequency changes)
    enters numerator and denominator alike. Times only (memory: the separate runs).
    """
    base, step = build_step(args.reference, args), build_step(config, args)
    for _ in range(args.warmup):
        base()
        step()
    ratios, base_ms, step_ms = [], [], []
    for _ in range(args.repeats):
        b1 = time_calls(base, warmup=0, repeats=1)[0]
        t = time_calls(step, warmup=0, repeats=1)[0]
        b2 = time_calls(base, warmup=0, repeats=1)[0]
        ratios.append(t / ((b1 + b2) / 2))
        base_ms += [b1, b2]
        step_ms.append(t)
    return {"config": config, "ratios": ratios, "median_ratio": median(ratios), "baseline_median_ms": median(base_ms),
            "median_ms": median(step_ms), "fastest_ms": min(step_ms), "baseline_fastest_ms": min(base_ms)}


# ---------------------------------------------------------------------------------------------
# the driver


# glibc with a fixed mmap threshold: every block of at least 128 KiB is its own mapping, returned to
# the system when freed (a fixed threshold also turns off glibc's raising of it after large frees),
# so the process's peak RSS follows the peak of live tensors instead of what the heap retained
LIVE_MEMORY_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072"}
LIVE_MEMORY_UNSET = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")


def print_paired(configs: list[str], args) -> None:
    ref = args.reference
    print(f"# paired: each configuration and {ref} in one process, timed in turn; ratio per repeat = "
          f"step / mean of the {ref} steps before and after it")
    print(f"{'configuration':<34} {'median ratio':>12} {'ratios (min-max)':>17} {'median ms':>10} {'reference ms':>12} "
          f"{'fastest ms':>11} {'reference fastest':>17}")
    for config in configs:
        r = run_config(config, args, paired=True)
        if "failed" in r:
            print(f"{config:<34} FAILED ({r['failed']})", flush=True)
            continue
        print(f"{config:<34} {r['median_ratio']:11.2f}x {min(r['ratios']):8.2f}-{max(r['ratios']):.2f}x "
              f"{r['median_ms']:10.1f} {r['baseline_median_ms']:12.1f} {r['fastest_ms']:11.1f} "
              f"{r['baseline_fastest_ms']:17.1f}", flush=True)


def run_config(config: str, args, paired: bool = False, live_memory: bool = False) -> dict:
    repeats, warmup = (2, 1) if live_memory else (args.repeats, args.warmup)
    cmd = [sys.executable, __file__, "--worker", config, "--size", str(args.size), "--batch", str(args.batch),
           "--classes", str(args.classes), "--repeats", str(repeats), "--warmup", str(warmup),
           "--device", args.device, "--reference", args.reference] + (["--paired"] if paired else [])
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    env = os.environ.copy()
    if live_memory:
        env.update(LIVE_MEMORY_ENV)
        for name in LIVE_MEMORY_UNSET:
            env.pop(name, None)
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        how = f"killed by signal {-done.returncode}" if done.returncode < 0 else f"exit status {done.returncode}"
        last = done.stderr.strip().splitlines()[-1:] or ["no error output (out of memory?)"]
        return {"config": config, "failed": f"{how}: {last[0]}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--classes", type=int, default=5)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's own)")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]; on CUDA each step ends with a "
                   "synchronize and memory is the peak of CUDA allocations (torch.cuda.max_memory_allocated)")
    p.add_argument("--configs", nargs="+", default=None,
                   help="subset to run (default: baseline floor METHOD@full|64|32 ... reference)")
    p.add_argument("--paired", action="store_true",
                   help="also time each configuration against the baseline in one process, in turn "
                        "(baseline, configuration, baseline per repeat), and print the median of the ratios")
    p.add_argument("--live-memory", action="store_true",
                   help="CPU: also run each configuration for 3 steps with glibc returning every freed block "
                        "of 128 KiB or more to the system, and print that peak RSS (the peak of live tensors, "
                        "without what glibc's heap retains between steps; the step times of that run are "
                        "not comparable and are not shown)")
    p.add_argument("--reference", default="baseline",
                   help="--paired: the configuration each one is timed against (default baseline), e.g. "
                        "deep_taylor@32 for the cost of contrast=clrp on top of it")
    p.add_argument("--paired-only", action="store_true", help="skip the separate runs (and their memory figures)")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker:
        print(json.dumps((paired_worker if args.paired else worker)(args.worker, args)))
        return
    if args.paired_only:
        args.paired = True
        print(machine_header("training step: forward + loss + backward + Adam step"))
        print(f"# MONAI DenseNet121, 1 channel, K={args.classes}, batch {args.batch}, {args.size}x{args.size}; "
              f"paired against {args.reference}")
        t0 = time.perf_counter()
        print_paired([c for c in (args.configs or []) if c != args.reference], args)
        print(f"# total {time.perf_counter() - t0:.0f} s; load average (1, 5, 15 min) at end: {load_average()}")
        return

    configs = args.configs or default_configs(args.size)
    if "baseline" not in configs:
        configs = ["baseline"] + configs
    print(machine_header("training step: forward + loss + backward + Adam step"))
    if args.device.startswith("cuda"):
        print(f"# device: {torch.cuda.get_device_name(torch.device(args.device))}; memory columns are peak CUDA "
              f"allocations (MiB), not RSS; cudnn.allow_tf32={torch.backends.cudnn.allow_tf32}")
    print(f"# MONAI DenseNet121, 1 channel, K={args.classes}, batch {args.batch}, {args.size}x{args.size}, "
          f"train mode; median of {args.repeats} steps after {args.warmup} warm-up steps; one subprocess each")
    t0 = time.perf_counter()
    results = {}
    for config in configs:
        r = run_config(config, args)
        if "failed" in r:
            print(f"#   {config:<18} FAILED ({r['failed']}; load {load_average()})", flush=True)
            if config == "baseline":
                raise SystemExit("the baseline failed; no ratios")
            continue
        results[config] = r
        print(f"#   {config:<18} {r['median_ms']:9.1f} ms  (steps: {', '.join(f'{t:.0f}' for t in r['times_ms'])}; "
              f"load {load_average()})", flush=True)
    base = results["baseline"]
    base_growth = base["peak_rss_mb"] - base["rss_before_mb"]
    print(f"{'configuration':<18} {'median ms':>10} {'x baseline':>11} {'peak RSS MiB':>13} {'x baseline':>11} "
          f"{'step growth MiB':>16} {'x baseline':>11}")
    for config, r in results.items():
        growth = r["peak_rss_mb"] - r["rss_before_mb"]
        print(f"{config:<18} {r['median_ms']:10.1f} {r['median_ms'] / base['median_ms']:10.2f}x "
              f"{r['peak_rss_mb']:13.0f} {r['peak_rss_mb'] / base['peak_rss_mb']:10.2f}x "
              f"{growth:16.0f} {growth / base_growth:10.2f}x")
    if "floor" in results and "gradcam@full" in results:
        print(f"gradcam@full / floor: {results['gradcam@full']['median_ms'] / results['floor']['median_ms']:.2f}x")
    if "reference" in results:
        for config in [c for c in results if c.startswith("gradcam@")]:
            print(f"reference / {config}: {results['reference']['median_ms'] / results[config]['median_ms']:.2f}x")
    print("# step growth = peak RSS minus the RSS after building model, batch and optimizer (before step 1)")
    if args.live_memory and not args.device.startswith("cuda"):
        print("# live memory: peak RSS of 3 steps with MALLOC_MMAP_THRESHOLD_=131072 (freed blocks of 128 KiB "
              "or more go back to the system at once)")
        print(f"{'configuration':<34} {'live peak MiB':>14} {'x baseline':>11}")
        live = {}
        for config in results:
            r = run_config(config, args, live_memory=True)
            if "failed" in r:
                print(f"{config:<34} FAILED ({r['failed']})", flush=True)
                continue
            live[config] = r["peak_rss_mb"]
            if "baseline" in live:
                print(f"{config:<34} {live[config]:14.0f} {live[config] / live['baseline']:10.2f}x", flush=True)
    if args.paired:
        print_paired([c for c in results if c != args.reference], args)
    print(f"# total {time.perf_counter() - t0:.0f} s; load average (1, 5, 15 min) at end: {load_average()}")


if __name__ == "__main__":
    main()
