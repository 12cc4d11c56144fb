"""gpu-check.json → gpu-check.md: the same figures as short tables a person reads first."""

from __future__ import annotations

from typing import Dict, List


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def _capacity_table(variants: Dict) -> List[str]:
    head = ("| variant | N | lag p50/p95 s | WER | GPU util mean/peak % | GPU MB/conn | batch mean | server CPU % "
            "| checker CPU % | refused | holds |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for label, variant in variants.items():
        if "error" in variant:
            lines.append(f"| {label} | - | failed: {variant['error'][:120]} | | | | | | | | |")
            continue
        for r in variant["levels"]:
            lines.append(
                f"| {label} | {r['n']} | {_fmt(r['commit_lag_p50_s'])}/{_fmt(r['commit_lag_p95_s'])} | {_fmt(r['wer_mean'])} "
                f"| {_fmt(r['gpu_util_mean_pct'])}/{_fmt(r['gpu_util_peak_pct'])} | {_fmt(r['gpu_mb_per_connection'])} "
                f"| {_fmt(r['batch_size_mean'])} | {_fmt(r['server_cpu_pct'])} | {_fmt(r['checker_cpu_pct'])} | {r['refused']} "
                f"| {'yes' if r['holds'] else 'no: ' + '; '.join(r['fails_because'])} |")
        lines.append(f"| {label}: largest N holding | {_fmt(variant.get('largest_n_holding'))} | {variant.get('stopped') or ''} | | | | | | | | |")
    return lines


def markdown(report: Dict) -> str:
    steps = report.get("steps", {})
    lines = [f"# GPU check on `{report.get('device')}`", "",
             f"Elapsed {report.get('elapsed_s')} s. Steps: " + ", ".join(
                 f"{name} **{r['status']}** ({r.get('seconds', 0)} s)" for name, r in steps.items()), ""]
    env = steps.get("environment", {})
    if env.get("status") == "ok":
        lines += ["## Environment", "",
                  f"Python {env['python']}, torch {env['torch']} (CUDA {env['torch_cuda']}), CUDA available: {env['cuda_available']}"
                  + (f", {env.get('gpu_name')}" if env.get("gpu_name") else "") + f"; NVML GPUs: {env['nvml_gpus']}; "
                  f"CTranslate2 CUDA devices: {env['ctranslate2_cuda_devices']}.", "",
                  "Packages: " + ", ".join(f"{k} {v or 'missing'}" for k, v in env["packages"].items()), ""]
    p = steps.get("placement", {})
    if p.get("status") == "ok":
        lines += ["## Placement", "",
                  f"{p['connections']} connections, every config on `{p['expected_device']}`: {p['all_on_expected_device']} "
                  f"({p['transcripts_nonempty']} with text). NVML used memory idle {_fmt(p['nvml_idle_used_gb'])} GB → "
                  f"{_fmt(p['nvml_load_used_peak_gb'])} GB under load; utilisation idle {_fmt(p['nvml_idle_util_pct'])} % → "
                  f"peak {_fmt(p['nvml_load_util_peak_pct'])} %; server CPU {p['server_cpu_pct']} %.", ""]
    g = steps.get("gpu_pytest", {})
    if g.get("status") == "ok":
        lines += ["## `pytest -m gpu`", "", f"`{g['summary']}`", ""]
    c = steps.get("capacity", {})
    if c.get("status") == "ok":
        lines += ["## Capacity", "", f"Each level: N clients stream the test clips in a loop at real time for "
                  f"{c['level_duration_s']} s (clips {c['clips']}). WER against the references"
                  + ("" if c["wer_available"] else " (not available: jiwer/whisper missing)") + ".", ""]
        lines += _capacity_table(c["variants"])
        for label, why in c.get("skipped", {}).items():
            lines.append(f"\nNot run: {label}: {why}")
        if c.get("batched_vs_single"):
            b = c["batched_vs_single"]
            lines += ["", f"Batched vs `--max-batch-size 1` at N={b['n']} (batched / single): "
                      + ", ".join(f"{k} {_fmt(v[0])} / {_fmt(v[1])}" for k, v in b.items() if k != "n")]
        lines.append("")
    s = steps.get("sortformer", {})
    if s.get("status") == "ok":
        lines += ["## Sortformer (random weights)", "",
                  f"{'Full size' if s['full_size'] else 'Tiny test model'}: {s['parameters_m']} M parameters, load {s['load_s']} s"
                  + (f", {s['model_memory_mb']} MB on the GPU" if "model_memory_mb" in s else "") + ".", "",
                  "| streams | wall s (30 s each) | RTF per stream | streams at RTF 1 | extra MB per stream |", "|---|---|---|---|---|"]
        for r in s["streams"]:
            lines.append(f"| {r['streams']} | {r['wall_s']} | {r['rtf_per_stream']} | {r['streams_per_device_at_rtf_1']} "
                         f"| {_fmt(r.get('peak_extra_memory_mb_per_stream'))} |")
        lines += ["", f"Capacity with diarization: {s['capacity_with_diarization']}", ""]
    d = steps.get("diarization", {})
    if d.get("status") == "ok":
        lines += ["## Diarization as installed (`--diarization`, backend `auto`)", "",
                  f"`auto` resolves to **{d['auto_backend']}** here (ONNX Runtime {d['onnxruntime']}, providers "
                  f"{', '.join(d['onnxruntime_providers'])}).", "", f"Capacity with diarization: {d['capacity_with_diarization']}", ""]
    failed = {name: r for name, r in steps.items() if r["status"] != "ok"}
    if failed:
        lines += ["## Failed or skipped steps", ""]
        lines += [f"- **{name}** ({r['status']}): {r.get('error') or r.get('reason')}" for name, r in failed.items()]
    return "\n".join(lines) + "\n"
